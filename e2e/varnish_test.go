//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// varnishPage is one GET through a Varnish: whether it was a hit (two ids in
// X-Varnish) and when the demo backend generated the page.
type varnishPage struct {
	hit bool
	gen string
}

// varnishGet GETs path through the Varnish at addr: a page of the demo
// backend, answered 200.
func varnishGet(t *testing.T, addr, path string) varnishPage {
	t.Helper()
	p, err := cacheGet(addr, path)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// cacheGet is varnishGet returning its error (safe off the test goroutine).
func cacheGet(addr, path string) (varnishPage, error) {
	resp, err := httpClient.Get("http://" + addr + path)
	if err != nil {
		return varnishPage{}, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return varnishPage{}, fmt.Errorf("GET %s%s: %s", addr, path, resp.Status)
	}
	gen := resp.Header.Get("X-Generated-At")
	if gen == "" {
		return varnishPage{}, fmt.Errorf("GET %s%s: no X-Generated-At", addr, path)
	}
	return varnishPage{hit: len(strings.Fields(resp.Header.Get("X-Varnish"))) == 2, gen: gen}, nil
}

// TestVarnishPurgedOnUpdateAndTag runs the real binary as canal +
// http-purger and as demo backend, behind two private Varnish instances of
// one HTTP group: an UPDATE of an item makes the next request for its page a
// miss on every instance, and a tag purge (from a rule with tags only)
// removes the item's detail page and the list page, sparing other pages.
func TestVarnishPurgedOnUpdateAndTag(t *testing.T) {
	db, conn := itemDatabase(t, 3)
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".restock (id BIGINT AUTO_INCREMENT PRIMARY KEY, item_id BIGINT NOT NULL)")
	backendAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	vcl := flashsyncVCL(t)
	v1 := stacktest.StartVarnish(t, vcl, backendAddr)
	v2 := stacktest.StartVarnish(t, vcl, backendAddr)
	addrs := []string{v1.Addr(), v2.Addr()}
	nsqd := stacktest.StartNSQD(t)

	httpAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	position := filepath.Join(t.TempDir(), "position")
	cfg := preludeTOML(stacktest.MySQLAddr(), newServerID(), position, db, nsqd.TCPAddr(), nsqd.HTTPAddr(), httpAddr) + fmt.Sprintf(`[[http_group]]
name = "varnish"
instances = [%q, %q]

[[rule]]
table = %q
urls = ["/item/{id}.html"]
route_by = "id"

[[rule]]
table = %q
tags = ["item-{item_id}"]
route_by = "item_id"
`, addrs[0], addrs[1], db+".item", db+".restock")
	cfgPath := writeFile(t, "flashsync.toml", cfg)

	backend := startDemoBackend(t, "-config", cfgPath, "-addr", backendAddr, "-table", db+".item")
	fs := startFlashsync(t, "flashsync", "all", "-config", cfgPath)
	stacktest.Eventually(t, 20*time.Second, func() error {
		for _, p := range []*process{backend, fs} {
			if p.exited() {
				t.Fatalf("%s exited (%v); stderr:\n%s", p.name, p.err, p.stderr.String())
			}
		}
		resp, err := httpClient.Get("http://" + backendAddr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if err := httpOK("http://" + httpAddr + "/healthz"); err != nil {
			return err
		}
		_, err = os.Stat(position)
		return err
	})

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("varnish %s:\n%s\nvarnish %s:\n%s", v1.Addr(), v1.Log(), v2.Addr(), v2.Log())
		}
	})
	pages := []string{"/item/1.html", "/item/2.html", "/item/3.html", "/list.html"}
	warmed := map[string]string{} // addr+path -> generation
	for _, a := range addrs {
		for _, p := range pages {
			first := varnishGet(t, a, p)
			if second := varnishGet(t, a, p); !second.hit || second.gen != first.gen {
				t.Fatalf("%s%s: second GET not a hit (%+v after %+v)", a, p, second, first)
			}
			warmed[a+p] = first.gen
		}
	}
	// expectMiss waits for the next request of path on every instance to be
	// a miss, i.e. a page generated after the warm-up.
	expectMiss := func(path string) {
		t.Helper()
		for _, a := range addrs {
			stacktest.Eventually(t, 10*time.Second, func() error {
				pg := varnishGet(t, a, path)
				if pg.gen == warmed[a+path] {
					return fmt.Errorf("%s%s still served from cache (generated %s)", a, path, pg.gen)
				}
				if pg.hit {
					return fmt.Errorf("%s%s: new page but X-Varnish says hit", a, path)
				}
				warmed[a+path] = pg.gen
				return nil
			})
		}
	}
	expectHit := func(path string) {
		t.Helper()
		for _, a := range addrs {
			if pg := varnishGet(t, a, path); !pg.hit || pg.gen != warmed[a+path] {
				t.Errorf("%s%s was purged (%+v), want the cached page", a, path, pg)
			}
		}
	}

	start := time.Now()
	stacktest.Exec(t, conn, "UPDATE "+db+".item SET price = 19.99 WHERE id = 1")
	expectMiss("/item/1.html")
	t.Logf("UPDATE to miss on both instances: %v", time.Since(start))
	expectHit("/item/2.html")

	start = time.Now()
	stacktest.Exec(t, conn, "INSERT INTO "+db+".restock (item_id) VALUES (2)")
	expectMiss("/item/2.html")
	expectMiss("/list.html")
	t.Logf("tag purge to miss on both instances: %v", time.Since(start))
	expectHit("/item/3.html")
}
