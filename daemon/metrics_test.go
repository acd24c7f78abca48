package daemon

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetricsRegistryRemembersCollectors(t *testing.T) {
	r := newMetricsRegistry()
	a := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "a_total", Help: "a"}, []string{"x"})
	b := prometheus.NewGauge(prometheus.GaugeOpts{Name: "b", Help: "b"})
	r.MustRegister(a, b)
	if err := r.Register(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "a_total", Help: "a"}, []string{"x"})); err == nil {
		t.Fatal("registered a_total twice")
	}
	if got := r.registered(); len(got) != 2 || got[0] != prometheus.Collector(a) || got[1] != prometheus.Collector(b) {
		t.Fatalf("registered %v, want a and b", got)
	}
	if !r.Unregister(a) || r.Unregister(a) {
		t.Fatal("unregister a: want true once")
	}
	if got := r.registered(); len(got) != 1 || got[0] != prometheus.Collector(b) {
		t.Fatalf("registered %v after unregistering a, want b", got)
	}
	// Gather sees what is registered: the registry is the daemon's /metrics.
	if mfs, err := r.Gather(); err != nil || len(mfs) != 1 || mfs[0].GetName() != "b" {
		t.Fatalf("gather: %v %v", mfs, err)
	}
}
