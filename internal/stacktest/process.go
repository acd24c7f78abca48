package stacktest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// process is a server started by a test. Its Wait is always called, by a
// goroutine that closes done when the process has exited.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // result of cmd.Wait, valid once done is closed
}

var errExited = errors.New("process exited")

// daemon is the process of a private server a test owns, nil while the
// server is stopped.
type daemon struct {
	t testing.TB
	p *process
}

// mustBeStopped fails the test if the server runs: what is a Start while
// running.
func (d *daemon) mustBeStopped(what string) {
	d.t.Helper()
	if d.p != nil {
		d.t.Fatalf("%s: Start while running", what)
	}
}

// start launches the server's process (see [launch]) and fails the test if
// it does not get ready.
func (d *daemon) start(what, name string, args []string, logPath string, timeout time.Duration, ready func() error) {
	d.t.Helper()
	p, err := launch(name, args, logPath, timeout, ready)
	if err != nil {
		d.t.Fatalf("start %s: %v", what, err)
	}
	d.p = p
}

// stop stops the process with SIGTERM, killing it after grace. It does
// nothing if the server is stopped.
func (d *daemon) stop(grace time.Duration) {
	if d.p != nil {
		d.p.stop(grace)
		d.p = nil
	}
}

// pause freezes the process with SIGSTOP: it keeps its sockets, the kernel
// still accepts connections and buffers requests, and nothing answers (a
// server stuck in a long fork, swapped out or in a VM pause). It fails the
// test if the server is stopped.
func (d *daemon) pause(what string) {
	d.t.Helper()
	if d.p == nil {
		d.t.Fatalf("%s: Pause while stopped", what)
	}
	if err := d.p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		d.t.Fatalf("%s: SIGSTOP: %v", what, err)
	}
}

// resume lets a paused process run again with SIGCONT.
func (d *daemon) resume(what string) {
	d.t.Helper()
	if d.p == nil {
		d.t.Fatalf("%s: Resume while stopped", what)
	}
	if err := d.p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		d.t.Fatalf("%s: SIGCONT: %v", what, err)
	}
}

// kill kills the process with SIGKILL. It does nothing if the server is
// stopped.
func (d *daemon) kill() {
	if d.p != nil {
		d.p.kill()
		d.p = nil
	}
}

// launch starts name with args, appending its output to logPath, and waits
// until ready returns nil. A process that exits because its port is still in
// use (a restart on the same port) is started again, until timeout.
func launch(name string, args []string, logPath string, timeout time.Duration, ready func() error) (*process, error) {
	deadline := time.Now().Add(timeout)
	for {
		p, logOffset, err := startProcess(name, args, logPath)
		if err != nil {
			return nil, err
		}
		err = p.waitReady(deadline, ready)
		if err == nil {
			return p, nil
		}
		p.kill()
		out := readFrom(logPath, logOffset)
		if errors.Is(err, errExited) && strings.Contains(out, "Address already in use") && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		return nil, fmt.Errorf("%s %s: %w\n--- output (%s) ---\n%s", name, strings.Join(args, " "), err, logPath, out)
	}
}

// startProcess starts the process and returns it with the size of its log
// file before it started.
func startProcess(name string, args []string, logPath string) (*process, int64, error) {
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, err
	}
	defer log.Close()
	offset, err := log.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, 0, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, offset, nil
}

// waitReady polls ready until it returns nil, the process exits or the
// deadline passes.
func (p *process) waitReady(deadline time.Time, ready func() error) error {
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%w (%v) before it was ready; last check: %v", errExited, p.err, err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready in time: %w", err)
		}
	}
}

// stop sends SIGTERM and waits for the process to exit, killing it after grace.
func (p *process) stop(grace time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	// A paused process handles the SIGTERM only once it runs again (a test
	// that failed between Pause and Resume).
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// kill sends SIGKILL and waits for the process to exit.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// readFrom returns the content of the file from offset on, at most its last 16 KiB.
func readFrom(path string, offset int64) string {
	const limit = 16 << 10
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size()-offset > limit {
		offset = st.Size() - limit
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err.Error()
	}
	b, _ := io.ReadAll(f)
	return string(b)
}
