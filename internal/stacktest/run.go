package stacktest

import (
	"context"
	"sync"
	"testing"
)

// Run runs run(ctx) in a goroutine until cleanup, which cancels ctx and
// waits for run to return: a component's Run, a server's Serve. An error
// run returns, at any time, fails the test as "what: error". The function
// Run returns does the same as cleanup at once, for a test that stops the
// component itself; it may be called more than once, from any goroutine.
func Run(t testing.TB, what string, run func(ctx context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}
