package stacktest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/nsq/nsqd"
)

// NSQD is an nsqd running in the test process, owned by one test.
type NSQD struct {
	*inProcess
	n    *nsqd.NSQD
	t    testing.TB
	opts *nsqd.Options
	logs *logBuffer
}

// StartNSQD starts an in-process nsqd on free loopback ports with its data in
// t.TempDir(), and waits until it answers HTTP /ping. Its warnings and
// errors are logged if the test fails. It is stopped at cleanup.
func StartNSQD(t testing.TB) *NSQD {
	t.Helper()
	return startNSQD(t, nil, nil)
}

// StartNSQDWith is [StartNSQD] with configure applied to nsqd's options
// last (MemQueueSize, SyncEvery: what a benchmark of its durability varies).
func StartNSQDWith(t testing.TB, configure func(*nsqd.Options)) *NSQD {
	t.Helper()
	return startNSQD(t, nil, configure)
}

// StartNSQDWithLookupd is [StartNSQD] for an nsqd that registers its topics
// and channels with the nsqlookupd at lookupdTCP (see [NSQLookupd.TCPAddr]),
// broadcasting 127.0.0.1. Unlike an nsqd process, whose connection to
// nsqlookupd the OS closes when it exits, a stopped in-process nsqd stays
// listed by nsqlookupd (as a crashed host would, until its heartbeats are
// missed for nsqlookupd's inactive-producer timeout).
func StartNSQDWithLookupd(t testing.TB, lookupdTCP string) *NSQD {
	t.Helper()
	return startNSQD(t, []string{lookupdTCP}, nil)
}

func startNSQD(t testing.TB, lookupdTCP []string, configure func(*nsqd.Options)) *NSQD {
	t.Helper()
	logs := new(logBuffer)
	opts := nsqd.NewOptions()
	opts.TCPAddress = "127.0.0.1:0"
	opts.HTTPAddress = "127.0.0.1:0"
	opts.HTTPSAddress = ""
	opts.BroadcastAddress = "127.0.0.1"
	opts.NSQLookupdTCPAddresses = lookupdTCP
	opts.DataPath = t.TempDir()
	opts.Logger = logs
	opts.LogLevel = nsqd.LOG_WARN
	if configure != nil {
		configure(opts)
	}
	n, err := nsqd.New(opts)
	if err != nil {
		t.Fatalf("start nsqd: %v", err)
	}
	return &NSQD{inProcess: runInProcess(t, "nsqd", n.Main, n.Exit, logs, n.RealHTTPAddr().String()), n: n, t: t, opts: opts, logs: logs}
}

// Restart stops nsqd (which writes its queued messages to its data
// directory) and starts it again on the same ports with the same data, the
// way an nsqd host restarts: clients see their connections close and must
// reconnect to the same address. Call it from the test goroutine.
func (s *NSQD) Restart() {
	s.t.Helper()
	s.stop()
	opts := *s.opts
	opts.TCPAddress = s.TCPAddr()
	opts.HTTPAddress = s.HTTPAddr()
	// The listeners were just closed; a port is bound again at once on
	// Linux (Go sets SO_REUSEADDR), but retry briefly in case it is not.
	var n *nsqd.NSQD
	err := poll(5*time.Second, 20*time.Millisecond, func() error {
		var err error
		n, err = nsqd.New(&opts)
		return err
	})
	if err != nil {
		s.t.Fatalf("restart nsqd: %v", err)
	}
	s.inProcess = runInProcess(s.t, "nsqd", n.Main, n.Exit, s.logs, n.RealHTTPAddr().String())
	s.n, s.opts = n, &opts
}

// TCPAddr returns the host:port of nsqd's TCP protocol.
func (s *NSQD) TCPAddr() string { return s.n.RealTCPAddr().String() }

// HTTPAddr returns the host:port of nsqd's HTTP API.
func (s *NSQD) HTTPAddr() string { return s.n.RealHTTPAddr().String() }

// Stop stops nsqd and waits until it has. It may be called more than once
// and from any goroutine.
func (s *NSQD) Stop() { s.stop() }

// PingNSQ checks that the nsqd or nsqlookupd whose HTTP API is at addr
// answers /ping.
func PingNSQ(addr string) error {
	// Without keep-alive: a stopped server's open connections still answer.
	c := http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/ping")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/ping: %s %s", resp.Status, body)
	}
	return nil
}

// inProcess is an nsqd or nsqlookupd running in the test process.
type inProcess struct {
	t        testing.TB
	name     string
	exit     func()
	exitOnce sync.Once
	done     chan struct{} // closed when Main has returned
	err      error         // result of Main, valid once done is closed
}

// runInProcess runs main, the server's Main, in a goroutine until stop
// calls exit; the server is stopped at cleanup, which logs what it logged
// if the test failed. It returns once the server answers /ping on httpAddr.
func runInProcess(t testing.TB, name string, main func() error, exit func(), logs *logBuffer, httpAddr string) *inProcess {
	t.Helper()
	s := &inProcess{t: t, name: name, exit: exit, done: make(chan struct{})}
	go func() {
		s.err = main()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.stop()
		if out := logs.String(); t.Failed() && out != "" {
			t.Logf("%s log:\n%s", name, out)
		}
	})
	if err := poll(10*time.Second, 10*time.Millisecond, func() error { return PingNSQ(httpAddr) }); err != nil {
		t.Fatalf("%s not ready: %v", name, err)
	}
	return s
}

// stop stops the server and waits until it has, failing the test if its
// Main returned an error. It may be called more than once and from any
// goroutine.
func (s *inProcess) stop() {
	s.exitOnce.Do(s.exit)
	<-s.done
	if s.err != nil {
		s.t.Errorf("%s: %v", s.name, s.err)
	}
}

// logBuffer is an nsqd logger that keeps the messages in memory.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Output(_ int, s string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.WriteString(s)
	l.buf.WriteByte('\n')
	return nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// NSQDChannels lists the channels of every topic on the nsqd whose HTTP API
// is at httpAddr, each sorted; a topic without channels has an empty list.
func NSQDChannels(t testing.TB, httpAddr string) map[string][]string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + httpAddr + "/stats?format=json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stats struct {
		Topics []struct {
			Name     string `json:"topic_name"`
			Channels []struct {
				Name string `json:"channel_name"`
			} `json:"channels"`
		} `json:"topics"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, tp := range stats.Topics {
		out[tp.Name] = []string{}
		for _, ch := range tp.Channels {
			out[tp.Name] = append(out[tp.Name], ch.Name)
		}
		slices.Sort(out[tp.Name])
	}
	return out
}
