package stacktest

import (
	"testing"

	"github.com/nsqio/nsq/nsqlookupd"
)

// NSQLookupd is an nsqlookupd running in the test process, owned by one test.
type NSQLookupd struct {
	*inProcess
	l *nsqlookupd.NSQLookupd
}

// StartNSQLookupd starts an in-process nsqlookupd on free loopback ports and
// waits until it answers HTTP /ping. Its warnings and errors are logged if
// the test fails. It is stopped at cleanup. Start nsqd that register with it
// with [StartNSQDWithLookupd].
func StartNSQLookupd(t testing.TB) *NSQLookupd {
	t.Helper()
	logs := new(logBuffer)
	opts := nsqlookupd.NewOptions()
	opts.TCPAddress = "127.0.0.1:0"
	opts.HTTPAddress = "127.0.0.1:0"
	opts.BroadcastAddress = "127.0.0.1"
	opts.Logger = logs
	opts.LogLevel = nsqlookupd.LOG_WARN
	l, err := nsqlookupd.New(opts)
	if err != nil {
		t.Fatalf("start nsqlookupd: %v", err)
	}
	return &NSQLookupd{inProcess: runInProcess(t, "nsqlookupd", l.Main, l.Exit, logs, l.RealHTTPAddr().String()), l: l}
}

// TCPAddr returns the host:port nsqd register at.
func (s *NSQLookupd) TCPAddr() string { return s.l.RealTCPAddr().String() }

// HTTPAddr returns the host:port of the HTTP API consumers query.
func (s *NSQLookupd) HTTPAddr() string { return s.l.RealHTTPAddr().String() }

// Stop stops nsqlookupd and waits until it has. It may be called more than
// once and from any goroutine.
func (s *NSQLookupd) Stop() { s.stop() }
