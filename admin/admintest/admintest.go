// Package admintest starts a real admin role for tests: the head of its
// config, the demo users of configs/dev.toml, and a daemon that runs the
// roles until the test's cleanup and answers once its NSQ channels exist.
package admintest

import (
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/daemon"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// Prelude is the head of a config for a daemon that runs no canal on the
// shared MariaDB and the nsqd at nsqdTCP/nsqdHTTP: [mysql] (a [[rule]]
// asks for a canal's keys even so), [canal], [nsq], [http] and [purger]
// with purger lines added under it.
func Prelude(nsqdTCP, nsqdHTTP, purger string) string {
	return fmt.Sprintf(`
[mysql]
addr = %q
server_id = 4242 # [[rule]] asks for a canal, which this daemon does not run

[canal]
position_file = "unused"

[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]

[http]
addr = "127.0.0.1:0"

[purger]
timeout = "1s"
%s
`, stacktest.MySQLAddr(), nsqdTCP, nsqdHTTP, purger)
}

// DemoUsers is configs/dev.toml's [[admin.user]] entries (the demo tokens
// dev-admin-token, dev-operator-token, dev-viewer-token), to end a config.
func DemoUsers(t testing.TB) string {
	t.Helper()
	root, err := stacktest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dev, err := os.ReadFile(filepath.Join(root, "configs", "dev.toml"))
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(dev), "\n[[admin.user]]")
	if i < 0 {
		t.Fatal("configs/dev.toml has no [[admin.user]]")
	}
	return string(dev[i:])
}

// Start writes config to a file (returned: `flashsync purge -config` reads
// it), builds a daemon running roles from it, runs it until cleanup (then
// closes it; stop stops it sooner) and waits until its admin API answers.
func Start(t testing.TB, config string, roles ...string) (d *daemon.Daemon, path string, stop func()) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "flashsync.toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err = daemon.New(daemon.Options{Config: cfg, Roles: roles,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	stop = stacktest.RunAndClose(t, "daemon", d)
	// Served once the channels exist.
	url := "http://" + d.AdminAddr() + "/api/v1/audit"
	stacktest.Eventually(t, 20*time.Second, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return d, path, stop
}
