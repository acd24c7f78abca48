package daemon_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashsync/flashsync/cdn"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/daemon"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// A file with only [console] runs the console role (and no nsqd), which
// purges its machines on a signed request.
func TestNodeRunsTheConsole(t *testing.T) {
	var mu sync.Mutex
	var purged []string
	machine := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		purged = append(purged, r.Method+" "+r.RequestURI)
		mu.Unlock()
	})}
	mport := stacktest.FreePort(t)
	mln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", mport))
	if err != nil {
		t.Fatal(err)
	}
	go machine.Serve(mln)
	t.Cleanup(func() { machine.Close() }) // after the daemon's (cleanups run last first)

	consoleAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	const key = "node-test-console-key-0123"
	cfg, err := configs.Parse([]byte(fmt.Sprintf(`
[http]
addr = "127.0.0.1:0"

[console]
addr = %q
key = %q
machines = ["127.0.0.1:%d"]
`, consoleAddr, key, mport)))
	if err != nil {
		t.Fatal(err)
	}
	n, err := daemon.New(daemon.Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "daemon", n)

	body := []byte(`{"job":"j","urls":["/x.html"]}`)
	var status int
	stacktest.Eventually(t, 5*time.Second, func() error {
		req, _ := http.NewRequest(http.MethodPost, "http://"+consoleAddr+cdn.PurgePath, bytes.NewReader(body))
		if err := cdn.SignRequest(req, []byte(key), body, time.Now()); err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		status = resp.StatusCode
		if status != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
		return nil
	})
	mu.Lock()
	got := strings.Join(purged, ",")
	mu.Unlock()
	if got != "PURGE /x.html" {
		t.Errorf("machine got %q", got)
	}
	resp, err := http.Get("http://" + n.HTTPAddr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"console":"ok"`) {
		t.Errorf("healthz %d %s", resp.StatusCode, b)
	}
}
