package purge_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

const flashsyncVCL = "../configs/varnish/flashsync.vcl"

// pageBackend serves /item/{id}.html (xkey item-{id}) and /list.html (xkey
// item-1 item-2 item-3), each response with a new X-Generation.
func pageBackend(t *testing.T) *httptest.Server {
	var gen atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Generation", fmt.Sprint(gen.Add(1)))
		w.Header().Set("Cache-Control", "max-age=3600")
		switch {
		case r.URL.Path == "/list.html":
			w.Header().Set("xkey", "item-1 item-2 item-3")
		case strings.HasPrefix(r.URL.Path, "/item/"):
			w.Header().Set("xkey", "item-"+strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/item/"), ".html"))
		default:
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "page %s\n", r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// cacheGet GETs path from a Varnish and tells whether it was a hit (two ids
// in X-Varnish).
func cacheGet(t *testing.T, addr, path string) (hit bool, gen string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s%s: %s", addr, path, resp.Status)
	}
	return len(strings.Fields(resp.Header.Get("X-Varnish"))) == 2, resp.Header.Get("X-Generation")
}

// warm fetches each path twice from every instance and checks the second
// is a hit.
func warm(t *testing.T, addrs []string, paths ...string) {
	t.Helper()
	for _, a := range addrs {
		for _, p := range paths {
			cacheGet(t, a, p)
			if hit, _ := cacheGet(t, a, p); !hit {
				t.Fatalf("%s%s: second GET was not a hit", a, p)
			}
		}
	}
}

func expectHit(t *testing.T, addrs []string, want bool, paths ...string) {
	t.Helper()
	for _, a := range addrs {
		for _, p := range paths {
			if hit, _ := cacheGet(t, a, p); hit != want {
				t.Errorf("%s%s: hit = %v, want %v", a, p, hit, want)
			}
		}
	}
}

type httpPurgeFixture struct {
	nsqd     *stacktest.NSQD
	varnish  []*stacktest.Varnish
	addrs    []string
	prod     *nsq.Producer
	reg      *prometheus.Registry
	purger   *purge.HTTPPurger
	instance purge.HTTPGroup
}

// startHTTPPurge starts an nsqd, n private Varnish instances of group g0
// with the given VCL in front of a page backend, the group's channels, and
// an HTTP purger running until cleanup.
func startHTTPPurge(t *testing.T, n int, vcl string, maxAttempts uint16) *httpPurgeFixture {
	t.Helper()
	backend := pageBackend(t)
	f := &httpPurgeFixture{reg: prometheus.NewRegistry()}
	for i := 0; i < n; i++ {
		v := stacktest.StartVarnish(t, vcl, strings.TrimPrefix(backend.URL, "http://"))
		f.varnish = append(f.varnish, v)
		f.addrs = append(f.addrs, v.Addr())
	}
	f.nsqd = stacktest.StartNSQD(t)
	f.instance = purge.HTTPGroup{Name: "g0", Instances: f.addrs}
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{f.nsqd.TCPAddr()}, NSQDHTTP: []string{f.nsqd.HTTPAddr()},
		HTTPGroups: []invalidate.Group{{Name: "g0", Addrs: f.addrs}}, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	if err := pub.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.prod, err = nsq.NewProducer(f.nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.prod.Stop)
	f.purger, err = purge.NewHTTPPurger(purge.HTTPPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: []string{f.nsqd.TCPAddr()}, MaxAttempts: maxAttempts, Timeout: time.Second}, Groups: []purge.HTTPGroup{f.instance}, Registerer: f.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "http purger", f.purger)
	return f
}

func (f *httpPurgeFixture) publish(t *testing.T, p invalidate.Purge) {
	t.Helper()
	p.V, p.Group = invalidate.PurgeVersion, "g0"
	body, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.prod.Publish(invalidate.HTTPTopic("flashsync", "g0"), body); err != nil {
		t.Fatal(err)
	}
}

// waitOK waits until every instance handled n messages successfully.
func (f *httpPurgeFixture) waitOK(t *testing.T, n float64) {
	t.Helper()
	for _, a := range f.addrs {
		stacktest.Eventually(t, 10*time.Second, func() error {
			if got := stacktest.MetricValue(t, f.reg, "flashsync_purger_http_messages_total", map[string]string{"instance": a, "result": "ok"}); got != n {
				return fmt.Errorf("%s: %v messages ok, want %v", a, got, n)
			}
			return nil
		})
	}
}

func TestHTTPPurgerPurgesURLsAndTagsOnEveryInstance(t *testing.T) {
	f := startHTTPPurge(t, 2, flashsyncVCL, 5)
	warm(t, f.addrs, "/item/1.html", "/item/2.html", "/list.html")

	f.publish(t, invalidate.Purge{URLs: []string{"/item/1.html"}})
	f.waitOK(t, 1)
	expectHit(t, f.addrs, false, "/item/1.html")
	expectHit(t, f.addrs, true, "/item/2.html", "/list.html")

	// The tag reaches the detail page and the list, which shows the item.
	f.publish(t, invalidate.Purge{Tags: []string{"item-2"}})
	f.waitOK(t, 2)
	expectHit(t, f.addrs, false, "/item/2.html", "/list.html")
	expectHit(t, f.addrs, true, "/item/1.html")

	if got := stacktest.MetricValue(t, f.reg, "flashsync_purger_http_tags_purged_total", nil); got != 2 {
		t.Errorf("tags_purged_total = %v, want 2", got)
	}
	if err := f.purger.Health(); err != nil {
		t.Errorf("health: %v", err)
	}
}

func TestHTTPPurgerHoldsWhileInstanceDownAndDrainsAfterRestart(t *testing.T) {
	f := startHTTPPurge(t, 2, flashsyncVCL, 2)
	down := f.addrs[1]
	f.varnish[1].Stop()
	for i := 0; i < 3; i++ {
		f.publish(t, invalidate.Purge{URLs: []string{fmt.Sprintf("/item/%d.html", i)}})
	}
	stacktest.Eventually(t, 10*time.Second, func() error {
		if got := stacktest.MetricValue(t, f.reg, "flashsync_purger_http_messages_total", map[string]string{"instance": f.addrs[0], "result": "ok"}); got != 3 {
			return fmt.Errorf("up instance: %v ok, want 3", got)
		}
		if got := stacktest.MetricValue(t, f.reg, "flashsync_purger_http_messages_total", map[string]string{"instance": down, "result": "unreachable"}); got < 3 {
			return fmt.Errorf("down instance: %v unreachable results, want several", got)
		}
		if f.purger.Health() == nil {
			return fmt.Errorf("health reports no unreachable instance")
		}
		return nil
	})
	// Longer than MaxAttempts (2) worth of requeues: nothing may be lost.
	time.Sleep(time.Second)
	if got := stacktest.MetricValue(t, f.reg, "flashsync_purger_http_dead_letters_total", nil); got != 0 {
		t.Fatalf("dead_letters_total = %v while the instance was down, want 0", got)
	}
	if got := stacktest.MetricValue(t, f.reg, "flashsync_purger_http_instance_up", map[string]string{"instance": down}); got != 0 {
		t.Errorf("instance_up{%s} = %v, want 0", down, got)
	}
	f.varnish[1].Start()
	f.waitOK(t, 3)
	stacktest.Eventually(t, 5*time.Second, f.purger.Health)
	if got := stacktest.MetricValue(t, f.reg, "flashsync_purger_http_dead_letters_total", nil); got != 0 {
		t.Errorf("dead_letters_total = %v, want 0", got)
	}
}

func TestHTTPPurgerDeadLettersWhatVarnishRefuses(t *testing.T) {
	const maxAttempts = 3
	f := startHTTPPurge(t, 1, refusingVCL(t), maxAttempts)

	got := stacktest.ConsumeJSON[map[string]any](t, f.nsqd.TCPAddr(), invalidate.DeadLetterTopic("flashsync"))

	f.publish(t, invalidate.Purge{URLs: []string{"/item/1.html"}, Tags: []string{"item-1"}})
	select {
	case d := <-got:
		if d["attempts"] != float64(maxAttempts) || d["instance"] != f.addrs[0] || !strings.Contains(fmt.Sprint(d["error"]), "405") {
			t.Fatalf("dead letter %v, want %d attempts on %s with a 405 error", d, maxAttempts, f.addrs[0])
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no dead letter within 30s")
	}
	stacktest.Eventually(t, 2*time.Second, func() error {
		if n := stacktest.MetricValue(t, f.reg, "flashsync_purger_http_dead_letters_total", nil); n != 1 {
			return fmt.Errorf("dead_letters_total = %v, want 1", n)
		}
		if n := stacktest.MetricValue(t, f.reg, "flashsync_purger_http_requests_total", map[string]string{"code": "405"}); n < maxAttempts {
			return fmt.Errorf("requests_total{code=405} = %v, want at least %d", n, maxAttempts)
		}
		return nil
	})
}

// TestHTTPPurgerRequests checks the requests themselves against a fake
// instance: Host headers, xkey batching and soft purges.
func TestHTTPPurgerRequests(t *testing.T) {
	type req struct{ method, host, path, xkey, soft string }
	reqs := make(chan req, 100)
	inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs <- req{r.Method, r.Host, r.URL.RequestURI(), r.Header.Get("xkey-purge"), r.Header.Get("xkey-softpurge")}
	}))
	defer inst.Close()
	addr := strings.TrimPrefix(inst.URL, "http://")
	nsqd := stacktest.StartNSQD(t)
	for _, soft := range []bool{false, true} {
		t.Run(fmt.Sprintf("soft=%v", soft), func(t *testing.T) {
			prefix := fmt.Sprintf("t%v", soft)
			p, err := purge.NewHTTPPurger(purge.HTTPPurgerOptions{
				ConsumerOptions: purge.ConsumerOptions{NSQDTCP: []string{nsqd.TCPAddr()}, TopicPrefix: prefix}, Groups: []purge.HTTPGroup{{Name: "g", Instances: []string{addr}}}, Host: "shop.example", SoftPurge: soft,
			})
			if err != nil {
				t.Fatal(err)
			}
			stacktest.RunAndClose(t, "http purger", p)
			prod, _ := nsq.NewProducer(nsqd.TCPAddr(), nsq.NewConfig())
			defer prod.Stop()
			tags := make([]string, 0, 1000)
			for i := range 1000 {
				tags = append(tags, fmt.Sprintf("item-%d", i))
			}
			body, _ := (&invalidate.Purge{V: 1, Group: "g", URLs: []string{"/a.html?x=1", "https://www.example.org/b.html"}, Tags: tags}).Marshal()
			if err := prod.Publish(invalidate.HTTPTopic(prefix, "g"), body); err != nil {
				t.Fatal(err)
			}
			next := func() req {
				select {
				case r := <-reqs:
					return r
				case <-time.After(10 * time.Second):
					t.Fatal("no request")
				}
				return req{}
			}
			// The requests of one message go out concurrently: sort them
			// into URL and tag requests.
			var urlReqs []req
			var got []string
			for len(urlReqs) < 2 || len(got) < len(tags) {
				r := next()
				if r.xkey == "" && r.soft == "" {
					urlReqs = append(urlReqs, r)
					continue
				}
				v := r.xkey
				if soft {
					v = r.soft
				}
				if r.method != "PURGE" || r.path != "/" || r.host != "shop.example" || len(v) > 4000 || (soft && r.xkey != "") || (!soft && r.soft != "") {
					t.Fatalf("tag request %+v", r)
				}
				got = append(got, strings.Fields(v)...)
			}
			slices.SortFunc(urlReqs, func(a, b req) int { return strings.Compare(a.path, b.path) })
			if want := []req{{"PURGE", "shop.example", "/a.html?x=1", "", ""}, {"PURGE", "www.example.org", "/b.html", "", ""}}; !slices.Equal(urlReqs, want) {
				t.Errorf("URL requests %+v, want %+v", urlReqs, want)
			}
			slices.SortFunc(got, func(a, b string) int {
				x, _ := strconv.Atoi(strings.TrimPrefix(a, "item-"))
				y, _ := strconv.Atoi(strings.TrimPrefix(b, "item-"))
				return x - y
			})
			if strings.Join(got, " ") != strings.Join(tags, " ") {
				t.Errorf("tags sent differ from the message's")
			}
		})
	}
}

