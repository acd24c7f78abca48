//go:build linux

package stacktest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestStackScriptVarnishInClone runs scripts/stack.sh's two Varnish instances
// from a copy of this checkout inside a mode-0700 directory, as a clone into
// /root (0700 on Debian) or under `mktemp -d` has it. Run as root, varnishd's
// default jail dropped its VCL compiler and child to the users varnish and
// vcache, which cannot traverse such a directory: both instances exited with
// "Cannot read -f file ... (Permission denied)". The stack must work from
// wherever the repository is checked out.
//
// The copy's stack runs with FLASHSYNC_STACK_PORT_OFFSET, so that it never
// touches the shared stack (`make stack-up`) that other tests use meanwhile:
// the test serves the demo backend's pages itself on 16090+offset and reads
// them through both instances (16081+offset, 16082+offset).
func TestStackScriptVarnishInClone(t *testing.T) {
	_, err := exec.LookPath("varnishd")
	if err == nil {
		_, err = os.Stat(XkeyVmod)
	}
	Require(t, "varnishd with the xkey vmod (apt varnish varnish-modules; `make stack-up` installs them as root)", err)
	for _, tool := range []string{"bash", "git", "curl", "setsid", "flock"} {
		_, err := exec.LookPath(tool)
		Require(t, tool+" (used by scripts/stack.sh and this test)", err)
	}

	repo, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	parent := t.TempDir()
	if err := os.Chmod(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	clone := filepath.Join(parent, "flashsync")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	n, err := copyCheckout(ctx, repo, clone)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("copied %d files of %s into %s (parent mode 0700, uid %d)", n, repo, clone, os.Getuid())

	offset, backendListener := cloneTestPortOffset(t)
	var itemFetches atomic.Int64
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// What configs/varnish/flashsync.vcl expects of demoweb's pages.
		h := w.Header()
		h.Set("X-Generated-At", time.Now().UTC().Format(time.RFC3339Nano))
		switch r.URL.Path {
		case "/healthz":
			h.Set("Cache-Control", "no-store")
			h.Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintln(w, "ok")
		case "/item/1.html":
			itemFetches.Add(1)
			h.Set("Content-Type", "text/html; charset=utf-8")
			h.Set("Cache-Control", "max-age=3600")
			h.Set("xkey", "item-1")
			fmt.Fprint(w, "<!DOCTYPE html>\n<title>Clone item 1</title>\n<h1>Clone item 1</h1>\n")
		default:
			http.NotFound(w, r)
		}
	}))
	backend.Listener.Close()
	backend.Listener = backendListener
	backend.Start()
	t.Cleanup(backend.Close) // after the stack's cleanup below (cleanups run last first)

	services := []string{"varnish-16081", "varnish-16082"}
	stackDir := filepath.Join(clone, ".stack", "offset-"+strconv.Itoa(offset))
	t.Cleanup(func() {
		sups := supervisorPIDs(stackDir)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := runClonedStack(ctx, clone, offset, append([]string{"down"}, services...)...)
		if err != nil {
			t.Errorf("stack.sh down %s (offset %d): %v\n%s", strings.Join(services, " "), offset, err, out)
			return
		}
		reapSupervisors(t, sups)
	})

	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := runStackUp(ctx, clone, offset, services...)
	if err != nil {
		if os.Getuid() != 0 && strings.Contains(out, "missing packages") {
			Require(t, "the packages scripts/stack.sh requires", fmt.Errorf("%v\n%s", err, out))
		}
		t.Fatalf("stack.sh up %s (offset %d) in %s: %v\n%s", strings.Join(services, " "), offset, clone, err, out)
	}
	t.Logf("stack.sh up took %v:\n%s", time.Since(start), out)

	client := &http.Client{Timeout: 5 * time.Second}
	for _, name := range services {
		base, _ := strconv.Atoi(strings.TrimPrefix(name, "varnish-"))
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(base+offset))
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("%s (%s): %s\n--- %s log (tail) ---\n%s", name, addr, fmt.Sprintf(format, args...),
				name, cloneTail(readFrom(filepath.Join(stackDir, "logs", name+".log"), 0), 30))
		}
		miss, err := cloneGet(client, addr, "/item/1.html")
		if err != nil {
			fail("first GET: %v", err)
		}
		hit, err := cloneGet(client, addr, "/item/1.html")
		if err != nil {
			fail("second GET: %v", err)
		}
		if miss.ids != 1 || miss.cache != "MISS" {
			fail("first GET: X-Varnish with %d ids, X-Cache %q; want 1 id (a miss), MISS", miss.ids, miss.cache)
		}
		if hit.ids != 2 || hit.cache != "HIT" || hit.generated != miss.generated {
			fail("second GET: X-Varnish with %d ids, X-Cache %q, X-Generated-At %q; want 2 ids (a hit), HIT, %q of the miss",
				hit.ids, hit.cache, hit.generated, miss.generated)
		}
		t.Logf("%s on %s: miss then hit (X-Varnish %q)", name, addr, hit.varnish)
	}
	// One backend fetch per instance: the second GETs were hits.
	if got := itemFetches.Load(); got != int64(len(services)) {
		t.Errorf("backend fetched /item/1.html %d times, want %d (one miss per instance)", got, len(services))
	}
}

