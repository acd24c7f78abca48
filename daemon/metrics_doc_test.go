package daemon

import (
	"bytes"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/flashsync/flashsync/configs"
)

// docs/metrics.md is generated here (go generate ./daemon runs TestMetricsDoc
// with -update): what it lists is what the code registers, so the test fails
// as soon as the file and the code differ.
var updateMetricsDoc = flag.Bool("update", false, "rewrite ../docs/metrics.md from the metrics the code registers (go generate ./daemon)")

const metricsDocPath = "../docs/metrics.md"

// cdnConfig adds what configs/dev.toml lacks for the dispatcher and console
// roles.
const cdnConfig = `
[[cdn_node]]
name = "edge-1"
console_url = "http://127.0.0.1:16100"
key = "metrics-doc-console-key-0123"

[console]
addr = "127.0.0.1:16100"
key = "metrics-doc-console-key-0123"
machines = ["127.0.0.1:16081"]
`

// everyRoleConfig is configs/dev.toml plus cdnConfig, listening on free
// ports (a stack may be running) and keeping its position in a temporary
// directory.
func everyRoleConfig(t *testing.T) *configs.Config {
	t.Helper()
	dev, err := os.ReadFile("../configs/dev.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Parse(append(dev, cdnConfig...))
	if err != nil {
		t.Fatal(err)
	}
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Seckill.Addr = "127.0.0.1:0"
	cfg.Console.Addr = "127.0.0.1:0"
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Canal.PositionFile = filepath.Join(t.TempDir(), "position")
	return cfg
}

// metricInfo is one metric as docs/metrics.md lists it.
type metricInfo struct {
	name, typ, help string
	// labels are the variable labels in their declared order, then the
	// constant ones as name="value".
	labels []string
	// roles register the metric (a daemon running only that role has it), in
	// Roles order.
	roles []string
	// late: registered after New returned, when the daemon builds its HTTP
	// handler (Run does).
	late bool
}

func (m metricInfo) same(o metricInfo) bool {
	return m.name == o.name && m.typ == o.typ && m.help == o.help && slices.Equal(m.labels, o.labels) && m.late == o.late
}

// daemonMetrics builds a daemon running roles (New dials nothing), builds its
// HTTP handler as Run does, and describes every collector registered on its
// registry; it returns them too, their vectors given a child each.
func daemonMetrics(t *testing.T, roles []string) ([]metricInfo, []prometheus.Collector) {
	t.Helper()
	n, err := New(Options{Config: everyRoleConfig(t), Roles: roles, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("roles %v: %v", roles, err)
	}
	defer n.Close()
	byNew := len(n.registry.registered())
	n.mux()
	collectors := n.registry.registered()
	var ms []metricInfo
	for i, c := range collectors {
		cms, err := describeCollector(c)
		if err != nil {
			t.Fatalf("roles %v: %v", roles, err)
		}
		for _, m := range cms {
			m.late = i >= byNew
			ms = append(ms, m)
		}
	}
	return ms, collectors
}

// labelValue is the value describeCollector gives to label i of a vector,
// to find the label back in its position.
func labelValue(i int) string { return "metrics-doc-label-" + strconv.Itoa(i) }

// describeCollector lists the metrics of c. Gather omits a vector without
// children, so each vector gets one, whose label values tell the labels'
// declared order.
func describeCollector(c prometheus.Collector) ([]metricInfo, error) {
	nLabels := -1 // not a vector
	var child func(lvs ...string) error
	switch v := c.(type) {
	case *prometheus.CounterVec:
		child = func(lvs ...string) error { _, err := v.GetMetricWithLabelValues(lvs...); return err }
	case *prometheus.GaugeVec:
		child = func(lvs ...string) error { _, err := v.GetMetricWithLabelValues(lvs...); return err }
	case *prometheus.HistogramVec:
		child = func(lvs ...string) error { _, err := v.GetMetricWithLabelValues(lvs...); return err }
	case *prometheus.SummaryVec:
		child = func(lvs ...string) error { _, err := v.GetMetricWithLabelValues(lvs...); return err }
	}
	if child != nil {
		for k := 0; k <= 32 && nLabels < 0; k++ {
			lvs := make([]string, k)
			for i := range lvs {
				lvs[i] = labelValue(i)
			}
			if child(lvs...) == nil {
				nLabels = k
			}
		}
		if nLabels < 0 {
			return nil, fmt.Errorf("%v: no label count gives the vector a child", descStrings(c))
		}
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		return nil, err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return nil, err
	}
	if descs := descStrings(c); len(descs) != len(mfs) {
		return nil, fmt.Errorf("%T describes %d metrics but collects %d, so some cannot be documented: %v", c, len(descs), len(mfs), descs)
	}
	var out []metricInfo
	for _, mf := range mfs {
		m := metricInfo{name: mf.GetName(), typ: strings.ToLower(mf.GetType().String()), help: mf.GetHelp()}
		if nLabels >= 0 {
			index := map[string]int{}
			for i := range nLabels {
				index[labelValue(i)] = i
			}
			found := false
			for _, s := range mf.GetMetric() {
				vars, consts := make([]string, nLabels), []string{}
				n := 0
				for _, lp := range s.GetLabel() {
					if i, ok := index[lp.GetValue()]; ok && vars[i] == "" {
						vars[i] = lp.GetName()
						n++
					} else {
						consts = append(consts, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
					}
				}
				if n == nLabels {
					m.labels, found = append(vars, consts...), true
					break
				}
			}
			if !found {
				return nil, fmt.Errorf("%s: the child given to the vector is not collected", m.name)
			}
		} else {
			for _, s := range mf.GetMetric() {
				for _, lp := range s.GetLabel() {
					if !slices.Contains(m.labels, lp.GetName()) {
						m.labels = append(m.labels, lp.GetName())
					}
				}
			}
			slices.Sort(m.labels)
		}
		out = append(out, m)
	}
	return out, nil
}

// registeredMetrics lists, by name, every metric of a daemon running every
// role, with the roles that register it (each alone in a daemon).
func registeredMetrics(t *testing.T) []metricInfo {
	t.Helper()
	all, _ := daemonMetrics(t, Roles)
	byName := map[string]*metricInfo{}
	for i := range all {
		if byName[all[i].name] != nil {
			t.Fatalf("%s is collected twice", all[i].name)
		}
		byName[all[i].name] = &all[i]
	}
	for _, role := range Roles {
		ms, _ := daemonMetrics(t, []string{role})
		for _, m := range ms {
			a := byName[m.name]
			switch {
			case a == nil:
				t.Errorf("%s: registered by a daemon running only the %s role, not by one running every role", m.name, role)
			case !a.same(m):
				t.Errorf("%s: a daemon running only the %s role registers %+v, one running every role %+v", m.name, role, m, *a)
			default:
				a.roles = append(a.roles, role)
			}
		}
	}
	for _, m := range all {
		if len(m.roles) == 0 {
			t.Errorf("%s: registered only when several roles run together", m.name)
		}
	}
	slices.SortFunc(all, func(a, b metricInfo) int { return strings.Compare(a.name, b.name) })
	return all
}

// twoWordSubsystems are the subsystems whose name has an underscore: the
// HTTP purger's metrics start with the Redis purger's word.
var twoWordSubsystems = []string{"purger_http"}

// subsystem is the <subsystem> of flashsync_<subsystem>_<name>_<unit>, ""
// for a library's metric.
func subsystem(name string) string {
	rest, ok := strings.CutPrefix(name, "flashsync_")
	if !ok {
		return ""
	}
	for _, s := range twoWordSubsystems {
		if strings.HasPrefix(rest, s+"_") {
			return s
		}
	}
	s, _, _ := strings.Cut(rest, "_")
	return s
}

// collapsed are the library collectors listed as one line each.
var collapsed = []struct{ prefix, help string }{
	{"go_", "Go runtime collector (collectors.NewGoCollector); the set depends on the Go version."},
	{"process_", "Process collector (collectors.NewProcessCollector); the set depends on the platform."},
}

// libraryPrefixes start the names of client_golang's own metrics: its
// collectors' and its /metrics handler's.
var libraryPrefixes = []string{"go_", "process_", "promhttp_"}

func isLibrary(name string) bool {
	return slices.ContainsFunc(libraryPrefixes, func(p string) bool { return strings.HasPrefix(name, p) })
}

// roleList writes "the a, b and c roles".
func roleList(roles []string) string {
	switch len(roles) {
	case 0:
		return "no role"
	case 1:
		return "the " + roles[0] + " role"
	default:
		return "the " + strings.Join(roles[:len(roles)-1], ", ") + " and " + roles[len(roles)-1] + " roles"
	}
}

func mdCell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

const metricsDocIntro = `<!-- Code generated by "go generate ./daemon" (TestMetricsDoc in daemon/metrics_doc_test.go); DO NOT EDIT. -->

# Metrics

Every metric a flashsync process registers on the Prometheus registry it serves
at ` + "`/metrics`" + `, one table per subsystem. Names follow
` + "`flashsync_<subsystem>_<name>_<unit>`" + `: counters, and only counters, end in
` + "`_total`" + `; a metric of a time or a size ends in its base unit (` + "`_seconds`" + `,
` + "`_bytes`" + `). A labelled metric appears on ` + "`/metrics`" + ` once it has a value for some
label set. This file is generated by ` + "`go generate ./daemon`" + ` from the collectors
that daemons running each role register (daemon/metrics_doc_test.go) and must not
be edited by hand: ` + "`go test ./daemon`" + ` fails while it is out of date.
`

// renderMetricsDoc writes docs/metrics.md: ms sorted by name, a section per
// subsystem in the order of the roles that register them, the library
// metrics last.
func renderMetricsDoc(ms []metricInfo) []byte {
	type section struct {
		name    string
		rank    int
		metrics []metricInfo
	}
	var sections []*section
	bySub := map[string]*section{}
	for _, m := range ms {
		sub := subsystem(m.name)
		s := bySub[sub]
		if s == nil {
			s = &section{name: sub, rank: len(Roles)}
			bySub[sub] = s
			sections = append(sections, s)
		}
		if sub != "" {
			for _, r := range m.roles {
				s.rank = min(s.rank, slices.Index(Roles, r))
			}
		} else {
			s.rank = len(Roles) + 1
		}
		s.metrics = append(s.metrics, m)
	}
	slices.SortFunc(sections, func(a, b *section) int {
		if a.rank != b.rank {
			return a.rank - b.rank
		}
		return strings.Compare(a.name, b.name)
	})

	var b bytes.Buffer
	b.WriteString(metricsDocIntro)
	for _, s := range sections {
		title := s.name
		if title == "" {
			title = "Go runtime, process and /metrics handler (client_golang)"
		}
		// Roles of every metric of the section; notes for the others.
		common := slices.Clone(Roles)
		for _, m := range s.metrics {
			common = slices.DeleteFunc(common, func(r string) bool { return !slices.Contains(m.roles, r) })
		}
		fmt.Fprintf(&b, "\n## %s\n\n", title)
		switch {
		case len(common) == len(Roles):
			b.WriteString("Registered by every role.\n\n")
		case len(common) > 0:
			fmt.Fprintf(&b, "Registered by %s.\n\n", roleList(common))
		}
		b.WriteString("| name | type | labels | help |\n|---|---|---|---|\n")
		var notes []string
		done := map[string]bool{}
		for _, m := range s.metrics {
			name, typ, labels, help := "`"+m.name+"`", m.typ, "", mdCell(m.help)
			if i := slices.IndexFunc(collapsed, func(c struct{ prefix, help string }) bool { return strings.HasPrefix(m.name, c.prefix) }); i >= 0 {
				if done[collapsed[i].prefix] {
					continue
				}
				done[collapsed[i].prefix] = true
				name, typ, help = "`"+collapsed[i].prefix+"*`", "various", collapsed[i].help
			} else {
				if len(m.labels) > 0 {
					labels = "`" + strings.Join(m.labels, "`, `") + "`"
				}
				if extra := slices.DeleteFunc(slices.Clone(m.roles), func(r string) bool { return slices.Contains(common, r) }); len(extra) > 0 {
					verb := "registered by"
					if len(common) > 0 {
						verb = "also registered by"
					}
					notes = append(notes, fmt.Sprintf("`%s` is %s %s.", m.name, verb, roleList(extra)))
				}
				if m.late {
					notes = append(notes, fmt.Sprintf("`%s` is registered when the daemon builds its HTTP handler (daemon.Run), not by daemon.New.", m.name))
				}
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", name, typ, labels, help)
		}
		if len(notes) > 0 {
			b.WriteString("\n" + strings.Join(notes, "\n") + "\n")
		}
	}
	return b.Bytes()
}

func TestMetricsDoc(t *testing.T) {
	got := renderMetricsDoc(registeredMetrics(t))
	if t.Failed() {
		return
	}
	if *updateMetricsDoc {
		if err := os.WriteFile(metricsDocPath, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(metricsDocPath)
	if err != nil {
		t.Fatalf("docs/metrics.md is out of date: run go generate ./daemon (%v)", err)
	}
	if !bytes.Equal(want, got) {
		wl, gl := strings.Split(string(want), "\n"), strings.Split(string(got), "\n")
		i := 0
		for i < len(wl) && i < len(gl) && wl[i] == gl[i] {
			i++
		}
		line := func(ls []string) string {
			if i < len(ls) {
				return strconv.Quote(ls[i])
			}
			return "end of file"
		}
		t.Fatalf("docs/metrics.md is out of date: run go generate ./daemon\nfirst difference, line %d:\n  file: %s\n  code: %s", i+1, line(wl), line(gl))
	}
}

// countHistograms measure a number of things (their last word), not a time
// or a size, so they have no base unit.
var countHistograms = []string{"flashsync_seckill_writer_batch_reservations"}

var (
	metricNameRE = regexp.MustCompile(`^flashsync_[a-z][a-z0-9]*(_[a-z0-9]+)+$`)
	timeHelpRE   = regexp.MustCompile(`(?i)\b(time|latency|duration|seconds)\b`)
	sizeHelpRE   = regexp.MustCompile(`(?i)\b(size|bytes)\b`)
)

func TestMetricNames(t *testing.T) {
	ms := registeredMetrics(t)
	helps := map[string][]string{}
	for _, m := range ms {
		if isLibrary(m.name) {
			continue
		}
		if !metricNameRE.MatchString(m.name) {
			t.Errorf("%s: not flashsync_<subsystem>_<name>_<unit> in lower snake case", m.name)
		}
		if strings.TrimSpace(m.help) == "" {
			t.Errorf("%s: no help text", m.name)
		}
		helps[m.help] = append(helps[m.help], m.name)
		if total := strings.HasSuffix(m.name, "_total"); m.typ == "counter" && !total {
			t.Errorf("%s: a counter's name ends in _total", m.name)
		} else if m.typ != "counter" && total {
			t.Errorf("%s: a %s's name does not end in _total (counters only)", m.name, m.typ)
		}
		base := strings.TrimSuffix(m.name, "_total")
		unit := strings.HasSuffix(base, "_seconds") || strings.HasSuffix(base, "_bytes")
		if (m.typ == "histogram" || m.typ == "summary") && !unit && !slices.Contains(countHistograms, m.name) {
			t.Errorf("%s: a %s of a time or a size ends in _seconds or _bytes (one of a count of things goes in countHistograms)", m.name, m.typ)
		}
		if m.typ != "counter" && timeHelpRE.MatchString(m.help) && !strings.HasSuffix(base, "_seconds") {
			t.Errorf("%s: measures a time (help %q) but does not end in _seconds", m.name, m.help)
		}
		if m.typ != "counter" && sizeHelpRE.MatchString(m.help) && !strings.HasSuffix(base, "_bytes") {
			t.Errorf("%s: measures a size (help %q) but does not end in _bytes", m.name, m.help)
		}
	}
	for help, names := range helps {
		if len(names) > 1 {
			t.Logf("same help for %v: %q", names, help)
		}
	}

	// And the Prometheus conventions as promlint checks them.
	_, collectors := daemonMetrics(t, Roles)
	reg := prometheus.NewPedanticRegistry()
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	ours := mfs[:0]
	for _, mf := range mfs {
		if !isLibrary(mf.GetName()) {
			ours = append(ours, mf)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(ours).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
