package nsqio

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// LookupdNodes asks nsqlookupd for the TCP addresses of every nsqd
// registered with it.
func LookupdNodes(addr string, timeout time.Duration) ([]string, error) {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	c := http.Client{Timeout: timeout}
	resp, err := c.Get(strings.TrimSuffix(addr, "/") + "/nodes")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/nodes: %s", resp.Status)
	}
	var nodes struct {
		Producers []struct {
			BroadcastAddress string `json:"broadcast_address"`
			TCPPort          int    `json:"tcp_port"`
		} `json:"producers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&nodes); err != nil {
		return nil, fmt.Errorf("/nodes: %w", err)
	}
	var addrs []string
	for _, n := range nodes.Producers {
		addrs = append(addrs, net.JoinHostPort(n.BroadcastAddress, strconv.Itoa(n.TCPPort)))
	}
	return addrs, nil
}

// ConsumerLogger adapts a go-nsq consumer's logger to slog. nsqlookupd
// answers TOPIC_NOT_FOUND until some nsqd has the topic, which is normal on
// a first start: that is said once, at info level, not at every poll.
type ConsumerLogger struct {
	l        *slog.Logger
	poll     time.Duration
	notFound atomic.Bool
}

// NewConsumerLogger logs for a consumer that asks nsqlookupd every poll.
func NewConsumerLogger(l *slog.Logger, poll time.Duration) *ConsumerLogger {
	return &ConsumerLogger{l: l, poll: poll}
}

func (c *ConsumerLogger) Output(_ int, s string) error {
	if strings.Contains(s, "TOPIC_NOT_FOUND") {
		if !c.notFound.Swap(true) {
			c.l.Info("nsqlookupd knows no nsqd with this topic yet (the canal creates it at start); asking again", "every", c.poll)
		}
		return nil
	}
	c.l.Warn(s)
	return nil
}
