package daemon

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/internal/stacktest"
)

const explainConfig = `
[mysql]
addr = "127.0.0.1:1"
server_id = 9

[canal]
position_file = "unused"

[nsq]
nsqd_tcp = ["127.0.0.1:1"]
nsqd_http = ["127.0.0.1:2"]
topic_prefix = "fs"

[http]
addr = "127.0.0.1:0"

[[redis_group]]
name = "hot-a"
replicas = ["` + stacktest.DefaultRedisA1 + `", "` + stacktest.DefaultRedisA2 + `"]

[[redis_group]]
name = "hot-b"
replicas = ["` + stacktest.DefaultRedisB1 + `"]

[[http_group]]
name = "varnish-a"
instances = ["` + stacktest.DefaultVarnish1 + `"]

[[http_group]]
name = "varnish-b"
instances = ["` + stacktest.DefaultVarnish2 + `"]

[[rule]]
table = "shop.item"
keys = ["item:{id}"]
urls = ["/item/{id}.html"]
tags = ["item-{id}"]
route_by = "id"
ignore_changes = ["view_count"]
`

// testNode builds a daemon of explainConfig running only role (nothing is
// contacted before Run) and serves its mux.
func testNode(t *testing.T, role string) (*Daemon, *httptest.Server) {
	t.Helper()
	cfg, err := configs.Parse([]byte(explainConfig))
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Options{Config: cfg, Roles: []string{role}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	srv := httptest.NewServer(n.mux())
	t.Cleanup(srv.Close)
	return n, srv
}

// explainServer serves the mux of a daemon that runs only the purger role:
// the rules are there all the same.
func explainServer(t *testing.T) *httptest.Server {
	t.Helper()
	_, srv := testNode(t, RoleRedisPurger)
	return srv
}

func post(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	return jsonAnswer(t, resp, err)
}

func get(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	return jsonAnswer(t, resp, err)
}

// jsonAnswer reads a JSON answer: its status and object.
func jsonAnswer(t *testing.T, resp *http.Response, err error) (int, map[string]any) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%d %s: %v", resp.StatusCode, data, err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	return resp.StatusCode, out
}

func TestRulesExplainAPI(t *testing.T) {
	srv := explainServer(t)
	url := srv.URL + "/rules/explain"

	status, out := post(t, url, `{"table":"shop.item","before":{"id":2,"price":"9.99","view_count":1},"after":{"id":2,"price":"8.99","view_count":2}}`)
	if status != http.StatusOK {
		t.Fatalf("status %d: %v", status, out)
	}
	b, _ := json.Marshal(out)
	for _, want := range []string{
		`"action":"update"`, `"changed_columns":["price","view_count"]`, `"fired":true`,
		`"reason":"columns outside ignore_changes changed: price (ignore_changes = [view_count])"`,
		`{"group":"hot-b","keys":["item:2"],"replicas":["` + stacktest.DefaultRedisB1 + `"],"tier":"redis","topic":"fs.redis.hot-b"}`,
		`{"group":"varnish-b","instances":["` + stacktest.DefaultVarnish2 + `"],"tags":["item-2"],"tier":"http","topic":"fs.http.varnish-b","urls":["/item/2.html"]}`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("answer lacks %s:\n%s", want, b)
		}
	}

	status, out = post(t, url, `{"table":"shop.item","before":{"id":2,"view_count":1},"after":{"id":2,"view_count":2}}`)
	if status != http.StatusOK || out["rules"].([]any)[0].(map[string]any)["fired"] != false || len(out["purges"].([]any)) != 0 {
		t.Errorf("view_count-only update: %d %v", status, out)
	}

	for _, tt := range []struct{ body, want string }{
		{`{"before":{"id":1}}`, "table: missing"},
		{`{"table":"shop.item","after":{"price":1}}`, `column "id" is not in shop.item`},
		{`{"table":"shop.item","before":{"id":1},"after":{"id":2}}`, `column "view_count" is not in shop.item`},
		{`{"table":"shop.item","after":{"id":true}}`, "not a column value"},
		{`{"table":"shop.item","action":"merge","after":{"id":1}}`, `unknown action "merge"`},
		{`not json`, "row:"},
		{`{"table":"shop.item","after":{"id":"` + strings.Repeat("x", maxExplainBody) + `"}}`, "read body"},
	} {
		status, out := post(t, url, tt.body)
		msg, _ := out["error"].(string)
		if status != http.StatusBadRequest || !strings.Contains(msg, tt.want) {
			t.Errorf("%.80s: %d %q, want 400 with %q", tt.body, status, msg, tt.want)
		}
		if len(out) != 1 {
			t.Errorf("%.80s: answer %v, want only an \"error\" field", tt.body, out)
		}
	}

	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", resp.StatusCode)
	}
}
