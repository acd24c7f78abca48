package stacktest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy forwards TCP connections from a free loopback port to a server, so
// that a test can cut one client off the server while others still reach
// it directly: a network partition between two hosts, which a paused or
// stopped server cannot show.
type Proxy struct {
	target string
	l      net.Listener
	wg     sync.WaitGroup // the accept loop and the copies

	mu     sync.Mutex
	cut    bool
	closed bool
	conns  map[net.Conn]struct{} // both ends of every forwarded connection
}

// StartProxy listens on a free loopback port and forwards each connection
// to target. It is closed at cleanup.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy to %s: %v", target, err)
	}
	p := &Proxy{target: target, l: l, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the host:port clients dial instead of the target's.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Cut resets every forwarded connection and, until Restore, each new one
// as soon as it is accepted: the client reads ECONNRESET, as from a host
// whose firewall rejects it. The port stays bound, so no other process can
// take it meanwhile.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		reset(c)
		delete(p.conns, c)
	}
}

// Restore forwards new connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.l.Accept()
		if err != nil {
			return // closed
		}
		if !p.forwarding() {
			reset(client)
			continue
		}
		server, err := net.DialTimeout("tcp", p.target, time.Second)
		if err != nil {
			reset(client)
			continue
		}
		p.mu.Lock()
		if p.cut || p.closed { // cut while dialing
			p.mu.Unlock()
			reset(client)
			reset(server)
			continue
		}
		p.conns[client], p.conns[server] = struct{}{}, struct{}{}
		p.wg.Add(2)
		go p.copy(server, client)
		go p.copy(client, server)
		p.mu.Unlock()
	}
}

func (p *Proxy) forwarding() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.cut && !p.closed
}

// copy copies src to dst until either fails, then closes both: a
// connection one side ended is ended for the other.
func (p *Proxy) copy(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range []net.Conn{dst, src} {
		if _, ok := p.conns[c]; ok {
			c.Close()
			delete(p.conns, c)
		}
	}
}

// close stops accepting, resets what is forwarded and waits for the
// copies to end.
func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		reset(c)
		delete(p.conns, c)
	}
	p.mu.Unlock()
	p.l.Close()
	p.wg.Wait()
}

// reset closes c with a TCP RST rather than a FIN.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
