package stacktest

import (
	"encoding/json"
	"testing"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
)

// Consume reads channel of topic on the nsqd at nsqdTCP and delivers every
// message as decode makes it; a message decode refuses fails the test (and
// is not delivered). The consumer stops at cleanup.
func Consume[T any](t testing.TB, nsqdTCP, topic, channel string, decode func([]byte) (T, error)) <-chan T {
	t.Helper()
	got := make(chan T, 16)
	cons, err := nsq.NewConsumer(topic, channel, nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	cons.SetLogger(nil, nsq.LogLevelError)
	cons.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		v, err := decode(m.Body)
		if err != nil {
			t.Errorf("%s message %s: %v", topic, m.Body, err)
			return nil
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

// ConsumeJSON is [Consume] on channel "test" of topic's messages decoded
// from JSON as a T.
func ConsumeJSON[T any](t testing.TB, nsqdTCP, topic string) <-chan T {
	t.Helper()
	return Consume(t, nsqdTCP, topic, "test", func(b []byte) (T, error) {
		var v T
		err := json.Unmarshal(b, &v)
		return v, err
	})
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
