package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/internal/stacktest"
)

const devConfig = "../../configs/dev.toml"

func runExplain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr strings.Builder
	rc := program.Run(append([]string{"rules", "explain", "-config", devConfig}, args...), &stdout, &stderr)
	return rc, stdout.String(), stderr.String()
}

func TestRulesExplainCLI(t *testing.T) {
	const row = `{"before":{"id":1,"name":"pen","price":"9.99","stock":10,"view_count":1,"updated_at":"2026-11-21 10:00:00"},` +
		`"after":{"id":1,"name":"pen","price":"8.99","stock":10,"view_count":2,"updated_at":"2026-11-21 10:00:05"}}`
	rc, out, errOut := runExplain(t, "-table", "shop.item", "-row", row)
	if rc != 0 {
		t.Fatalf("rc %d: %s", rc, errOut)
	}
	for _, want := range []string{
		"shop.item update\n",
		"rule[0] (shop.item): fired: columns outside ignore_changes changed: price (ignore_changes = [view_count, updated_at])",
		"redis hot-a (replicas " + stacktest.DefaultRedisA1 + ", " + stacktest.DefaultRedisA2 + ", topic flashsync.redis.hot-a)",
		"http varnish (instances " + stacktest.DefaultVarnish1 + ", " + stacktest.DefaultVarnish2 + ", topic flashsync.http.varnish)",
		"    url /item/1.html\n", "    tag item-1\n", "    key item:page:1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// From a file, as JSON, with the table in the row and the action forced.
	path := filepath.Join(t.TempDir(), "row.json")
	if err := os.WriteFile(path, []byte(`{"table":"shop.item","after":{"id":2,"name":"cup","price":"1.00","stock":1,"view_count":0,"updated_at":null}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	rc, out, errOut = runExplain(t, "-row", "@"+path, "-json")
	if rc != 0 {
		t.Fatalf("rc %d: %s", rc, errOut)
	}
	var e struct {
		Action string
		Purges []struct{ Group string }
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil || e.Action != "insert" || len(e.Purges) != 2 || e.Purges[0].Group != "hot-b" || e.Purges[1].Group != "varnish" {
		t.Errorf("json (%v): %s", err, out)
	}
	rc, out, _ = runExplain(t, "-row", "@"+path, "-action", "update")
	if rc != 1 {
		t.Errorf("forced update with one image: rc %d %s", rc, out)
	}

	for _, tt := range []struct {
		args []string
		rc   int
		want string
	}{
		{[]string{"-table", "shop.item"}, 2, "-row is required"},
		{[]string{"-table", "shop.item", "-row", `{"after":{"id":1}}`}, 1, `ignore_changes: column "view_count" is not in shop.item`},
		{[]string{"-table", "shop.item", "-row", `{"after":{"name":"x","view_count":1,"updated_at":null}}`}, 1, `route_by: column "id" is not in shop.item`},
		{[]string{"-table", "shop.other", "-row", `{"table":"shop.item","after":{"id":1}}`}, 1, `-table shop.other but the row says "shop.item"`},
		{[]string{"-row", `{"after":{"id":1}}`}, 1, "table: missing"},
		{[]string{"-table", "shop.item", "-row", "@/nonexistent/row.json"}, 1, "no such file"},
		{[]string{"-table", "shop.item", "-row", `{"after":{"id":1}}`, "-action", "upsert"}, 1, `unknown action "upsert"`},
	} {
		rc, _, errOut := runExplain(t, tt.args...)
		if rc != tt.rc || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: rc %d %q, want %d %q", tt.args, rc, errOut, tt.rc, tt.want)
		}
	}
	// A table without rules is explained, not an error.
	rc, out, _ = runExplain(t, "-table", "shop.log", "-row", `{"after":{"id":1}}`)
	if rc != 0 || !strings.Contains(out, "note: no [[rule]] for shop.log: its rows are skipped") {
		t.Errorf("table without rules: rc %d %s", rc, out)
	}
}
