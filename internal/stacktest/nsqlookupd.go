package stacktest

import (
	"sync"
	"testing"
	"time"

	"github.com/nsqio/nsq/nsqlookupd"
)

// NSQLookupd is an nsqlookupd running in the test process, owned by one test.
type NSQLookupd struct {
	t        testing.TB
	l        *nsqlookupd.NSQLookupd
	done     chan struct{} // closed when Main has returned
	err      error         // result of Main, valid once done is closed
	stopOnce sync.Once
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
	s := &NSQLookupd{t: t, l: l, done: make(chan struct{})}
	go func() {
		s.err = l.Main()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.Stop()
		if out := logs.String(); t.Failed() && out != "" {
			t.Logf("nsqlookupd log:\n%s", out)
		}
	})
	if err := poll(10*time.Second, 10*time.Millisecond, func() error { return PingNSQ(s.HTTPAddr()) }); err != nil {
		t.Fatalf("nsqlookupd not ready: %v", err)
	}
	return s
}

// TCPAddr returns the host:port nsqd register at.
func (s *NSQLookupd) TCPAddr() string { return s.l.RealTCPAddr().String() }

// HTTPAddr returns the host:port of the HTTP API consumers query.
func (s *NSQLookupd) HTTPAddr() string { return s.l.RealHTTPAddr().String() }

// Stop stops nsqlookupd and waits until it has. It may be called more than
// once and from any goroutine.
func (s *NSQLookupd) Stop() {
	s.stopOnce.Do(s.l.Exit)
	<-s.done
	if s.err != nil {
		s.t.Errorf("nsqlookupd: %v", s.err)
	}
}