// TestHTTPPurgerHoldsOn5xx: an instance answering 503 (a failing cache, not
// a refused purge) holds its messages without burning attempts: with
// max_attempts 2 and ten 503s, nothing is dead-lettered and the purge lands
// once the instance answers 200.
func TestHTTPPurgerHoldsOn5xx(t *testing.T) {
	var calls, ok atomic.Int32
	inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 10 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		ok.Add(1)
	}))
	t.Cleanup(inst.Close) // cleanups run last first: the purger stops before
	addr := strings.TrimPrefix(inst.URL, "http://")
	nsqd := stacktest.StartNSQD(t)
	reg := prometheus.NewRegistry()
	p, err := purge.NewHTTPPurger(purge.HTTPPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: []string{nsqd.TCPAddr()}, TopicPrefix: "t5xx", MaxAttempts: 2}, Groups: []purge.HTTPGroup{{Name: "g", Instances: []string{addr}}}, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "http purger", p)
	prod, _ := nsq.NewProducer(nsqd.TCPAddr(), nsq.NewConfig())
	defer prod.Stop()
	body, _ := (&invalidate.Purge{V: 1, Group: "g", URLs: []string{"/a.html"}}).Marshal()
	if err := prod.Publish(invalidate.HTTPTopic("t5xx", "g"), body); err != nil {
		t.Fatal(err)
	}
	stacktest.Eventually(t, 20*time.Second, func() error {
		if ok.Load() == 0 {
			return fmt.Errorf("%d answers so far, none 200", calls.Load())
		}
		return nil
	})
	if d := stacktest.MetricValue(t, reg, "flashsync_purger_http_dead_letters_total", nil); d != 0 {
		t.Errorf("dead letters %v, want 0: a 5xx is not a bad message", d)
	}
	if u := stacktest.MetricValue(t, reg, "flashsync_purger_http_messages_total", map[string]string{"result": "unreachable"}); u < 10 {
		t.Errorf("unreachable results %v, want the ten 503s", u)
	}
	stacktest.Eventually(t, 5*time.Second, p.Health)
}
