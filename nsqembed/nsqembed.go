// Package nsqembed runs nsqd inside the flashsync process, for a one-binary
// development setup; production points flashsync at a real nsqd cluster.
package nsqembed

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/nsqio/nsq/nsqd"
)

// Options configure the embedded nsqd.
type Options struct {
	TCPAddress  string
	HTTPAddress string
	DataPath    string
	Logger      *slog.Logger
}

// Defaults of Options (configs' defaults are these): loopback ports next to
// the local stack's nsqd, data under the checkout's .stack/.
const (
	DefaultTCPAddress  = "127.0.0.1:14170"
	DefaultHTTPAddress = "127.0.0.1:14171"
	DefaultDataPath    = ".stack/flashsync/nsqd"
)

// Server is an in-process nsqd. Its listeners are bound by New, so its
// addresses are known before Run.
type Server struct {
	n         *nsqd.NSQD
	log       *slog.Logger
	closeOnce sync.Once
}

// New creates the data directory and binds the listeners.
func New(opts Options) (*Server, error) {
	opts.TCPAddress = cmp.Or(opts.TCPAddress, DefaultTCPAddress)
	opts.HTTPAddress = cmp.Or(opts.HTTPAddress, DefaultHTTPAddress)
	opts.DataPath = cmp.Or(opts.DataPath, DefaultDataPath)
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	if err := os.MkdirAll(opts.DataPath, 0o755); err != nil {
		return nil, fmt.Errorf("embedded nsqd: %w", err)
	}
	log := opts.Logger.With("component", "nsqd")
	o := nsqd.NewOptions()
	o.TCPAddress = opts.TCPAddress
	o.HTTPAddress = opts.HTTPAddress
	o.HTTPSAddress = ""
	o.BroadcastAddress = "127.0.0.1"
	o.DataPath = opts.DataPath
	o.LogLevel = nsqd.LOG_WARN
	o.Logger = slogWriter{log}
	n, err := nsqd.New(o)
	if err != nil {
		return nil, fmt.Errorf("embedded nsqd: %w", err)
	}
	return &Server{n: n, log: log}, nil
}

// TCPAddr is the address producers and consumers connect to.
func (s *Server) TCPAddr() string { return s.n.RealTCPAddr().String() }

// HTTPAddr is nsqd's HTTP API.
func (s *Server) HTTPAddr() string { return s.n.RealHTTPAddr().String() }

// Run serves until ctx ends, then exits nsqd, which persists its queues.
func (s *Server) Run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.n.Main() }()
	select {
	case <-ctx.Done():
		s.Close()
		return <-done
	case err := <-done:
		s.Close()
		return fmt.Errorf("embedded nsqd: %w", err)
	}
}

// Close stops nsqd; it is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(s.n.Exit)
	return nil
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Output(_ int, s string) error {
	w.l.Warn(strings.TrimSpace(s))
	return nil
}
