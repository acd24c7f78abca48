package cdn_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/cdn"
)

// machine is a real HTTP cache stand-in that records PURGE requests.
type machine struct {
	srv    *httptest.Server
	mu     sync.Mutex
	purged []string // "PURGE <target>" or "XKEY <tags>"
	status int      // answer; 0 means 200
	delay  time.Duration
}

func startMachine(t testing.TB) *machine {
	t.Helper()
	m := &machine{}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "PURGE" {
			http.Error(w, "method", http.StatusMethodNotAllowed)
			return
		}
		m.mu.Lock()
		if x := r.Header.Get("xkey-purge"); x != "" {
			m.purged = append(m.purged, "XKEY "+x)
		} else {
			m.purged = append(m.purged, "PURGE "+r.Host+r.RequestURI)
		}
		status, delay := m.status, m.delay
		m.mu.Unlock()
		time.Sleep(delay)
		if status == 0 {
			status = http.StatusOK
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *machine) addr() string { return strings.TrimPrefix(m.srv.URL, "http://") }

func (m *machine) got() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.purged...)
}

var testKey = []byte("0123456789abcdef-console-key")

func newConsole(t testing.TB, opts cdn.ConsoleOptions) *cdn.Console {
	t.Helper()
	if opts.Key == nil {
		opts.Key = testKey
	}
	c, err := cdn.NewConsole(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// signed builds a signed POST /v1/purge request.
func signed(key []byte, ts int64, nonce string, body []byte) *http.Request {
	req := httptest.NewRequest(http.MethodPost, cdn.PurgePath, bytes.NewReader(body))
	req.Header.Set(cdn.HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(cdn.HeaderNonce, nonce)
	req.Header.Set(cdn.HeaderSignature, cdn.Sign(key, ts, nonce, body))
	return req
}

func serve(h http.Handler, req *http.Request) (int, map[string]any) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

func TestConsoleFansOutToEveryMachine(t *testing.T) {
	m1, m2 := startMachine(t), startMachine(t)
	c := newConsole(t, cdn.ConsoleOptions{Machines: []string{m1.addr(), m2.addr()}, Concurrency: 2})
	body := []byte(`{"job":"j1","urls":["/item/1.html","http://shop.example/item/2.html?x=1"],"tags":["item-1","shop-2"]}`)
	rec := httptest.NewRecorder()
	c.Handler().ServeHTTP(rec, signed(testKey, time.Now().Unix(), "00112233445566778899aabbccddeeff", body))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var resp cdn.Response
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Job != "j1" || len(resp.Machines) != 2 {
		t.Fatalf("response %+v", resp)
	}
	for i, m := range []*machine{m1, m2} {
		r := resp.Machines[i]
		if r.Machine != m.addr() || !r.OK || r.Status != 200 || r.Error != "" || r.LatencyMS <= 0 {
			t.Errorf("machine result %+v", r)
		}
		got := strings.Join(sorted(m.got()), "|")
		want := strings.Join(sorted([]string{"PURGE " + m.addr() + "/item/1.html", "PURGE shop.example/item/2.html?x=1", "XKEY item-1 shop-2"}), "|")
		if got != want {
			t.Errorf("machine %d got %s, want %s", i, got, want)
		}
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestConsoleAnswers502WhenAMachineFails(t *testing.T) {
	ok, failing := startMachine(t), startMachine(t)
	failing.status = http.StatusInternalServerError
	slow := startMachine(t)
	slow.delay = 600 * time.Millisecond
	dead := startMachine(t)
	dead.srv.Close()
	c := newConsole(t, cdn.ConsoleOptions{Machines: []string{ok.addr(), failing.addr(), slow.addr(), dead.addr()}, HostTimeout: 200 * time.Millisecond})
	start := time.Now()
	rec := httptest.NewRecorder()
	c.Handler().ServeHTTP(rec, signed(testKey, time.Now().Unix(), "00112233445566778899aabbccddeef0", []byte(`{"job":"j","urls":["/a"]}`)))
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v; host_timeout is 200ms", d)
	}
	if rec.Code != http.StatusBadGateway {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var resp cdn.Response
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	wantOK := []bool{true, false, false, false}
	for i, r := range resp.Machines {
		if r.OK != wantOK[i] || (r.OK != (r.Error == "")) {
			t.Errorf("machine %d result %+v, want ok=%v", i, r, wantOK[i])
		}
	}
	if resp.Machines[1].Status != 500 {
		t.Errorf("failing machine status %d, want 500", resp.Machines[1].Status)
	}
}

func TestConsoleRejections(t *testing.T) {
	m := startMachine(t)
	now := time.Now()
	c := newConsole(t, cdn.ConsoleOptions{Machines: []string{m.addr()}, MaxBodyBytes: 2048, MaxSkew: 30 * time.Second})
	h := c.Handler()
	good := []byte(`{"job":"j","urls":["/a"]}`)
	nonce := func(i int) string { return fmt.Sprintf("%032x", i) }

	// Replay: the same signed request twice.
	if code, out := serve(h, signed(testKey, now.Unix(), nonce(1), good)); code != 200 {
		t.Fatalf("first request: %d %v", code, out)
	}
	if code, out := serve(h, signed(testKey, now.Unix(), nonce(1), good)); code != http.StatusConflict || out["error"] == "" {
		t.Errorf("replayed nonce: %d %v, want 409 with an error", code, out)
	}

	wrongKey := signed([]byte("another key, sixteen+"), now.Unix(), nonce(2), good)
	tampered := signed(testKey, now.Unix(), nonce(3), good)
	tampered.Body = io.NopCloser(strings.NewReader(`{"job":"j","urls":["/b"]}`))
	missing := signed(testKey, now.Unix(), nonce(4), good)
	missing.Header.Del(cdn.HeaderSignature)
	shortNonce := signed(testKey, now.Unix(), "abcdef", good)
	nonHexNonce := signed(testKey, now.Unix(), strings.Repeat("z", 32), good)
	big := []byte(`{"job":"j","urls":["/` + strings.Repeat("a", 4096) + `"]}`)
	bigChunked := signed(testKey, now.Unix(), nonce(9), big)
	bigChunked.ContentLength = -1 // no length known: MaxBytesReader must stop it
	for _, tc := range []struct {
		name string
		req  *http.Request
		want int
	}{
		{"bad signature (wrong key)", wrongKey, 401},
		{"bad signature (tampered body)", tampered, 401},
		{"missing signature", missing, 401},
		{"short nonce", shortNonce, 401},
		{"non-hex nonce", nonHexNonce, 401},
		// Well past max_skew (30 s): the header has whole seconds, so ±31 s
		// could land inside the window at a second boundary.
		{"stale timestamp", signed(testKey, now.Add(-40*time.Second).Unix(), nonce(5), good), 401},
		{"future timestamp", signed(testKey, now.Add(40*time.Second).Unix(), nonce(6), good), 401},
		{"oversize body", signed(testKey, now.Unix(), nonce(7), big), 413},
		{"oversize body without length", bigChunked, 413},
		{"malformed JSON", signed(testKey, now.Unix(), nonce(10), []byte(`{"job":`)), 400},
		{"unknown field", signed(testKey, now.Unix(), nonce(11), []byte(`{"job":"j","keys":["k"]}`)), 400},
		{"no targets", signed(testKey, now.Unix(), nonce(12), []byte(`{"job":"j","urls":[],"tags":[]}`)), 400},
		{"empty url", signed(testKey, now.Unix(), nonce(13), []byte(`{"urls":[""]}`)), 400},
		{"url with newline", signed(testKey, now.Unix(), nonce(14), []byte(`{"urls":["/a\r\nX-Evil: 1"]}`)), 400},
		{"tag with space", signed(testKey, now.Unix(), nonce(15), []byte(`{"tags":["a b"]}`)), 400},
		{"not a path", signed(testKey, now.Unix(), nonce(16), []byte(`{"urls":["ftp://x/a"]}`)), 400},
	} {
		code, out := serve(h, tc.req)
		if code != tc.want {
			t.Errorf("%s: status %d %v, want %d", tc.name, code, out, tc.want)
		}
		if msg, _ := out["error"].(string); msg == "" {
			t.Errorf("%s: no JSON error in the answer: %v", tc.name, out)
		}
	}
	if got := m.got(); len(got) != 1 {
		t.Errorf("machine purged %v; only the first request should have reached it", got)
	}
	req := httptest.NewRequest(http.MethodGet, cdn.PurgePath, nil)
	if code, _ := serve(h, req); code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", code)
	}
	// The health endpoint needs no signature and purges nothing.
	if code, out := serve(h, httptest.NewRequest(http.MethodGet, cdn.HealthPath, nil)); code != http.StatusOK || out["ok"] != true || out["machines"] != 1.0 {
		t.Errorf("GET %s: %d %v, want 200 ok with 1 machine", cdn.HealthPath, code, out)
	}
	if got := m.got(); len(got) != 1 {
		t.Errorf("the health check purged: %v", got)
	}
}

func TestConsoleReplayCacheRefusesWhenFull(t *testing.T) {
	m := startMachine(t)
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	c := newConsole(t, cdn.ConsoleOptions{Machines: []string{m.addr()}, MaxNonces: 2, MaxSkew: 10 * time.Second, Now: clock})
	h := c.Handler()
	body := []byte(`{"urls":["/a"]}`)
	for i := 0; i < 2; i++ {
		if code, out := serve(h, signed(testKey, now.Unix(), fmt.Sprintf("%032x", i), body)); code != 200 {
			t.Fatalf("request %d: %d %v", i, code, out)
		}
	}
	if code, _ := serve(h, signed(testKey, now.Unix(), fmt.Sprintf("%032x", 2), body)); code != http.StatusServiceUnavailable {
		t.Fatalf("full cache: %d, want 503", code)
	}
	// The nonces expire after 2×max_skew; their replay is then refused by the
	// timestamp check, and the cache has room again.
	now = now.Add(21 * time.Second)
	if code, _ := serve(h, signed(testKey, now.Unix(), fmt.Sprintf("%032x", 3), body)); code != 200 {
		t.Fatalf("after expiry: %d, want 200", code)
	}
	if code, _ := serve(h, signed(testKey, now.Add(-21*time.Second).Unix(), fmt.Sprintf("%032x", 0), body)); code != 401 {
		t.Fatalf("replay after expiry: %d, want 401 (stale)", code)
	}
}

// FuzzConsoleRequest feeds arbitrary headers and bodies to the console: it
// must never panic, and nothing without a valid signature is accepted.
func FuzzConsoleRequest(f *testing.F) {
	now := time.Now().Unix()
	f.Add(strconv.FormatInt(now, 10), "00112233445566778899aabbccddeeff", "", []byte(`{"job":"j","urls":["/a"]}`), true)
	f.Add(strconv.FormatInt(now, 10), "00112233445566778899aabbccddeeff", "deadbeef", []byte(`{"urls":["/a"]}`), false)
	f.Add("-1", "zz", "", []byte(`{`), true)
	f.Add("99999999999999999999", "0011223344556677", "", []byte(`{"tags":["x"]}`), true)
	f.Add(strconv.FormatInt(now, 10), "0011223344556677", "", []byte(`{"urls":["http://[::1"]}`), true)
	f.Add(strconv.FormatInt(now, 10), "0011223344556677", "", []byte(`{"urls":["/a"],"tags":["t"]}x`), true)
	m := startMachine(f)
	f.Fuzz(func(t *testing.T, ts, nonce, sig string, body []byte, sign bool) {
		c := newConsole(t, cdn.ConsoleOptions{Machines: []string{m.addr()}, HostTimeout: time.Second, MaxBodyBytes: 4096})
		req := httptest.NewRequest(http.MethodPost, cdn.PurgePath, bytes.NewReader(body))
		req.Header.Set(cdn.HeaderTimestamp, ts)
		req.Header.Set(cdn.HeaderNonce, nonce)
		if sign {
			if n, err := strconv.ParseInt(ts, 10, 64); err == nil {
				sig = cdn.Sign(testKey, n, nonce, body)
			}
		}
		req.Header.Set(cdn.HeaderSignature, sig)
		rec := httptest.NewRecorder()
		c.Handler().ServeHTTP(rec, req)
		accepted := rec.Code == 200 || rec.Code == 502
		if !accepted {
			var out map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out["error"] == "" {
				t.Fatalf("status %d without a JSON error: %q", rec.Code, rec.Body)
			}
			return
		}
		n, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || sig != cdn.Sign(testKey, n, nonce, body) {
			t.Fatalf("accepted a request without a valid signature: ts=%q nonce=%q sig=%q", ts, nonce, sig)
		}
		if _, err := cdn.DecodeRequest(body); err != nil {
			t.Fatalf("accepted a body DecodeRequest refuses: %v", err)
		}
	})
}

// Every answer is counted by its status, refusals included, and a refusal is
// a JSON {"error"} with nothing else; a GET names the method to use.
func TestConsoleCountsAnswersByStatus(t *testing.T) {
	m := startMachine(t)
	reg := prometheus.NewRegistry()
	c := newConsole(t, cdn.ConsoleOptions{Machines: []string{m.addr()}, Registerer: reg})
	h := c.Handler()
	now := time.Now().Unix()
	good := []byte(`{"job":"j","urls":["/a"]}`)
	serve(h, signed(testKey, now, fmt.Sprintf("%032x", 1), good))
	serve(h, signed(testKey, now, fmt.Sprintf("%032x", 1), good))
	serve(h, signed([]byte("another key, sixteen+"), now, fmt.Sprintf("%032x", 2), good))

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, cdn.PurgePath, nil))
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || len(out) != 1 || out["error"] == "" {
		t.Errorf("GET answer %q, want only an \"error\" field", rec.Body)
	}
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != http.MethodPost || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("GET: %d, Allow %q, Content-Type %q; want 405, POST, application/json", rec.Code, rec.Header().Get("Allow"), rec.Header().Get("Content-Type"))
	}

	want := map[string]float64{"200": 1, "409": 1, "401": 1, "405": 1}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "flashsync_console_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("requests by code %v, want %v", got, want)
	}
}
