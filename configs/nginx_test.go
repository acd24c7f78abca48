package configs_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/route"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// nginxBlock is a top-level block of an nginx configuration file: its header
// ("upstream items") and the text between its braces.
type nginxBlock struct {
	header string
	body   string
}

// nginxBlocks splits an nginx configuration into its top-level blocks,
// ignoring braces in comments and quoted strings. Comments outside blocks
// are dropped; top-level simple directives are not expected.
func nginxBlocks(t *testing.T, conf string) []nginxBlock {
	t.Helper()
	var (
		blocks []nginxBlock
		depth  int
		start  int // start of the current header or body
		header string
		quote  byte
	)
	for i := 0; i < len(conf); i++ {
		c := conf[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
			continue
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			if depth == 0 && strings.TrimSpace(conf[start:i]) == "" {
				for i < len(conf) && conf[i] != '\n' {
					i++
				}
				start = i
				continue
			}
			for i < len(conf) && conf[i] != '\n' {
				i++
			}
		case c == '{':
			if depth == 0 {
				header = strings.Join(strings.Fields(conf[start:i]), " ")
				start = i + 1
			}
			depth++
		case c == '}':
			depth--
			if depth < 0 {
				t.Fatalf("unbalanced } at offset %d", i)
			}
			if depth == 0 {
				blocks = append(blocks, nginxBlock{header: header, body: conf[start:i]})
				start = i + 1
			}
		case c == ';' && depth == 0:
			t.Fatalf("unexpected top-level directive %q", strings.TrimSpace(conf[start:i+1]))
		}
	}
	if depth != 0 || quote != 0 {
		t.Fatal("unterminated block or string")
	}
	return blocks
}

var (
	serverLineRE = regexp.MustCompile(`(?m)^[ \t]*server[ \t]+([^;\s]+)[^;]*;[^\n]*\n?`)
	listenRE     = regexp.MustCompile(`(?m)^([ \t]*listen[ \t]+)([^;\s]+)`)
	proxyPassRE  = regexp.MustCompile(`proxy_pass[ \t]+http://([A-Za-z0-9_.:-]+)`)
)

// withServers replaces an upstream body's server lines by one line per address.
func withServers(body string, addrs []string) string {
	body = serverLineRE.ReplaceAllString(body, "")
	var b strings.Builder
	b.WriteString(strings.TrimRight(body, " \t\n"))
	b.WriteString("\n")
	for _, a := range addrs {
		fmt.Fprintf(&b, "    server %s;\n", a)
	}
	return b.String()
}

func proxyPass(t *testing.T, body string) string {
	t.Helper()
	m := proxyPassRE.FindAllStringSubmatch(body, -1)
	if len(m) != 1 {
		t.Fatalf("want one proxy_pass in %q, got %d", body, len(m))
	}
	return m[0][1]
}

