package stacktest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Nginx is a private nginx owned by one test, running in the foreground
// (daemon off) with its prefix, pid file, temp files and logs in its own
// directory.
type Nginx struct {
	daemon
	dir  string
	addr string
}

// StartNginx starts a private nginx ([Require] semantics when the nginx
// binary is missing) whose http block holds httpConf, and waits until addr,
// one of the addresses httpConf listens on (pick ports with [FreePort]),
// answers HTTP. It is stopped at cleanup. To include files of your own, use
// [NewNginx], [Nginx.WriteFile] and [Nginx.Start].
func StartNginx(t testing.TB, httpConf, addr string) *Nginx {
	t.Helper()
	n := NewNginx(t)
	n.Start(httpConf, addr)
	return n
}

// NewNginx prepares a private nginx without starting it, so that files its
// configuration includes can be written to [Nginx.Dir] first ([Require]
// semantics when the nginx binary is missing). Start it with [Nginx.Start].
// It is stopped at cleanup.
func NewNginx(t testing.TB) *Nginx {
	t.Helper()
	_, err := exec.LookPath("nginx")
	Require(t, "nginx (apt nginx-light)", err)
	// nginx's workers run as an unprivileged user when the test runs as
	// root: the prefix must be reachable, which t.TempDir() (mode 0700) is not.
	dir, err := os.MkdirTemp("", "flashsync-nginx-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n := &Nginx{daemon: daemon{t: t}, dir: dir}
	t.Cleanup(func() {
		n.Stop()
		os.RemoveAll(dir)
	})
	return n
}

// Dir returns the instance's prefix and configuration directory: relative
// `include` paths in its configuration are looked up there.
func (n *Nginx) Dir() string { return n.dir }

// WriteFile writes a file (e.g. one the configuration includes) to [Nginx.Dir].
func (n *Nginx) WriteFile(name, content string) {
	n.t.Helper()
	if err := os.WriteFile(filepath.Join(n.dir, name), []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// Start writes nginx.conf with httpConf inside its http block and starts
// nginx, waiting until addr answers HTTP.
func (n *Nginx) Start(httpConf, addr string) {
	n.t.Helper()
	n.mustBeStopped("nginx " + n.addr)
	n.addr = addr
	conf := fmt.Sprintf(`worker_processes 1;
events {
    worker_connections 1024;
}
http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;

%[2]s
}
`, n.dir, httpConf)
	n.WriteFile("nginx.conf", conf)
	logPath := filepath.Join(n.dir, "error.log")
	args := []string{
		"-p", n.dir + "/",
		"-c", filepath.Join(n.dir, "nginx.conf"),
		"-g", fmt.Sprintf("daemon off; pid %s; error_log %s;", filepath.Join(n.dir, "nginx.pid"), logPath),
	}
	n.start("nginx", "nginx", args, logPath, 30*time.Second, func() error { return pingHTTP(addr) })
}

// Stop stops nginx with SIGTERM (its master stops the workers), or SIGKILL
// if it is still running after 10 s. It does nothing if nginx is stopped.
func (n *Nginx) Stop() { n.stop(10 * time.Second) }

// Log returns nginx's error log, for a failing test to show.
func (n *Nginx) Log() string { return readFrom(filepath.Join(n.dir, "error.log"), 0) }
