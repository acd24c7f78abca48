// Package loopback is what the load commands under bench/ share to run
// flashsync children on 127.0.0.1 and watch them: a free address for a
// child's listener, polling until a condition holds, and the sum of a
// metric's samples in a child's /metrics text.
package loopback

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"time"
)

// FreeAddr is a loopback address with a port free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// WaitFor polls cond every interval until it holds, limit passes (an
// error) or ctx ends.
func WaitFor(ctx context.Context, limit, every time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
	return nil
}

// SumMetric sums the samples of metric name in the Prometheus text body
// whose labels contain label (for example `result="applied"`), every
// sample if label is empty.
func SumMetric(body, name, label string) float64 {
	var total float64
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		sp := strings.LastIndexByte(rest, ' ')
		if label != "" && !strings.Contains(rest[:sp+1], label) {
			continue
		}
		if v, err := strconv.ParseFloat(rest[sp+1:], 64); err == nil {
			total += v
		}
	}
	return total
}
