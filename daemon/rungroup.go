package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/oklog/run"
)

// roleGroup runs roles as actors of a run.Group (github.com/oklog/run, as
// Prometheus's cmd/prometheus does): the first role to return stops all of
// them, and its error is the group's.
//
// Each role runs on a context of its own, which only its interrupt cancels
// (never the caller's context), and the interrupt waits for the role to
// return. run.Group calls the interrupts one at a time in the order the
// actors were added, so the roles stop in that order, each once the one
// before it has.
type roleGroup struct {
	g    run.Group
	base context.Context
	log  *slog.Logger

	mu     sync.Mutex
	failed []error // roles that returned on their own, not interrupted
}

func newRoleGroup(ctx context.Context, log *slog.Logger) *roleGroup {
	return &roleGroup{base: context.WithoutCancel(ctx), log: log}
}

// stopWhenDone makes ctx ending stop the group cleanly: the group's error
// is then nil.
func (r *roleGroup) stopWhenDone(ctx context.Context) {
	interrupted := make(chan struct{})
	r.g.Add(func() error {
		select {
		case <-ctx.Done():
		case <-interrupted:
		}
		return nil
	}, func(error) { close(interrupted) })
}

// add adds a role. fn must run until its context ends. An error it returns
// before that, or returning at all, stops the group with that error after
// name; what it returns once interrupted is only logged.
func (r *roleGroup) add(name string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(r.base)
	done := make(chan struct{})
	r.g.Add(func() error {
		defer close(done)
		err := fn(ctx)
		if ctx.Err() != nil {
			if err != nil && !errors.Is(err, context.Canceled) {
				r.log.Error("role stopped with an error", "role", name, "err", err)
			}
			return nil
		}
		if err == nil {
			err = errors.New("stopped on its own")
		}
		err = fmt.Errorf("%s: %w", name, err)
		r.mu.Lock()
		r.failed = append(r.failed, err)
		r.mu.Unlock()
		return err
	}, func(error) {
		cancel()
		<-done
	})
}

// run runs every role until one returns or the context of stopWhenDone
// ends, then stops them all in order. It returns the error of the role
// that stopped the group; a role that failed on its own while the others
// were being stopped is logged.
func (r *roleGroup) run() error {
	err := r.g.Run()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.failed {
		if f != err {
			r.log.Error("role failed while the daemon was stopping", "err", f)
		}
	}
	return err
}
