package stacktest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// XkeyVmod is where Debian's varnish-modules package installs the xkey vmod.
const XkeyVmod = "/usr/lib/x86_64-linux-gnu/varnish/vmods/libvmod_xkey.so"

// Varnish is a private varnishd owned by one test, with a malloc storage,
// listening on a free loopback port, its admin port disabled.
type Varnish struct {
	daemon
	dir     string
	vcl     string
	backend string
	port    int
}

// StartVarnish starts a private varnishd ([Require] semantics when varnishd
// or the xkey vmod is missing) with the VCL at vclPath, and waits until it
// answers HTTP. A file flashsync-backend.vcl defining `backend default` at
// backendAddr is written to the instance's directory, which comes first on
// vcl_path, so configs/varnish/flashsync.vcl's include finds it (before the
// VCL's own directory). It is stopped at cleanup. Starting takes about a
// second (the VCL is compiled).
func StartVarnish(t testing.TB, vclPath, backendAddr string) *Varnish {
	t.Helper()
	_, err := exec.LookPath("varnishd")
	if err == nil {
		_, err = os.Stat(XkeyVmod)
	}
	Require(t, "varnishd with the xkey vmod (apt varnish varnish-modules)", err)
	host, port, err := net.SplitHostPort(backendAddr)
	if err != nil {
		t.Fatalf("varnish backend %q: %v", backendAddr, err)
	}
	vclPath, err = filepath.Abs(vclPath)
	if err != nil {
		t.Fatal(err)
	}
	// varnishd's child runs as an unprivileged user: its working directory
	// must be reachable, which t.TempDir() (mode 0700) is not.
	dir, err := os.MkdirTemp("", "flashsync-varnish-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	v := &Varnish{daemon: daemon{t: t}, dir: dir, vcl: vclPath, backend: backendAddr, port: FreePort(t)}
	t.Cleanup(func() {
		v.Stop()
		os.RemoveAll(dir)
	})
	backend := fmt.Sprintf("backend default {\n    .host = %q;\n    .port = %q;\n    .connect_timeout = 1s;\n    .first_byte_timeout = 5s;\n}\n", host, port)
	if err := os.WriteFile(filepath.Join(dir, "flashsync-backend.vcl"), []byte(backend), 0o644); err != nil {
		t.Fatal(err)
	}
	v.Start()
	return v
}

// Addr returns the instance's host:port.
func (v *Varnish) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(v.port)) }

// Start starts the stopped instance again on the same port (with an empty
// cache), waiting until it answers.
func (v *Varnish) Start() {
	v.t.Helper()
	v.mustBeStopped("varnish " + v.Addr())
	args := []string{
		"-F",
		// Every varnish process runs as the test's user: the default jail
		// hands the VCL compiler and the child to varnish's own users, who
		// cannot read a checkout under a 0700 directory (root's home).
		"-j", "none",
		"-a", v.Addr(),
		"-f", v.vcl,
		"-n", filepath.Join(v.dir, "n"),
		"-T", "none",
		"-s", "malloc,32m",
		"-p", "vcl_path=" + v.dir + ":" + filepath.Dir(v.vcl),
		"-p", "thread_pools=1",
		"-p", "thread_pool_min=5",
		"-p", "thread_pool_max=100",
		// A refused backend connection (the readiness check, a backend
		// started after Varnish) must not fail the next fetches for 250 ms.
		"-p", "backend_remote_error_holddown=0",
	}
	v.start("varnish", "varnishd", args, filepath.Join(v.dir, "varnishd.log"), 30*time.Second,
		func() error { return pingHTTP(v.Addr()) })
}

// Stop stops the instance with SIGTERM, or SIGKILL if it is still running
// after 10 s. It does nothing if the instance is stopped.
func (v *Varnish) Stop() { v.stop(10 * time.Second) }

// pingHTTP expects any HTTP answer from addr (Varnish answers 503 without a
// backend).
func pingHTTP(addr string) error {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/__ping")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode == 0 {
		return errors.New("no status")
	}
	return nil
}

// Log returns varnishd's output and, while it runs, the transactions in
// its shared-memory log (varnishlog -d), for a failing test to show.
func (v *Varnish) Log() string {
	out := readFrom(filepath.Join(v.dir, "varnishd.log"), 0)
	if v.p != nil {
		b, err := exec.Command("varnishlog", "-d", "-n", filepath.Join(v.dir, "n")).CombinedOutput()
		out += "\n--- varnishlog -d ---\n" + string(b)
		if err != nil {
			out += err.Error()
		}
	}
	return out
}
