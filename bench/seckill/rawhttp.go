package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// rawClient is one keep-alive HTTP/1.1 connection that POSTs and reads the
// answer with no more than a bufio.Reader: the load generator shares the
// two cores with what it measures, and net/http's client (transport
// goroutines, pool, header maps) costs about as much CPU as the server side
// of a request. The requests are real HTTP on a real socket.
type rawClient struct {
	addr string
	c    net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	buf  bytes.Buffer
}

func newRawClient(addr string) *rawClient { return &rawClient{addr: addr} }

func (c *rawClient) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

// post sends one request; body is JSON. It returns the status and the
// answer's body.
func (c *rawClient) post(pathAndQuery string, body []byte) (int, []byte, error) {
	if c.c == nil {
		conn, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
		if err != nil {
			return 0, nil, err
		}
		c.c, c.r, c.w = conn, bufio.NewReaderSize(conn, 4096), bufio.NewWriterSize(conn, 4096)
	}
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c.w, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", pathAndQuery, c.addr, len(body))
	c.w.Write(body)
	if err := c.w.Flush(); err != nil {
		c.close()
		return 0, nil, err
	}
	status, b, keep, err := c.read()
	if err != nil || !keep {
		c.close()
	}
	return status, b, err
}

// read parses one answer: status line, headers (Content-Length,
// Connection), body.
func (c *rawClient) read() (status int, body []byte, keepAlive bool, err error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, nil, false, err
	}
	// HTTP/1.1 202 Accepted
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, nil, false, fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, false, fmt.Errorf("bad status line %q", line)
	}
	length, keepAlive := -1, true
	for {
		h, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, nil, false, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		k, v, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch strings.ToLower(string(k)) {
		case "content-length":
			length, err = strconv.Atoi(string(v))
			if err != nil {
				return 0, nil, false, fmt.Errorf("bad Content-Length %q", v)
			}
		case "connection":
			keepAlive = !strings.EqualFold(string(v), "close")
		case "transfer-encoding":
			return 0, nil, false, errors.New("chunked answers are not expected here")
		}
	}
	if length < 0 {
		return 0, nil, false, errors.New("answer without Content-Length")
	}
	c.buf.Reset()
	if _, err := io.CopyN(&c.buf, c.r, int64(length)); err != nil {
		return 0, nil, false, err
	}
	return status, c.buf.Bytes(), keepAlive, nil
}
