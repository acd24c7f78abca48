//go:build tools

// Package tools pins the nsqd binary the local stack builds. It is its own
// module because nsqd needs a replace of judwhite/go-svc that the main module
// should not carry.
package tools

import _ "github.com/nsqio/nsq/apps/nsqd"