// hashGroupsConf reads configs/nginx/hash-groups.conf, checks the rules its
// comment states, and returns it adapted to a test with len(backends)
// groups: group i's upstream lists backends[i] (the shipped group upstream
// and entry server are the templates for any number of groups), the entry
// servers and the public server listen on free loopback ports, and the
// `items` upstream lists the entry servers in group order. It returns the
// configuration and the public server's address.
func hashGroupsConf(t *testing.T, backends []string) (string, string) {
	t.Helper()
	raw, err := os.ReadFile("nginx/hash-groups.conf")
	if err != nil {
		t.Fatal(err)
	}
	var (
		maps, groups, entries []nginxBlock
		items, public         *nginxBlock
		groupIndex            = map[string]int{} // upstream name -> group
	)
	blocks := nginxBlocks(t, string(raw))
	for i := range blocks {
		b := &blocks[i]
		switch f := strings.Fields(b.header); {
		case f[0] == "map":
			maps = append(maps, *b)
		case f[0] == "upstream" && strings.Contains(b.body, "hash "):
			if items != nil {
				t.Fatal("two hash upstreams")
			}
			items = b
		case f[0] == "upstream":
			groupIndex[f[1]] = len(groups)
			groups = append(groups, *b)
		case f[0] == "server":
			if _, ok := groupIndex[proxyPass(t, b.body)]; ok {
				entries = append(entries, *b)
			} else {
				if public != nil {
					t.Fatal("two public servers")
				}
				public = b
			}
		default:
			t.Fatalf("unexpected block %q", b.header)
		}
	}
	if len(maps) == 0 || items == nil || public == nil || len(groups) == 0 || len(entries) != len(groups) {
		t.Fatalf("hash-groups.conf: want map, group upstreams with one entry server each, a hash upstream and a public server; got %d maps, %d groups, %d entries, items %v, public %v",
			len(maps), len(groups), len(entries), items != nil, public != nil)
	}

	// The rules the file's comment states, on the shipped text.
	itemsName := strings.Fields(items.header)[1]
	if proxyPass(t, public.body) != itemsName {
		t.Fatalf("public server proxies to %q, not the hash upstream %q", proxyPass(t, public.body), itemsName)
	}
	if !regexp.MustCompile(`(?m)^\s*proxy_next_upstream\s+off;`).MatchString(public.body) {
		t.Error("public server lacks `proxy_next_upstream off;`")
	}
	if !regexp.MustCompile(`(?m)^\s*hash\s+\$item_id;`).MatchString(items.body) {
		t.Errorf("upstream %s: want `hash $item_id;` (not consistent), got %q", itemsName, items.body)
	}
	entryAddr := map[string]int{} // entry server listen address -> group
	for _, e := range entries {
		m := listenRE.FindAllStringSubmatch(e.body, -1)
		if len(m) != 1 {
			t.Fatalf("entry server %q: want one listen", e.body)
		}
		entryAddr[m[0][2]] = groupIndex[proxyPass(t, e.body)]
	}
	shipped := serverLineRE.FindAllStringSubmatch(items.body, -1)
	if len(shipped) != len(groups) {
		t.Fatalf("upstream %s lists %d servers for %d groups", itemsName, len(shipped), len(groups))
	}
	for i, m := range shipped {
		line := strings.TrimSpace(m[0])
		if g, ok := entryAddr[m[1]]; !ok || g != i {
			t.Errorf("upstream %s server %d (%s) is not group %d's entry server", itemsName, i, line, i)
		}
		if strings.Contains(strings.SplitN(line, "#", 2)[0], "weight") {
			t.Errorf("upstream %s: %s has a weight", itemsName, line)
		}
	}

	// Adapt it: N groups from the first group's templates, test addresses.
	var b strings.Builder
	for _, m := range maps {
		fmt.Fprintf(&b, "%s {%s}\n\n", m.header, m.body)
	}
	groupTmpl, entryTmpl := groups[0], entries[0]
	// Their comments name the shipped group: drop them from the copies.
	comment := regexp.MustCompile(`[ \t]*#[^\n]*`)
	groupTmpl.body = comment.ReplaceAllString(groupTmpl.body, "")
	entryTmpl.body = comment.ReplaceAllString(entryTmpl.body, "")
	groupName := strings.Fields(groupTmpl.header)[1]
	entryAddrs := make([]string, len(backends))
	for i, backend := range backends {
		name := fmt.Sprintf("group_test_%d", i)
		fmt.Fprintf(&b, "upstream %s {%s}\n\n", name, withServers(groupTmpl.body, []string{backend}))
		entryAddrs[i] = "127.0.0.1:" + strconv.Itoa(stacktest.FreePort(t))
		body := listenRE.ReplaceAllString(entryTmpl.body, "${1}"+entryAddrs[i])
		body = strings.Replace(body, "http://"+groupName, "http://"+name, 1)
		fmt.Fprintf(&b, "%s {%s}\n\n", entryTmpl.header, body)
	}
	fmt.Fprintf(&b, "%s {%s}\n\n", items.header, withServers(items.body, entryAddrs))
	addr := "127.0.0.1:" + strconv.Itoa(stacktest.FreePort(t))
	fmt.Fprintf(&b, "%s {%s}\n", public.header, listenRE.ReplaceAllString(public.body, "${1}"+addr))
	return b.String(), addr
}

// TestNginxHashGroupsRouting proves that nginx, configured with
// configs/nginx/hash-groups.conf, reads an item from the group flashsync
// purges (route.GroupFor), by /item/{id}.html and by ?id=.
func TestNginxHashGroupsRouting(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("groups=%d", n), func(t *testing.T) {
			testNginxRouting(t, n)
		})
	}
}

func testNginxRouting(t *testing.T, n int) {
	names := make([]string, n)
	backends := make([]string, n)
	for i := range names {
		name := fmt.Sprintf("group-%d", i)
		names[i] = name
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Path", r.URL.RequestURI())
			io.WriteString(w, name)
		}))
		t.Cleanup(srv.Close)
		backends[i] = srv.Listener.Addr().String()
	}
	ngx := stacktest.NewNginx(t)
	conf, addr := hashGroupsConf(t, backends)
	ngx.WriteFile("hash-groups.conf", conf)
	ngx.Start("include hash-groups.conf;", addr)

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(uri string) (string, error) {
		resp, err := client.Get("http://" + addr + uri)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return "", err
		}
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		if p := resp.Header.Get("X-Path"); p != uri {
			return "", fmt.Errorf("backend saw %q", p)
		}
		return string(body), nil
	}

	const ids = 500
	for _, form := range []string{"/item/%d.html", "/item.html?id=%d"} {
		matched, perGroup := 0, make([]int, n)
		for id := 1; id <= ids; id++ {
			uri := fmt.Sprintf(form, id)
			got, err := get(uri)
			if err != nil {
				t.Fatalf("GET %s: %v\n--- nginx log ---\n%s", uri, err, ngx.Log())
			}
			want := names[route.GroupFor([]byte(strconv.Itoa(id)), n)]
			if got != want {
				t.Errorf("GET %s: answered by %s, flashsync purges %s", uri, got, want)
				continue
			}
			matched++
			perGroup[route.GroupFor([]byte(strconv.Itoa(id)), n)]++
		}
		t.Logf("%d groups, %s: %d/%d ids read from the group flashsync purges (per group %v)", n, form, matched, ids, perGroup)
		for g, c := range perGroup {
			if c == 0 {
				t.Errorf("%s: no id routed to group %d", form, g)
			}
		}
	}
	// Sanity check that the test server answers at all on a keyless page.
	if _, err := get("/list.html"); err != nil {
		t.Errorf("GET /list.html: %v", err)
	}
}
