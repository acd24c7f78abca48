package invalidate

import (
	"slices"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/configs"
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
func TestGroupForGolden(t *testing.T) {
	tests := []struct {
		value string
		n     int
		want  int
	}{
		{"1", 2, 0}, {"2", 2, 1}, {"3", 2, 0}, {"101", 2, 0},
		{"1", 3, 1}, {"2", 3, 2}, {"42", 3, 2}, {"hello", 3, 1},
		{"anything", 1, 0},
	}
	for _, tt := range tests {
		if got := GroupFor([]byte(tt.value), tt.n); got != tt.want {
			t.Errorf("GroupFor(%q, %d) = %d, want %d", tt.value, tt.n, got, tt.want)
		}
	}
}

func testRules(t testing.TB) *Rules {
	t.Helper()
	r, err := NewRules([]configs.Rule{
		{Table: "shop.item", Keys: []string{"item:{id}", "item:page:{id}"}, RouteBy: "id"},
		{Table: "shop.item", Keys: []string{"shop:{shop_id}:items"}, RouteBy: "shop_id"},
	}, []string{"hot-a", "hot-b"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var itemColumns = []string{"id", "shop_id", "name", "view_count"}

// keysOf renders every image and returns "group:key" strings.
func keysOf(t *testing.T, b *Bound, images ...[]any) []string {
	t.Helper()
	batch := NewBatch(2)
	for _, img := range images {
		b.Apply(img, batch)
	}
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
		name   string
		images [][]any
		want   []string
	}{
		{"insert", [][]any{{int64(1), int32(7), "pen", int64(0)}},
			[]string{"a:item:1", "a:item:page:1", "b:shop:7:items"}},
		{"update, same key: purged once", [][]any{{int64(1), int32(7), "pen", int64(0)}, {int64(1), int32(7), "pencil", int64(1)}},
			[]string{"a:item:1", "a:item:page:1", "b:shop:7:items"}},
		{"primary key change purges old and new", [][]any{{int64(1), int32(7), "pen", int64(0)}, {int64(2), int32(7), "pen", int64(0)}},
			[]string{"a:item:1", "a:item:page:1", "b:item:2", "b:item:page:2", "b:shop:7:items"}},
		{"NULL key column names nothing", [][]any{{int64(3), nil, "x", int64(0)}},
			[]string{"a:item:3", "a:item:page:3"}},
		{"unsigned and text values", [][]any{{uint64(18446744073709551615), "7", []byte("x"), nil}},
			[]string{"a:item:18446744073709551615", "a:item:page:18446744073709551615", "b:shop:7:items"}},
		{"nil image (insert before, delete after)", [][]any{nil}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := keysOf(t, b, tt.images...); !slices.Equal(got, tt.want) {
				t.Fatalf("keys = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestApplyNullRouteGoesToEveryGroup(t *testing.T) {
	r, err := NewRules([]configs.Rule{{Table: "shop.item", Keys: []string{"item:{name}"}, RouteBy: "shop_id"}}, []string{"hot-a", "hot-b"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := r.Bind("shop.item", itemColumns)
	got := keysOf(t, b, []any{int64(1), nil, "pen", int64(0)})
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
	_, err := NewRules([]configs.Rule{{Table: "shop.item", Keys: []string{"ok:{id}", "bad:{id"}, RouteBy: "id"}}, []string{"g"})
	if err == nil || !strings.Contains(err.Error(), "rule[0] (shop.item): keys[1]") {
		t.Fatalf("err = %v, want it to name rule[0] keys[1]", err)
	}
	_, err = NewRules([]configs.Rule{{Table: "shop.item", Keys: []string{"ok:{id}"}, RouteBy: "id"}}, nil)
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
		cols := tpl.Columns()
		b, err := (&Rules{groups: []string{"g"}, byTable: map[string][]*rule{"d.t": {{keys: []*Template{tpl}, routeBy: "r"}}}}).
			Bind("d.t", append(slices.Clone(cols), "r"))
		if err != nil {
			t.Fatalf("bind %q: %v", src, err)
		}
		img := make([]any, len(cols)+1)
		for i, c := range cols {
			img[i] = c
		}
		img[len(cols)] = "route"
		batch := NewBatch(1)
		b.Apply(img, batch)
		if batch.Len() != 1 {
			t.Fatalf("template %q rendered %d keys", src, batch.Len())
		}
		var want strings.Builder
		for _, p := range tpl.parts {
			if p.column != "" {
				want.WriteString(p.column)
			} else {
				want.WriteString(p.lit)
			}
		}
		if got := batch.Keys(0)[0]; got != want.String() {
			t.Fatalf("template %q rendered %q, want %q", src, got, want.String())
		}
	})
}
