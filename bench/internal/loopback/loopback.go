// Package loopback is what the load commands under bench/ share to run
// flashsync children on 127.0.0.1 and watch them: a free address for a
// child's listener, polling until a condition holds, and the sum of a
// metric's samples in a child's /metrics text.
package loopback

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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

// DeleteTopics deletes topics, with their channels and messages, from the
// nsqd whose HTTP API is at nsqdHTTP; a topic it does not have is no
// error. A load command that gives its children new replicas each run
// must: every replica is a channel of its group's topic, nsqd copies each
// message to every channel, and a channel whose consumer is gone keeps
// all of them (185 stale channels and 2.3 M messages, 1.8 GB of nsqd,
// after a morning of bench/bulkupdate runs).
func DeleteTopics(ctx context.Context, nsqdHTTP string, topics ...string) error {
	c := http.Client{Timeout: 10 * time.Second}
	for _, topic := range topics {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+nsqdHTTP+"/topic/delete?topic="+url.QueryEscape(topic), nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return fmt.Errorf("delete topic %s: %w", topic, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && !strings.Contains(string(body), "TOPIC_NOT_FOUND") {
			return fmt.Errorf("delete topic %s: %s %s", topic, resp.Status, strings.TrimSpace(string(body)))
		}
	}
	return nil
}

// FlashsyncTopics are the topics a flashsync child with topic prefix
// prefix and these Redis groups publishes or consumes.
func FlashsyncTopics(prefix string, redisGroups ...string) []string {
	topics := []string{prefix + ".acks", prefix + ".dead"}
	for _, g := range redisGroups {
		topics = append(topics, prefix+".redis."+g)
	}
	return topics
}
