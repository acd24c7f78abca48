package invalidate

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/route"
)

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		src     string
		columns []string
		err     string
	}{
		{"item:{id}", []string{"id"}, ""},
		{"item:page:{id}", []string{"id"}, ""},
		{"{shop_id}:{id}", []string{"shop_id", "id"}, ""},
		{"static", nil, ""},
		{"brace:{{literal}}:{id}", []string{"id"}, ""},
		{"item:{id", nil, "unclosed {"},
		{"item:{}", nil, "not a column name"},
		{"item:{1id}", nil, "not a column name"},
		{"item:{a b}", nil, "not a column name"},
		{"item:}", nil, "unmatched }"},
		{"", nil, "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			tpl, err := ParseTemplate(tt.src)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseTemplate(%q) err = %v, want %q", tt.src, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(tpl.Columns(), tt.columns) {
				t.Fatalf("columns = %v, want %v", tpl.Columns(), tt.columns)
			}
		})
	}
}

// Golden values: ((crc32(v) >> 16) & 0x7fff) % n, computed independently
// (Python zlib.crc32); they must never change, or caches are purged in the
// wrong group after an upgrade.

func testRules(t testing.TB) *Rules {
	t.Helper()
	r, err := NewRules([]Rule{
		{Table: "shop.item", Keys: []string{"item:{id}", "item:page:{id}"}, RouteBy: "id"},
		{Table: "shop.item", Keys: []string{"shop:{shop_id}:items"}, RouteBy: "shop_id"},
	}, []string{"hot-a", "hot-b"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var itemColumns = []string{"id", "shop_id", "name", "view_count"}

// keysOf applies one row change and returns "group:key" strings.
func keysOf(t *testing.T, b *Bound, action Action, before, after []any) []string {
	t.Helper()
	batch := NewBatch(2)
	b.ApplyRow(action, before, after, batch)
	var out []string
	for g := 0; g < 2; g++ {
		for _, k := range batch.Keys(g) {
			out = append(out, []string{"a", "b"}[g]+":"+k)
		}
	}
	slices.Sort(out)
	return out
}

func TestApply(t *testing.T) {
	b, err := testRules(t).Bind("shop.item", itemColumns)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		action        Action
		before, after []any
		want          []string
	}{
		{"insert", Insert, nil, []any{int64(1), int32(7), "pen", int64(0)},
			[]string{"a:item:1", "a:item:page:1", "b:shop:7:items"}},
		{"delete", Delete, []any{int64(1), int32(7), "pen", int64(0)}, nil,
			[]string{"a:item:1", "a:item:page:1", "b:shop:7:items"}},
		{"update, same key: purged once", Update, []any{int64(1), int32(7), "pen", int64(0)}, []any{int64(1), int32(7), "pencil", int64(1)},
			[]string{"a:item:1", "a:item:page:1", "b:shop:7:items"}},
		{"primary key change purges old and new", Update, []any{int64(1), int32(7), "pen", int64(0)}, []any{int64(2), int32(7), "pen", int64(0)},
			[]string{"a:item:1", "a:item:page:1", "b:item:2", "b:item:page:2", "b:shop:7:items"}},
		{"NULL key column names nothing", Insert, nil, []any{int64(3), nil, "x", int64(0)},
			[]string{"a:item:3", "a:item:page:3"}},
		{"unsigned and text values", Insert, nil, []any{uint64(18446744073709551615), "7", []byte("x"), nil},
			[]string{"a:item:18446744073709551615", "a:item:page:18446744073709551615", "b:shop:7:items"}},
		{"insert reads only after", Insert, []any{int64(9), int32(9), "x", int64(0)}, []any{int64(1), int32(7), "pen", int64(0)},
			[]string{"a:item:1", "a:item:page:1", "b:shop:7:items"}},
		{"delete reads only before", Delete, []any{int64(1), int32(7), "pen", int64(0)}, []any{int64(9), int32(9), "x", int64(0)},
			[]string{"a:item:1", "a:item:page:1", "b:shop:7:items"}},
		{"no image", Delete, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := keysOf(t, b, tt.action, tt.before, tt.after); !slices.Equal(got, tt.want) {
				t.Fatalf("keys = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestApplyNullRouteGoesToEveryGroup(t *testing.T) {
	r, err := NewRules([]Rule{{Table: "shop.item", Keys: []string{"item:{name}"}, RouteBy: "shop_id"}}, []string{"hot-a", "hot-b"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := r.Bind("shop.item", itemColumns)
	got := keysOf(t, b, Insert, nil, []any{int64(1), nil, "pen", int64(0)})
	if want := []string{"a:item:pen", "b:item:pen"}; !slices.Equal(got, want) {
		t.Fatalf("keys = %v, want %v", got, want)
	}
}

func TestBindErrors(t *testing.T) {
	r := testRules(t)
	if b, err := r.Bind("shop.other", []string{"id"}); b != nil || err != nil {
		t.Fatalf("table without rules: %v, %v; want nil, nil", b, err)
	}
	_, err := r.Bind("shop.item", []string{"id", "name"})
	if err == nil || !strings.Contains(err.Error(), `column "shop_id" is not in shop.item`) || !strings.Contains(err.Error(), "rule[1]") {
		t.Fatalf("err = %v, want it to name rule[1] and column shop_id", err)
	}
}

func TestNewRulesErrors(t *testing.T) {
	_, err := NewRules([]Rule{{Table: "shop.item", Keys: []string{"ok:{id}", "bad:{id"}, RouteBy: "id"}}, []string{"g"})
	if err == nil || !strings.Contains(err.Error(), "rule[0] (shop.item): keys[1]") {
		t.Fatalf("err = %v, want it to name rule[0] keys[1]", err)
	}
	_, err = NewRules([]Rule{{Table: "shop.item", Keys: []string{"ok:{id}"}, RouteBy: "id"}}, nil)
	if err == nil {
		t.Fatal("rules without groups accepted")
	}
}

func TestBatchReset(t *testing.T) {
	b := NewBatch(1)
	b.Add(0, "k")
	b.Add(0, "k")
	if b.Len() != 1 || b.Bytes() != 1 {
		t.Fatalf("len %d bytes %d, want 1 1", b.Len(), b.Bytes())
	}
	b.Reset()
	b.Add(0, "k")
	if b.Len() != 1 || !slices.Equal(b.Keys(0), []string{"k"}) {
		t.Fatalf("after reset: %v", b.Keys(0))
	}
}

func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{"item:{id}", "{{x}}", "a{b}c{d}", "{", "}", "{}{", "x:{a$b}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		tpl, err := ParseTemplate(src)
		if err != nil {
			return
		}
		// A parsed template renders every column from an image holding its
		// name; the output must contain each literal part in order.
		// It renders the same as a key, a URL and a tag.
		cols := tpl.Columns()
		ru := &rule{templates: [numKinds][]*Template{{tpl}, {tpl}, {tpl}}, routeBy: "r", actions: allActions}
		r := &Rules{redis: []Group{{Name: "g"}}, http: []Group{{Name: "h"}}, byTable: map[string][]*rule{"d.t": {ru}}}
		b, err := r.Bind("d.t", append(slices.Clone(cols), "r"))
		if err != nil {
			t.Fatalf("bind %q: %v", src, err)
		}
		img := make([]any, len(cols)+1)
		for i, c := range cols {
			img[i] = c
		}
		img[len(cols)] = "route"
		batch := r.NewBatch()
		b.ApplyRow(Insert, nil, img, batch)
		if batch.Len() != 3 || len(batch.Keys(0)) != 1 || len(batch.URLs(0)) != 1 || len(batch.Tags(0)) != 1 {
			t.Fatalf("template %q rendered %d targets: %q %q %q", src, batch.Len(), batch.Keys(0), batch.URLs(0), batch.Tags(0))
		}
		var want strings.Builder
		for _, p := range tpl.parts {
			if p.column != "" {
				want.WriteString(p.column)
			} else {
				want.WriteString(p.lit)
			}
		}
		for _, got := range []string{batch.Keys(0)[0], batch.URLs(0)[0], batch.Tags(0)[0]} {
			if got != want.String() {
				t.Fatalf("template %q rendered %q, want %q", src, got, want.String())
			}
		}
	})
}

// tierRules has 2 Redis groups and 3 HTTP groups, so one route value may
// pick differently numbered groups in each tier.
func tierRules(t testing.TB, specs ...Rule) *Rules {
	t.Helper()
	r, err := NewRulesWithGroups(specs,
		[]Group{{Name: "hot-a", Addrs: []string{"r1", "r2"}}, {Name: "hot-b", Addrs: []string{"r3"}}},
		[]Group{{Name: "v0", Addrs: []string{"i0"}}, {Name: "v1", Addrs: []string{"i1"}}, {Name: "v2", Addrs: []string{"i2"}}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// targetsOf applies one row change and returns "tier/group kind target".
func targetsOf(t testing.TB, r *Rules, b *Bound, action Action, before, after []any) []string {
	t.Helper()
	batch := r.NewBatch()
	b.ApplyRow(action, before, after, batch)
	var out []string
	for g := 0; g < batch.NumGroups(); g++ {
		for _, k := range batch.Keys(g) {
			out = append(out, r.redis[g].Name+" key "+k)
		}
	}
	for g := 0; g < batch.NumHTTPGroups(); g++ {
		for _, u := range batch.URLs(g) {
			out = append(out, r.http[g].Name+" url "+u)
		}
		for _, tag := range batch.Tags(g) {
			out = append(out, r.http[g].Name+" tag "+tag)
		}
	}
	slices.Sort(out)
	if batch.Len() != len(out) {
		t.Fatalf("Len() = %d, %d targets", batch.Len(), len(out))
	}
	return out
}

func TestMultiTierRuleRoutesEachTierByItsGroupCount(t *testing.T) {
	r := tierRules(t, Rule{Table: "shop.item", RouteBy: "id",
		Keys: []string{"item:{id}"}, URLs: []string{"/item/{id}.html"}, Tags: []string{"item-{id}"}})
	b, err := r.Bind("shop.item", itemColumns)
	if err != nil {
		t.Fatal(err)
	}
	// From TestGroupForGolden: "2" is group 1 of 2 and group 2 of 3; "1" is
	// group 0 of 2 and group 1 of 3. Each tier hashes modulo its own count.
	for _, tt := range []struct {
		id           int64
		redis, http  string
		wantRedisIdx int
	}{{2, "hot-b", "v2", 1}, {1, "hot-a", "v1", 0}} {
		v := strconv.FormatInt(tt.id, 10)
		if route.GroupFor([]byte(v), 2) != tt.wantRedisIdx {
			t.Fatalf("golden redis group of %s changed", v)
		}
		got := targetsOf(t, r, b, Insert, nil, []any{tt.id, int32(7), "pen", int64(0)})
		want := []string{tt.redis + " key item:" + v, tt.http + " tag item-" + v, tt.http + " url /item/" + v + ".html"}
		if !slices.Equal(got, want) {
			t.Errorf("id %d: targets %v, want %v", tt.id, got, want)
		}
		if g := route.GroupFor([]byte(v), 3); r.http[g].Name != tt.http {
			t.Errorf("id %d: http group %s, GroupFor says %s", tt.id, tt.http, r.http[g].Name)
		}
	}
	// A NULL route value purges every group of both tiers.
	r2 := tierRules(t, Rule{Table: "shop.item", RouteBy: "shop_id", Keys: []string{"k:{id}"}, URLs: []string{"/i/{id}"}})
	b2, _ := r2.Bind("shop.item", itemColumns)
	got := targetsOf(t, r2, b2, Delete, []any{int64(5), nil, "x", int64(0)}, nil)
	want := []string{"hot-a key k:5", "hot-b key k:5", "v0 url /i/5", "v1 url /i/5", "v2 url /i/5"}
	if !slices.Equal(got, want) {
		t.Errorf("NULL route: %v, want %v", got, want)
	}
}

func TestSeveralRulesPerTableDedupPerGroupAndKind(t *testing.T) {
	r := tierRules(t,
		Rule{Table: "shop.item", RouteBy: "id", Keys: []string{"item:{id}"}, Tags: []string{"item-{id}"}},
		Rule{Table: "shop.item", RouteBy: "id", Keys: []string{"item:{id}"}, URLs: []string{"item-{id}"}, Tags: []string{"item-{id}"}},
		Rule{Table: "shop.other", RouteBy: "id", Keys: []string{"other:{id}"}},
	)
	b, _ := r.Bind("shop.item", itemColumns)
	got := targetsOf(t, r, b, Update, []any{int64(1), int32(7), "pen", int64(0)}, []any{int64(1), int32(7), "pen", int64(1)})
	// The same text as a URL and as a tag is two targets; the same key from
	// two rules is one.
	want := []string{"hot-a key item:1", "v1 tag item-1", "v1 url item-1"}
	if !slices.Equal(got, want) {
		t.Errorf("targets %v, want %v", got, want)
	}
}

func TestConditions(t *testing.T) {
	cols := []string{"id", "price", "stock", "view_count", "updated_at", "body"}
	row := func(price any, stock any, views any, updated any, body any) []any {
		return []any{int64(1), price, stock, views, updated, body}
	}
	base := row("9.99", int32(10), int64(1), "2026-11-21 00:00:00", []byte("text"))
	ts := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name          string
		rule          Rule
		action        Action
		before, after []any
		fire          bool
	}{
		{"no condition: every action", Rule{}, Update, base, base, true},
		{"actions: insert listed", Rule{Actions: []string{"insert"}}, Insert, nil, base, true},
		{"actions: update not listed", Rule{Actions: []string{"insert", "delete"}}, Update, base, row("8.99", int32(10), int64(1), "x", []byte("text")), false},
		{"actions: delete not listed", Rule{Actions: []string{"update"}}, Delete, base, nil, false},
		{"changed: price changed", Rule{Changed: []string{"price", "stock"}}, Update, base, row("8.99", int32(10), int64(2), "x", []byte("text")), true},
		{"changed: only view_count changed", Rule{Changed: []string{"price", "stock"}}, Update, base, row("9.99", int32(10), int64(2), "x", []byte("text")), false},
		{"changed: NULL to value", Rule{Changed: []string{"price"}}, Update, row(nil, int32(10), int64(1), "t", nil), row("1.00", int32(10), int64(1), "t", nil), true},
		{"changed: value to NULL", Rule{Changed: []string{"stock"}}, Update, base, row("9.99", nil, int64(1), "t", []byte("text")), true},
		{"changed: NULL stays NULL", Rule{Changed: []string{"price"}}, Update, row(nil, int32(1), int64(1), "t", nil), row(nil, int32(1), int64(2), "t", nil), false},
		{"changed: []byte equal content", Rule{Changed: []string{"body"}}, Update, base, row("9.99", int32(10), int64(5), "y", []byte("text")), false},
		{"changed: []byte differs", Rule{Changed: []string{"body"}}, Update, base, row("9.99", int32(10), int64(1), "2026-11-21 00:00:00", []byte("texT")), true},
		{"changed: applies to updates only", Rule{Changed: []string{"price"}}, Insert, nil, base, true},
		{"changed: time.Time equal instants", Rule{Changed: []string{"updated_at"}}, Update, row("1", int32(1), int64(1), ts, nil), row("1", int32(1), int64(1), ts.In(time.FixedZone("x", 3600)), nil), false},
		{"changed: uint64 differs", Rule{Changed: []string{"stock"}}, Update, row("1", uint64(1), int64(1), "t", nil), row("1", uint64(2), int64(1), "t", nil), true},
		{"changed: float64 equal", Rule{Changed: []string{"price"}}, Update, row(1.5, int32(1), int64(1), "t", nil), row(1.5, int32(1), int64(2), "t", nil), false},
		{"changed: int64 vs same text", Rule{Changed: []string{"stock"}}, Update, row("1", int64(10), int64(1), "t", nil), row("1", "10", int64(1), "t", nil), false},
		{"ignore_changes: only view_count changed", Rule{IgnoreChanges: []string{"view_count", "updated_at"}}, Update, base, row("9.99", int32(10), int64(2), "2026-11-21 00:00:01", []byte("text")), false},
		{"ignore_changes: price changed too", Rule{IgnoreChanges: []string{"view_count", "updated_at"}}, Update, base, row("8.99", int32(10), int64(2), "2026-11-21 00:00:01", []byte("text")), true},
		{"ignore_changes: nothing changed", Rule{IgnoreChanges: []string{"view_count"}}, Update, base, base, false},
		{"ignore_changes: NULL to value outside", Rule{IgnoreChanges: []string{"view_count"}}, Update, row("1", int32(1), int64(1), "t", nil), row("1", int32(1), int64(2), "t", []byte{}), true},
		{"ignore_changes: []byte change outside", Rule{IgnoreChanges: []string{"view_count"}}, Update, base, row("9.99", int32(10), int64(1), "2026-11-21 00:00:00", []byte("new")), true},
		{"ignore_changes: delete fires", Rule{IgnoreChanges: []string{"view_count"}}, Delete, base, nil, true},
		{"ignore_changes and actions", Rule{Actions: []string{"update"}, IgnoreChanges: []string{"view_count"}}, Insert, nil, base, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := tt.rule
			spec.Table, spec.RouteBy, spec.Keys = "shop.item", "id", []string{"item:{id}"}
			r := tierRules(t, spec)
			b, err := r.Bind("shop.item", cols)
			if err != nil {
				t.Fatal(err)
			}
			got := targetsOf(t, r, b, tt.action, tt.before, tt.after)
			if fired := len(got) > 0; fired != tt.fire {
				t.Fatalf("fired = %v (%v), want %v", fired, got, tt.fire)
			}
		})
	}
}

func TestValuesEqual(t *testing.T) {
	tests := []struct {
		a, b any
		want bool
	}{
		{nil, nil, true}, {nil, int64(0), false}, {int64(0), nil, false}, {"", nil, false}, {[]byte{}, nil, false},
		{int64(1), int64(1), true}, {int64(1), int64(2), false}, {int8(-1), int8(-1), true}, {uint8(1), uint8(2), false},
		{int32(7), int64(7), true}, {uint64(7), int64(7), true}, {int64(7), "7", true}, {int64(7), "7.0", false},
		{"9.99", "9.99", true}, {"9.99", "9.990", false}, {[]byte("a"), []byte("a"), true}, {[]byte("a"), []byte("b"), false},
		{[]byte("a"), "a", true}, {float64(0.1), float64(0.1), true}, {float32(1), float32(2), false}, {float64(1.5), "1.5", true},
		{time.Unix(0, 0), time.Unix(0, 0).UTC(), true}, {time.Unix(0, 0), time.Unix(1, 0), false},
	}
	for _, tt := range tests {
		if got := valuesEqual(tt.a, tt.b); got != tt.want {
			t.Errorf("valuesEqual(%#v, %#v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestNewRulesTargetAndConditionErrors(t *testing.T) {
	ok := Rule{Table: "shop.item", RouteBy: "id", Keys: []string{"k:{id}"}}
	with := func(edit func(*Rule)) Rule {
		r := ok
		edit(&r)
		return r
	}
	redis := []Group{{Name: "hot-a"}}
	http := []Group{{Name: "v"}}
	tests := []struct {
		name        string
		rule        Rule
		redis, http []Group
		want        []string
	}{
		{"bad url template", with(func(r *Rule) { r.URLs = []string{"/ok/{id}", "/item/{id.html"} }), redis, http,
			[]string{"rule[1] (shop.item): urls[1]", `"/item/{id.html"`, "offset 6"}},
		{"bad tag column", with(func(r *Rule) { r.Tags = []string{"item-{1d}"} }), redis, http,
			[]string{"rule[1] (shop.item): tags[0]", `"1d" at offset 5 is not a column name`}},
		{"no target", with(func(r *Rule) { r.Keys = nil }), redis, http, []string{"rule[1] (shop.item): no target"}},
		{"urls without http group", with(func(r *Rule) { r.URLs = []string{"/i/{id}"} }), redis, nil,
			[]string{"rule[1] (shop.item): urls and tags need at least one [[http_group]]"}},
		{"keys without redis group", with(func(r *Rule) { r.Keys, r.Tags = []string{"k"}, []string{"t"} }), nil, http,
			[]string{"rule[0] (shop.item): keys need at least one [[redis_group]]"}},
		{"unknown action", with(func(r *Rule) { r.Actions = []string{"insert", "upsert"} }), redis, http,
			[]string{"rule[1] (shop.item): actions[1]", `"upsert"`}},
		{"both conditions", with(func(r *Rule) { r.Changed, r.IgnoreChanges = []string{"a"}, []string{"b"} }), redis, http,
			[]string{"rule[1] (shop.item): changed and ignore_changes are mutually exclusive"}},
		{"bad condition column", with(func(r *Rule) { r.IgnoreChanges = []string{"view count"} }), redis, http,
			[]string{"rule[1] (shop.item): ignore_changes[0]", `"view count"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			specs := []Rule{tt.rule}
			if tt.redis != nil {
				specs = []Rule{ok, tt.rule}
			}
			_, err := NewRulesWithGroups(specs, tt.redis, tt.http)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestBindChecksConditionAndTargetColumns(t *testing.T) {
	for _, tt := range []struct {
		rule Rule
		want string
	}{
		{Rule{Changed: []string{"price"}}, `rule[0] (shop.item): changed: column "price" is not in shop.item`},
		{Rule{IgnoreChanges: []string{"view_count", "updated_at"}}, `rule[0] (shop.item): ignore_changes: column "updated_at" is not in shop.item`},
		{Rule{URLs: []string{"/i/{slug}.html"}}, `rule[0] (shop.item): url "/i/{slug}.html": column "slug" is not in shop.item`},
		{Rule{Tags: []string{"shop-{shop}"}}, `rule[0] (shop.item): tag "shop-{shop}": column "shop" is not in shop.item`},
	} {
		spec := tt.rule
		spec.Table, spec.RouteBy = "shop.item", "id"
		if len(spec.URLs)+len(spec.Tags) == 0 {
			spec.Keys = []string{"item:{id}"}
		}
		_, err := tierRules(t, spec).Bind("shop.item", itemColumns)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("err = %v, want %q", err, tt.want)
		}
	}
}

func TestTableWithoutRulesCostsNothing(t *testing.T) {
	r := testRules(t)
	b, err := r.Bind("shop.log", []string{"id", "msg"})
	if b != nil || err != nil {
		t.Fatalf("Bind = %v, %v; want nil, nil", b, err)
	}
	batch := r.NewBatch()
	row := []any{int64(1), "x"}
	if n := testing.AllocsPerRun(100, func() { b.ApplyRow(Update, row, row, batch) }); n != 0 {
		t.Errorf("ApplyRow on a nil Bound allocates %v times", n)
	}
	if batch.Len() != 0 {
		t.Errorf("nil Bound added %d targets", batch.Len())
	}
}

func TestBatchHTTPAndGrowth(t *testing.T) {
	b := NewBatch(1) // the old constructor: Redis groups only; grows on demand
	b.AddURL(2, "/a")
	b.AddURL(2, "/a")
	b.AddTag(2, "/a")
	b.Add(0, "k")
	if b.Len() != 3 || b.Bytes() != 5 || b.NumHTTPGroups() != 3 || b.URLs(0) != nil || b.Tags(9) != nil {
		t.Fatalf("len %d bytes %d http groups %d", b.Len(), b.Bytes(), b.NumHTTPGroups())
	}
	b.Reset()
	if b.Len() != 0 || len(b.URLs(2)) != 0 || len(b.Tags(2)) != 0 || len(b.Keys(0)) != 0 {
		t.Fatal("Reset left targets")
	}
	b.AddTag(2, "/a")
	if !slices.Equal(b.Tags(2), []string{"/a"}) {
		t.Fatalf("after reset: %v", b.Tags(2))
	}
}
