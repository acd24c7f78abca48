package stacktest

import (
	"encoding/json"
	"testing"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
)

// ConsumeJSON reads topic on the nsqd at nsqdTCP (channel "test") and
// delivers every message decoded as a T; a message that does not decode
// fails the test. The consumer stops at cleanup.
func ConsumeJSON[T any](t testing.TB, nsqdTCP, topic string) <-chan T {
	t.Helper()
	got := make(chan T, 16)
	cons, err := nsq.NewConsumer(topic, "test", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	cons.SetLogger(nil, nsq.LogLevelError)
	cons.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		var v T
		if err := json.Unmarshal(m.Body, &v); err != nil {
			t.Errorf("%s message %s: %v", topic, m.Body, err)
		}
		got <- v
		return nil
	}))
	if err := cons.ConnectToNSQD(nsqdTCP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cons.Stop)
	return got
}

// MetricValue sums the samples of a counter or gauge of reg whose labels
// include every given name=value pair.
func MetricValue(t testing.TB, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
