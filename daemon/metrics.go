package daemon

import (
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// docs/metrics.md lists every metric a daemon registers; TestMetricsDoc fails
// while it is out of date.
//go:generate go test -run TestMetricsDoc -update

// metricsRegistry is the daemon's Prometheus registry (every component
// registers on it, /metrics gathers it) that remembers the collectors
// registered on it: Gather omits a vector until it has a child, so this is
// how the metrics a daemon can expose are known (docs/metrics.md).
type metricsRegistry struct {
	*prometheus.Registry

	mu         sync.Mutex
	collectors []prometheus.Collector
}

func newMetricsRegistry() *metricsRegistry {
	return &metricsRegistry{Registry: prometheus.NewRegistry()}
}

// Register registers c and remembers it.
func (r *metricsRegistry) Register(c prometheus.Collector) error {
	if err := r.Registry.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	r.collectors = append(r.collectors, c)
	r.mu.Unlock()
	return nil
}

// MustRegister registers cs through Register, panicking on the first error.
func (r *metricsRegistry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// Unregister unregisters c and forgets it.
func (r *metricsRegistry) Unregister(c prometheus.Collector) bool {
	if !r.Registry.Unregister(c) {
		return false
	}
	// Collectors are told apart by their descriptors, as the registry does.
	descs := descStrings(c)
	r.mu.Lock()
	r.collectors = slices.DeleteFunc(r.collectors, func(x prometheus.Collector) bool { return slices.Equal(descStrings(x), descs) })
	r.mu.Unlock()
	return true
}

// registered returns the collectors registered so far, in order.
func (r *metricsRegistry) registered() []prometheus.Collector {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.collectors)
}

func descStrings(c prometheus.Collector) []string {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	var s []string
	for d := range ch {
		s = append(s, d.String())
	}
	slices.Sort(s)
	return s
}
