package stacktest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// A proxy forwards until Cut, which resets what it forwards and every new
// connection, and forwards again after Restore.
func TestProxyCut(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() { // an echo server
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	p := StartProxy(t, l.Addr().String())
	echo := func(c net.Conn) error {
		if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "ping\n" {
			return fmt.Errorf("echo %q", line)
		}
		return nil
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	old := dial()
	if err := echo(old); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	if err := echo(old); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("a connection forwarded before the cut: %v, want ECONNRESET", err)
	}
	// The reset may come before the dial returns.
	c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if err == nil {
		err = echo(c)
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("a connection made during the cut: %v, want ECONNRESET", err)
	}
	p.Restore()
	if err := echo(dial()); err != nil {
		t.Errorf("after Restore: %v", err)
	}
}
