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

// Component is what New builds and its builder closes once Run returned.
type Component interface {
	Run(ctx context.Context) error
	Close() error
}

// RunAndClose is Run for a component the test built: at cleanup it is
// stopped, then closed (an error from Close fails the test too).
func RunAndClose(t testing.TB, what string, c Component) (stop func()) {
	t.Helper()
	t.Cleanup(func() { // registered first, so it runs after Run's stop
		if err := c.Close(); err != nil {
			t.Errorf("%s: close: %v", what, err)
		}
	})
	return Run(t, what, c.Run)
}
