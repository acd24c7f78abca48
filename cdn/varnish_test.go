package cdn_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashsync/flashsync/cdn"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// The console purges a real Varnish (configs/varnish/flashsync.vcl): a URL
// by PURGE <path>, tags by xkey-purge.
func TestConsolePurgesVarnish(t *testing.T) {
	var mu sync.Mutex
	hits := map[string]int{}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		n := hits[r.URL.Path]
		mu.Unlock()
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("xkey", "page-"+strings.Trim(r.URL.Path, "/"))
		fmt.Fprintf(w, "%s v%d", r.URL.Path, n)
	}))
	defer backend.Close()
	v := stacktest.StartVarnish(t, "../configs/varnish/flashsync.vcl", strings.TrimPrefix(backend.URL, "http://"))
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get("http://" + v.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	for _, p := range []string{"/a", "/b"} {
		get(p)
		if got := get(p); got != p+" v1" {
			t.Fatalf("GET %s via varnish: %q, want the cached %q", p, got, p+" v1")
		}
	}
	c := newConsole(t, cdn.ConsoleOptions{Machines: []string{v.Addr()}})
	for i, body := range []string{`{"job":"u","urls":["/a"]}`, `{"job":"t","tags":["page-b"]}`} {
		rec := httptest.NewRecorder()
		c.Handler().ServeHTTP(rec, signed(testKey, time.Now().Unix(), fmt.Sprintf("%032x", i), []byte(body)))
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s\n%s", body, rec.Code, rec.Body, v.Log())
		}
	}
	for _, p := range []string{"/a", "/b"} {
		if got := get(p); got != p+" v2" {
			t.Errorf("GET %s after the purge: %q, want a fresh %q", p, got, p+" v2")
		}
	}
}
