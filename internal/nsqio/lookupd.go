package nsqio

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// NSQD is an nsqd as nsqlookupd lists it: the addresses it broadcasts.
type NSQD struct {
	TCPAddr  string // host:port of its TCP protocol, for consumers and producers
	HTTPAddr string // host:port of its HTTP API
}

// peer is an nsqd in an nsqlookupd answer.
type peer struct {
	BroadcastAddress string `json:"broadcast_address"`
	TCPPort          int    `json:"tcp_port"`
	HTTPPort         int    `json:"http_port"`
}

func (p peer) nsqd() NSQD {
	return NSQD{
		TCPAddr:  net.JoinHostPort(p.BroadcastAddress, strconv.Itoa(p.TCPPort)),
		HTTPAddr: net.JoinHostPort(p.BroadcastAddress, strconv.Itoa(p.HTTPPort)),
	}
}

// LookupdNodes asks nsqlookupd for the TCP addresses of every nsqd
// registered with it.
func LookupdNodes(addr string, timeout time.Duration) ([]string, error) {
	nodes, err := LookupdNSQDs(context.Background(), &http.Client{Timeout: timeout}, addr)
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.TCPAddr)
	}
	return addrs, err
}

// LookupdNSQDs asks the nsqlookupd whose HTTP API is at addr for every nsqd
// registered with it (/nodes), whatever their topics.
func LookupdNSQDs(ctx context.Context, client *http.Client, addr string) ([]NSQD, error) {
	var nodes struct {
		Producers []peer `json:"producers"`
	}
	if err := lookupdGet(ctx, client, addr, "/nodes", &nodes); err != nil {
		return nil, err
	}
	var out []NSQD
	for _, p := range nodes.Producers {
		out = append(out, p.nsqd())
	}
	return out, nil
}

// LookupdTopic asks the nsqlookupd whose HTTP API is at addr for the nsqd
// that have topic (/lookup), the list a consumer of topic connects to; none
// while no nsqd has registered it.
func LookupdTopic(ctx context.Context, client *http.Client, addr, topic string) ([]NSQD, error) {
	var lookup struct {
		Producers []peer `json:"producers"`
	}
	err := lookupdGet(ctx, client, addr, "/lookup?topic="+url.QueryEscape(topic), &lookup)
	if errors.Is(err, errNotFound) {
		return nil, nil // TOPIC_NOT_FOUND
	}
	if err != nil {
		return nil, err
	}
	var out []NSQD
	for _, p := range lookup.Producers {
		out = append(out, p.nsqd())
	}
	return out, nil
}

var errNotFound = errors.New("404 Not Found")

// lookupdGet decodes the answer of an nsqlookupd GET into v; a 404 (a topic
// nsqlookupd does not know) is errNotFound.
func lookupdGet(ctx context.Context, client *http.Client, addr, pathQuery string, v any) error {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	path, _, _ := strings.Cut(pathQuery, "?")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(addr, "/")+pathQuery, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return fmt.Errorf("%s: %w", path, errNotFound)
	default:
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
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