// clonePage is what a GET through one of the copy's Varnish instances
// returned.
type clonePage struct {
	varnish   string // X-Varnish
	ids       int    // ids in X-Varnish: 1 on a miss, 2 on a hit
	cache     string // X-Cache, set by flashsync.vcl
	generated string // X-Generated-At, set by the backend
}

func cloneGet(c *http.Client, addr, path string) (clonePage, error) {
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return clonePage{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return clonePage{}, err
	}
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("<h1>Clone item 1</h1>")) {
		return clonePage{}, fmt.Errorf("GET %s%s: %s: %.300q", addr, path, resp.Status, body)
	}
	if k := resp.Header.Get("xkey"); k != "" {
		// flashsync.vcl's vcl_deliver removes it: another VCL answered.
		return clonePage{}, fmt.Errorf("GET %s%s: xkey %q reached the client", addr, path, k)
	}
	v := resp.Header.Get("X-Varnish")
	return clonePage{varnish: v, ids: len(strings.Fields(v)), cache: resp.Header.Get("X-Cache"),
		generated: resp.Header.Get("X-Generated-At")}, nil
}

// copyCheckout copies the files of the work tree at src that git tracks or
// would track (uncommitted changes included, ignored files such as .stack/
// left out) to dst, keeping their modes, and returns how many it copied.
func copyCheckout(ctx context.Context, src, dst string) (int, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "git", "-C", src, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("git ls-files in %s: %v\n%s", src, err, stderr.Bytes())
	}
	n := 0
	for _, rel := range strings.Split(string(out), "\x00") {
		if rel == "" {
			continue
		}
		from, to := filepath.Join(src, rel), filepath.Join(dst, rel)
		fi, err := os.Lstat(from)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted in the work tree, not yet in the index
		}
		if err != nil {
			return n, err
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return n, err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(from)
			if err != nil {
				return n, err
			}
			if err := os.Symlink(target, to); err != nil {
				return n, err
			}
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(from)
			if err != nil {
				return n, err
			}
			if err := os.WriteFile(to, data, fi.Mode().Perm()); err != nil {
				return n, err
			}
		default:
			continue // a submodule's directory: the stack needs none
		}
		n++
	}
	return n, nil
}

// cloneTestPortOffset picks a FLASHSYNC_STACK_PORT_OFFSET whose Varnish ports
// are free and returns it with a listener on its demo backend port
// (16090+offset), which the test serves; holding it also keeps a concurrent
// run of this test off the same offset. The offsets keep every port below
// the kernel's ephemeral range (32768 and up), where client connections
// could take them, and far from the shared stack's ports.
func cloneTestPortOffset(t *testing.T) (int, net.Listener) {
	t.Helper()
	free := func(port int) bool {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			return false
		}
		l.Close()
		return true
	}
	for offset := 10000; offset <= 16000; offset += 500 {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(16090+offset)))
		if err != nil {
			continue
		}
		if free(16081+offset) && free(16082+offset) {
			return offset, l
		}
		l.Close()
	}
	t.Fatal("no port offset from 10000 to 16000 (step 500) has 16081, 16082 and 16090 free")
	return 0, nil
}

// runStackUp runs `stack.sh up SERVICE...` in the copy as a subreaper
// (prctl PR_SET_CHILD_SUBREAPER): the supervisors that the script starts
// with `setsid -f` become this process's children instead of PID 1's (which
// does not reap them here), so that the cleanup can reap them once `down`
// has stopped them. The flag is cleared again when the script has exited;
// the supervisors stay children of this process.
func runStackUp(ctx context.Context, clone string, offset int, services ...string) (string, error) {
	const prSetChildSubreaper = 36
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		return "", fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %v", e)
	}
	defer syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0)
	return runClonedStack(ctx, clone, offset, append([]string{"up"}, services...)...)
}

// runClonedStack runs the copy's scripts/stack.sh with args and the port
// offset, and returns its output.
func runClonedStack(ctx context.Context, clone string, offset int, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(clone, "scripts", "stack.sh")}, args...)...)
	cmd.Dir = clone
	cmd.Env = append(os.Environ(), "FLASHSYNC_STACK_PORT_OFFSET="+strconv.Itoa(offset))
	// The servers do not inherit the output pipe (the script redirects them
	// to log files); should one ever do, do not wait for it forever.
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// supervisorPIDs returns the PIDs in the stack's *.pid.sup files (one
// stack-supervise.sh per running service).
func supervisorPIDs(stackDir string) []int {
	files, _ := filepath.Glob(filepath.Join(stackDir, "*.pid.sup"))
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// reapSupervisors waits (bounded) for the stopped services' supervisors,
// children of this process since runStackUp, to exit, and reaps them.
func reapSupervisors(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		err := poll(15*time.Second, 20*time.Millisecond, func() error {
			var ws syscall.WaitStatus
			got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			switch {
			case errors.Is(err, syscall.ECHILD):
				return nil // not our child (or reaped already)
			case err != nil:
				return err
			case got == pid:
				return nil
			}
			return fmt.Errorf("supervisor %d still running", pid)
		})
		if err != nil {
			t.Errorf("after stack.sh down: %v", err)
		}
	}
}

// cloneTail returns the last n lines of s.
func cloneTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
