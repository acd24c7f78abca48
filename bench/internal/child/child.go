// Package child runs the processes a load command under bench/ measures
// (the flashsync binary, a baseline daemon) as its children: started with
// their output in a log file, waited on, stopped with SIGTERM, and their CPU
// time read from /proc.
package child

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is one started child.
type Process struct {
	cmd     *exec.Cmd
	done    chan error
	stopped bool
}

// Start runs bin with args, its stdout and stderr appended to logPath.
func Start(bin string, args []string, logPath string) (*Process, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &Process{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }() // PID 1 here reaps nothing: wait on it
	return p, nil
}

// PID is the child's process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited tells whether the child is gone.
func (p *Process) Exited() bool {
	select {
	case err := <-p.done:
		p.done <- err // for Stop
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits for the exit, SIGKILL after grace; it
// returns the exit's error (a killed child's too). It may be called more
// than once.
func (p *Process) Stop(grace time.Duration) error {
	if p.stopped {
		return nil
	}
	p.stopped = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			return fmt.Errorf("%s exit: %w", p.cmd.Path, err)
		}
		return nil
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New(p.cmd.Path + " did not stop within " + grace.String() + " of SIGTERM; killed")
	}
}

// clockTicks is Linux's USER_HZ, the unit of /proc/PID/stat's times.
const clockTicks = 100

// CPUSeconds is process pid's user + system CPU time, all its threads (0
// when unreadable).
func CPUSeconds(pid int) float64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name, which may hold spaces: utime is field
	// 14 and stime 15.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0
	}
	fs := strings.Fields(string(data[i+1:]))
	if len(fs) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(fs[11], 64)
	s, _ := strconv.ParseFloat(fs[12], 64)
	return (u + s) / clockTicks
}
