package stacktest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// NSQDProcess is a private nsqd run as a child process of the test, from
// the stack's nsqd binary ([NSQDBinary]), on free loopback ports with its
// data in t.TempDir(). Unlike an in-process [NSQD], it can be SIGKILLed
// (Kill): it then loses what it held in memory, as a crashed nsqd does,
// and Start brings it back on the same ports and data directory.
type NSQDProcess struct {
	daemon
	bin, dir  string
	tcp, http int
	args      []string
}

// NSQDBinary returns the path of the stack's nsqd, .stack/bin/nsqd under the
// module root, which `make stack-up` builds (scripts/stack.sh nsq_build),
// after checking that it is there.
func NSQDBinary() (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, ".stack", "bin", "nsqd")
	st, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	if st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s is not executable", bin)
	}
	return bin, nil
}

// StartNSQDProcess starts a private nsqd process ([Require] semantics when
// the stack's binary is missing: the test fails if CI=true) and waits until
// it answers HTTP /ping. It registers with no nsqlookupd and keeps nsqd's
// defaults (--mem-queue-size 10000: a channel's messages are in memory);
// extraArgs are appended to its command line last. It is stopped at
// cleanup, which logs its output if the test failed.
func StartNSQDProcess(t testing.TB, extraArgs ...string) *NSQDProcess {
	t.Helper()
	bin, err := NSQDBinary()
	Require(t, "the stack's nsqd binary", err)
	n := &NSQDProcess{daemon: daemon{t: t}, bin: bin, dir: t.TempDir(), tcp: FreePort(t), http: FreePort(t)}
	data := filepath.Join(n.dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	n.args = append([]string{
		"--tcp-address=" + n.TCPAddr(),
		"--http-address=" + n.HTTPAddr(),
		"--https-address=",
		"--broadcast-address=127.0.0.1",
		"--data-path=" + data,
	}, extraArgs...)
	t.Cleanup(func() {
		n.Stop()
		if t.Failed() {
			t.Logf("nsqd process log:\n%s", readFrom(n.logPath(), 0))
		}
	})
	n.Start()
	return n
}

// TCPAddr returns the host:port of nsqd's TCP protocol.
func (n *NSQDProcess) TCPAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.tcp)) }

// HTTPAddr returns the host:port of nsqd's HTTP API.
func (n *NSQDProcess) HTTPAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.http)) }

// DataPath is nsqd's --data-path: its metadata (topics and channels) and
// the disk queues of what overflowed memory.
func (n *NSQDProcess) DataPath() string { return filepath.Join(n.dir, "data") }

func (n *NSQDProcess) logPath() string { return filepath.Join(n.dir, "nsqd.log") }

// Start starts the stopped nsqd again on the same ports and data directory,
// waiting until it answers /ping. Clients see their connections closed and
// must reconnect to the same address.
func (n *NSQDProcess) Start() {
	n.t.Helper()
	n.mustBeStopped("nsqd " + n.TCPAddr())
	n.start("nsqd", n.bin, n.args, n.logPath(), 10*time.Second, func() error { return PingNSQ(n.HTTPAddr()) })
}

// Stop stops nsqd with SIGTERM, on which it writes the messages it holds
// in memory to its data directory, or SIGKILL if it still runs after 10 s.
// It does nothing if nsqd is stopped.
func (n *NSQDProcess) Stop() { n.stop(10 * time.Second) }

// Kill kills nsqd with SIGKILL, as in a crash: the messages it holds in
// memory (queued, in flight, deferred) are lost. It does nothing if nsqd is
// stopped.
func (n *NSQDProcess) Kill() { n.kill() }

// PID is nsqd's process id, 0 while it is stopped.
func (n *NSQDProcess) PID() int {
	if n.p == nil {
		return 0
	}
	return n.p.cmd.Process.Pid
}

// NSQDChannelStats is what an nsqd holds for one channel.
type NSQDChannelStats struct {
	// Depth is the messages waiting to be sent (memory and disk queue).
	Depth int `json:"depth"`
	// InFlight are sent to a consumer and not finished yet; Deferred are
	// requeued with a delay that has not passed.
	InFlight int `json:"in_flight_count"`
	Deferred int `json:"deferred_count"`
	Clients  int `json:"-"`
}

// NSQDChannel returns the stats of channel of topic on the nsqd whose HTTP
// API is at httpAddr, and whether nsqd has that channel.
func NSQDChannel(t testing.TB, httpAddr, topic, channel string) (NSQDChannelStats, bool) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + httpAddr + "/stats?format=json&topic=" + url.QueryEscape(topic) + "&channel=" + url.QueryEscape(channel))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("nsqd %s /stats: %s", httpAddr, resp.Status)
	}
	var stats struct {
		Topics []struct {
			Name     string `json:"topic_name"`
			Channels []struct {
				Name string `json:"channel_name"`
				NSQDChannelStats
				Clients []json.RawMessage `json:"clients"`
			} `json:"channels"`
		} `json:"topics"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		t.Fatal(err)
	}
	for _, tp := range stats.Topics {
		for _, ch := range tp.Channels {
			if tp.Name == topic && ch.Name == channel {
				s := ch.NSQDChannelStats
				s.Clients = len(ch.Clients)
				return s, true
			}
		}
	}
	return NSQDChannelStats{}, false
}
