//go:build tools

// Package tools pins the nsqd and nsqlookupd binaries the local stack builds.
// It is its own module because both need a replace of judwhite/go-svc that the
// main module should not carry.
package tools

import (
	_ "github.com/nsqio/nsq/apps/nsqd"
	_ "github.com/nsqio/nsq/apps/nsqlookupd"
)
