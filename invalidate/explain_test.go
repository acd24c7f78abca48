package invalidate

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// devRules mirrors configs/dev.toml's groups.
func devRules(t *testing.T, specs ...Rule) *Rules {
	t.Helper()
	r, err := NewRulesWithGroups(specs,
		[]Group{{Name: "hot-a", Addrs: []string{stacktest.DefaultRedisA1, stacktest.DefaultRedisA2}}, {Name: "hot-b", Addrs: []string{stacktest.DefaultRedisB1, stacktest.DefaultRedisB2}}},
		[]Group{{Name: "varnish-a", Addrs: []string{stacktest.DefaultVarnish1}}, {Name: "varnish-b", Addrs: []string{stacktest.DefaultVarnish2}}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var devItemRule = Rule{Table: "shop.item", RouteBy: "id",
	Keys: []string{"item:{id}", "item:page:{id}"}, URLs: []string{"/item/{id}.html"}, Tags: []string{"item-{id}"},
	IgnoreChanges: []string{"view_count"}}

func explainJSON(t *testing.T, r *Rules, row string) (*Explanation, error) {
	t.Helper()
	q, err := ParseExplainRequest([]byte(row))
	if err != nil {
		t.Fatalf("parse %s: %v", row, err)
	}
	if q.Table == "" {
		q.Table = "shop.item"
	}
	return r.ExplainRequest(q)
}

func textOf(t *testing.T, e *Explanation) string {
	t.Helper()
	var b strings.Builder
	if err := e.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestExplainTextUpdate(t *testing.T) {
	r := devRules(t, devItemRule, Rule{Table: "shop.item", RouteBy: "id", Keys: []string{"stock:{id}"}, Changed: []string{"stock"}})
	e, err := explainJSON(t, r, `{"before":{"id":1,"name":"pen","price":"9.99","stock":10,"view_count":1},"after":{"id":1,"name":"pen","price":"8.99","stock":10,"view_count":2}}`)
	if err != nil {
		t.Fatal(err)
	}
	e.SetTopics("flashsync")
	want := `shop.item update
  columns: id, name, price, stock, view_count
  changed: price, view_count

rule[0] (shop.item): fired: columns outside ignore_changes changed: price (ignore_changes = [view_count])
  route before id=1 -> redis hot-a; http varnish-a
  route after id=1 -> redis hot-a; http varnish-a
  key  item:1        redis hot-a     from item:{id} (before, after)
  key  item:page:1   redis hot-a     from item:page:{id} (before, after)
  url  /item/1.html  http varnish-a  from /item/{id}.html (before, after)
  tag  item-1        http varnish-a  from item-{id} (before, after)

rule[1] (shop.item): not fired: no listed column changed (changed = [stock])

purges (deduplicated, as one batch publishes them):
  redis hot-a (replicas ` + stacktest.DefaultRedisA1 + `, ` + stacktest.DefaultRedisA2 + `, topic flashsync.redis.hot-a)
    key item:1
    key item:page:1
  http varnish-a (instances ` + stacktest.DefaultVarnish1 + `, topic flashsync.http.varnish-a)
    url /item/1.html
    tag item-1
`
	if got := textOf(t, e); got != want {
		t.Errorf("text:\n%s\nwant:\n%s", got, want)
	}
}

func TestExplainReasons(t *testing.T) {
	r := devRules(t, devItemRule,
		Rule{Table: "shop.item", RouteBy: "id", Keys: []string{"stock:{id}"}, Changed: []string{"stock", "price"}},
		Rule{Table: "shop.item", RouteBy: "id", Tags: []string{"new-items"}, Actions: []string{"insert"}},
	)
	const (
		base  = `"id":1,"name":"pen","price":"9.99","stock":10`
		views = `{"before":{` + base + `,"view_count":1},"after":{` + base + `,"view_count":2}}`
		stock = `{"before":{` + base + `,"view_count":1},"after":{"id":1,"name":"pen","price":"9.99","stock":null,"view_count":1}}`
		ins   = `{"after":{` + base + `,"view_count":0}}`
		del   = `{"before":{` + base + `,"view_count":0}}`
	)
	tests := []struct {
		name, row string
		fired     []bool
		reasons   []string
		purges    int
	}{
		{"view_count only", views, []bool{false, false, false}, []string{
			"only ignored columns changed: view_count (ignore_changes = [view_count])",
			"no listed column changed (changed = [stock, price])",
			"action not listed: update is not in actions [insert]"}, 0},
		{"stock to NULL", stock, []bool{true, true, false}, []string{
			"columns outside ignore_changes changed: stock",
			"listed columns changed: stock (changed = [stock, price])",
			"action not listed"}, 2},
		{"insert", ins, []bool{true, true, true}, []string{
			"insert is in actions [insert, update, delete]; ignore_changes = [view_count] applies to updates only",
			"insert is in actions [insert, update, delete]; changed = [stock, price] applies to updates only",
			"insert is in actions [insert]"}, 2},
		{"delete", del, []bool{true, true, false}, []string{"delete is in actions", "delete is in actions", "action not listed: delete is not in actions [insert]"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := explainJSON(t, r, tt.row)
			if err != nil {
				t.Fatal(err)
			}
			for i, re := range e.Rules {
				if re.Fired != tt.fired[i] || !strings.Contains(re.Reason, tt.reasons[i]) {
					t.Errorf("%s: fired %v %q, want %v %q", re.Rule, re.Fired, re.Reason, tt.fired[i], tt.reasons[i])
				}
				if !re.Fired && (len(re.Targets) > 0 || len(re.Routes) > 0) {
					t.Errorf("%s did not fire but lists targets", re.Rule)
				}
			}
			if len(e.Purges) != tt.purges {
				t.Errorf("purges %+v, want %d groups", e.Purges, tt.purges)
			}
			checkPurgesMatchRules(t, e)
		})
	}
}

// checkPurgesMatchRules: the batch's targets are exactly the union of the
// fired rules' targets, in the same groups.
func checkPurgesMatchRules(t *testing.T, e *Explanation) {
	t.Helper()
	var fromRules, fromPurges []string
	for _, re := range e.Rules {
		for _, tg := range re.Targets {
			s := string(tg.Tier) + "/" + tg.Group + " " + tg.Kind + " " + tg.Target
			if !slices.Contains(fromRules, s) {
				fromRules = append(fromRules, s)
			}
		}
	}
	for _, p := range e.Purges {
		for _, k := range [][2]any{{"key", p.Keys}, {"url", p.URLs}, {"tag", p.Tags}} {
			for _, v := range k[1].([]string) {
				fromPurges = append(fromPurges, string(p.Tier)+"/"+p.Group+" "+k[0].(string)+" "+v)
			}
		}
	}
	slices.Sort(fromRules)
	slices.Sort(fromPurges)
	if !slices.Equal(fromRules, fromPurges) {
		t.Errorf("rules' targets %v != purges %v", fromRules, fromPurges)
	}
}

func TestExplainPrimaryKeyChangeAndNulls(t *testing.T) {
	r := devRules(t, Rule{Table: "shop.item", RouteBy: "id", Keys: []string{"item:{id}", "shop:{shop_id}"}, URLs: []string{"/item/{id}.html"}},
		Rule{Table: "shop.item", RouteBy: "shop_id", Tags: []string{"shop-{shop_id}"}})
	// "1" routes to group 0 of 2 and "2" to group 1, in both tiers.
	e, err := explainJSON(t, r, `{"before":{"id":1,"shop_id":null},"after":{"id":2,"shop_id":null}}`)
	if err != nil {
		t.Fatal(err)
	}
	checkPurgesMatchRules(t, e)
	got := textOf(t, e)
	for _, want := range []string{
		"route before id=1 -> redis hot-a; http varnish-a",
		"route after id=2 -> redis hot-b; http varnish-b",
		"key  item:1        redis hot-a     from item:{id} (before)",
		"key  item:2        redis hot-b     from item:{id} (after)",
		"url  /item/2.html  http varnish-b  from /item/{id}.html (after)",
		"key  -             skipped         from shop:{shop_id} (before: column shop_id is NULL)",
		"route before shop_id=NULL (every group) -> http varnish-a, varnish-b",
		"tag  -  skipped  from shop-{shop_id} (before: column shop_id is NULL)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("text lacks %q:\n%s", want, got)
		}
	}
	// A NULL route sends a rendered target to every group of its tier.
	e, err = explainJSON(t, r, `{"after":{"id":5,"shop_id":null}}`)
	if err != nil {
		t.Fatal(err)
	}
	e2, err := explainJSON(t, devRules(t, Rule{Table: "shop.item", RouteBy: "shop_id", Tags: []string{"item-{id}"}}), `{"after":{"id":5,"shop_id":null}}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(e2.Purges) != 2 || e2.Purges[0].Group != "varnish-a" || e2.Purges[1].Group != "varnish-b" || e2.Purges[1].Tags[0] != "item-5" {
		t.Errorf("NULL route purges %+v, want item-5 in both HTTP groups", e2.Purges)
	}
	checkPurgesMatchRules(t, e2)
}

func TestExplainJSON(t *testing.T) {
	r := devRules(t, devItemRule)
	e, err := explainJSON(t, r, `{"table":"shop.item","before":{"id":2,"price":"1","view_count":1},"after":{"view_count":1,"id":2,"price":"2"}}`)
	if err != nil {
		t.Fatal(err)
	}
	e.SetTopics("fs")
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Table, Action  string
		Columns        []string
		ChangedColumns []string `json:"changed_columns"`
		Rules          []struct {
			Rule   string
			Fired  bool
			Reason string
			Routes []struct {
				Image, Column string
				Value         *string
				Redis, HTTP   []string
			}
			Targets []struct {
				Kind, Target, Template, Tier, Group string
				Images                              []string
			}
		}
		Purges []struct {
			Tier, Group, Topic  string
			Replicas, Instances []string
			Keys, URLs, Tags    []string
		}
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Table != "shop.item" || got.Action != "update" || !slices.Equal(got.Columns, []string{"id", "price", "view_count"}) ||
		!slices.Equal(got.ChangedColumns, []string{"price"}) {
		t.Errorf("header %s", b)
	}
	if len(got.Rules) != 1 || !got.Rules[0].Fired || got.Rules[0].Rule != "rule[0] (shop.item)" || len(got.Rules[0].Targets) != 4 ||
		*got.Rules[0].Routes[0].Value != "2" || got.Rules[0].Routes[0].Redis[0] != "hot-b" || got.Rules[0].Routes[0].HTTP[0] != "varnish-b" {
		t.Errorf("rules %s", b)
	}
	tg := got.Rules[0].Targets[2]
	if tg.Kind != "url" || tg.Target != "/item/2.html" || tg.Tier != "http" || tg.Group != "varnish-b" || !slices.Equal(tg.Images, []string{"before", "after"}) {
		t.Errorf("target %+v", tg)
	}
	if len(got.Purges) != 2 || got.Purges[0].Topic != "fs.redis.hot-b" || !slices.Equal(got.Purges[0].Replicas, []string{stacktest.DefaultRedisB1, stacktest.DefaultRedisB2}) ||
		got.Purges[0].Instances != nil || !slices.Equal(got.Purges[0].Keys, []string{"item:2", "item:page:2"}) ||
		got.Purges[1].Topic != "fs.http.varnish-b" || !slices.Equal(got.Purges[1].Instances, []string{stacktest.DefaultVarnish2}) ||
		!slices.Equal(got.Purges[1].URLs, []string{"/item/2.html"}) || !slices.Equal(got.Purges[1].Tags, []string{"item-2"}) {
		t.Errorf("purges %s", b)
	}
	// No purge: "purges": [] rather than null, for clients.
	e, _ = explainJSON(t, r, `{"before":{"id":2,"price":"1","view_count":1},"after":{"id":2,"price":"1","view_count":3}}`)
	if b, _ := json.Marshal(e); !strings.Contains(string(b), `"purges":[]`) {
		t.Errorf("no purges: %s", b)
	}
}

func TestExplainErrors(t *testing.T) {
	r := devRules(t, devItemRule)
	tests := []struct {
		name, table, action string
		columns             []string
		before, after       []any
		want                string
	}{
		{"route column missing", "shop.item", "insert", []string{"name", "view_count"}, nil, []any{"x", int64(1)},
			`rule[0] (shop.item): route_by: column "id" is not in shop.item (columns: name, view_count)`},
		{"condition column missing", "shop.item", "update", []string{"id"}, []any{int64(1)}, []any{int64(1)},
			`rule[0] (shop.item): ignore_changes: column "view_count" is not in shop.item`},
		{"insert without after", "shop.item", "insert", []string{"id"}, []any{int64(1)}, nil, "an insert needs the after image"},
		{"delete without before", "shop.item", "delete", []string{"id"}, nil, []any{int64(1)}, "a delete needs the before image"},
		{"update with one image", "shop.item", "update", []string{"id"}, nil, []any{int64(1)}, "an update needs the before and the after image"},
		{"short image", "shop.item", "insert", []string{"id", "x"}, nil, []any{int64(1)}, "the after image has 1 values for 2 columns"},
		{"unknown action", "shop.item", "upsert", []string{"id"}, nil, []any{int64(1)}, `unknown action "upsert"`},
		{"no table", "", "insert", []string{"id"}, nil, []any{int64(1)}, "table: missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.ExplainRequest(&ExplainRequest{Table: tt.table, Action: tt.action, Columns: tt.columns, Before: tt.before, After: tt.after})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	// A table without rules is not an error: its rows are skipped.
	e, err := r.Explain("shop.log", Insert, []string{"id"}, nil, []any{int64(1)})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Rules) != 0 || len(e.Purges) != 0 || !strings.Contains(textOf(t, e), "note: no [[rule]] for shop.log: its rows are skipped (tables with rules: shop.item)") {
		t.Errorf("table without rules:\n%s", textOf(t, e))
	}
	// An image the action does not read is noted.
	e, err = r.Explain("shop.item", Insert, []string{"id", "view_count"}, []any{int64(1), int64(0)}, []any{int64(1), int64(0)})
	if err != nil || !slices.Contains(e.Notes, "the before image is ignored: an insert has only an after image") {
		t.Errorf("explicit insert with both images: %v %v", e, err)
	}
}

func TestParseExplainRequest(t *testing.T) {
	q, err := ParseExplainRequest([]byte(`{"action":"update","table":"shop.item",
		"before":{"id":1,"price":"9.99","big":18446744073709551615,"f":1.50,"neg":-3,"n":null},
		"after":{"n":"x","neg":-3,"f":2.5e0,"big":1,"price":"8.99","id":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if q.Table != "shop.item" || q.Action != "update" || !slices.Equal(q.Columns, []string{"id", "price", "big", "f", "neg", "n"}) {
		t.Fatalf("parsed %+v", q)
	}
	wantBefore := []any{int64(1), "9.99", "18446744073709551615", "1.50", int64(-3), nil}
	wantAfter := []any{int64(1), "8.99", int64(1), "2.5e0", int64(-3), "x"}
	if !slices.Equal(q.Before, wantBefore) || !slices.Equal(q.After, wantAfter) {
		t.Fatalf("before %#v after %#v", q.Before, q.After)
	}
	for _, tt := range []struct {
		body string
		want Action
	}{{`{"after":{"id":1}}`, Insert}, {`{"before":{"id":1}}`, Delete}, {`{"before":{"id":1},"after":{"id":2}}`, Update},
		{`{"before":null,"after":{"id":1}}`, Insert}, {`{"action":"delete","before":{"id":1},"after":{"id":1}}`, Delete}} {
		q, err := ParseExplainRequest([]byte(tt.body))
		if err != nil {
			t.Fatalf("%s: %v", tt.body, err)
		}
		if a, err := q.ParseAction(); err != nil || a != tt.want {
			t.Errorf("%s: action %v %v, want %v", tt.body, a, err, tt.want)
		}
	}
	for _, tt := range []struct{ body, want string }{
		{`{}`, `needs a "before" or an "after" image`},
		{`{"before":null}`, `needs a "before" or an "after" image`},
		{`{"after":{"id":true}}`, `after.id: true is not a column value`},
		{`{"after":{"id":[1]}}`, `after.id: [ is not a column value`},
		{`{"after":{"id":{"a":1}}}`, `after.id: { is not a column value`},
		{`{"after":{"id":1,"id":2}}`, `after: column "id" is given twice`},
		{`{"before":{"id":1},"after":{"id":1,"x":2}}`, `column "x" is in after but not in before`},
		{`{"before":{"id":1,"x":2},"after":{"id":1}}`, `column "x" is in before but not in after`},
		{`{"row":{}}`, `unknown key "row"`},
		{`{"after":[]}`, `after: want an object of column values`},
		{`{"table":1,"after":{}}`, `table`},
		{`{"after":{"id":1}} {}`, `data after the JSON object`},
		{`[]`, `row: want {, found [`},
		{``, `row: EOF`},
		{`{"after":{"id":1}`, `row`},
	} {
		_, err := ParseExplainRequest([]byte(tt.body))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.body, err, tt.want)
		}
	}
}

func TestExplainRow(t *testing.T) {
	// A rule firing only on price changes and one only on deletes: a purge
	// by hand renders both.
	r := devRules(t, devItemRule,
		Rule{Table: "shop.item", RouteBy: "id", Keys: []string{"stock:{id}"}, Changed: []string{"stock"}},
		Rule{Table: "shop.item", RouteBy: "name", Keys: []string{"byname:{name}"}, Actions: []string{"delete"}})
	out := r.NewBatch()
	e, err := r.ExplainRow("shop.item", []string{"id", "name", "stock", "view_count"}, []any{int64(1), "pen", int64(3), int64(7)}, out)
	if err != nil {
		t.Fatal(err)
	}
	if e.Action != "purge" || len(e.Rules) != 3 {
		t.Fatalf("explanation %+v", e)
	}
	for _, re := range e.Rules {
		if !re.Fired || len(re.Targets) == 0 {
			t.Errorf("%s: fired %v, targets %v", re.Rule, re.Fired, re.Targets)
		}
	}
	// The batch and the explanation's purges agree, as for a row change.
	checkPurgesMatchRules(t, e)
	if !slices.Equal(r.Purges(out)[0].Keys, e.Purges[0].Keys) || out.Len() != 6 {
		t.Errorf("batch %v (%d targets), explanation %v", r.Purges(out), out.Len(), e.Purges)
	}
	// A row known by its key columns only: templates over other columns
	// are skipped, a NULL route value reaches every group.
	out = r.NewBatch()
	e, err = r.ExplainRow("shop.item", []string{"id", "name", "stock", "view_count"}, []any{int64(1), nil, nil, nil}, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Rules[2].Skipped) != 1 || len(e.Rules[2].Routes[0].Redis) != 2 {
		t.Errorf("rule over a NULL column: %+v", e.Rules[2])
	}
	if _, err := r.ExplainRow("shop.log", []string{"id"}, []any{int64(1)}, out); err == nil || !strings.Contains(err.Error(), "no [[rule]] for shop.log") {
		t.Errorf("table without rules: %v", err)
	}
	if _, err := r.ExplainRow("shop.item", []string{"id"}, []any{int64(1)}, out); err == nil || !strings.Contains(err.Error(), "is not in shop.item") {
		t.Errorf("missing column: %v", err)
	}
}

// An explanation shows each sync target, and the write it would publish
// with its value.
func TestExplainSync(t *testing.T) {
	r, err := NewRules([]Rule{{Table: "shop.item", RouteBy: "id", Sync: []SyncTarget{{Key: "item:json:{id}", Columns: []string{"id", "price"}}}}}, []string{"hot-a"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := r.Explain("shop.item", Insert, []string{"id", "price"}, nil, []any{int64(1), "8.99"})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := e.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sync  item:json:1  redis hot-a  from item:json:{id} (after)", `sync set item:json:1 = "{\"id\":1,\"price\":\"8.99\"}"`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("explanation lacks %q:\n%s", want, b.String())
		}
	}
}
