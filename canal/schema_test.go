package canal

import (
	"slices"
	"strings"
	"testing"

	"github.com/pingcap/tidb/pkg/parser"
)

func TestApplyDDL(t *testing.T) {
	all := func(string) bool { return true }
	base := &Schema{Tables: map[string][]string{"shop.item": {"id", "name", "price"}}}
	tests := []struct {
		name, query string
		table       string
		want        []string
		uncertain   string
	}{
		{"add at end", "ALTER TABLE item ADD COLUMN stock INT", "shop.item", []string{"id", "name", "price", "stock"}, ""},
		{"add first", "ALTER TABLE shop.item ADD COLUMN x INT FIRST", "shop.item", []string{"x", "id", "name", "price"}, ""},
		{"add after", "ALTER TABLE item ADD x INT AFTER id", "shop.item", []string{"id", "x", "name", "price"}, ""},
		{"add two", "ALTER TABLE item ADD (a INT, b INT)", "shop.item", []string{"id", "name", "price", "a", "b"}, ""},
		{"add if not exists, exists", "ALTER TABLE item ADD COLUMN IF NOT EXISTS name INT", "shop.item", []string{"id", "name", "price"}, ""},
		{"drop", "ALTER TABLE item DROP COLUMN name", "shop.item", []string{"id", "price"}, ""},
		{"drop if exists, absent", "ALTER TABLE item DROP COLUMN IF EXISTS nope", "shop.item", []string{"id", "name", "price"}, ""},
		{"reorder", "ALTER TABLE item MODIFY price DECIMAL(10,2) AFTER id", "shop.item", []string{"id", "price", "name"}, ""},
		{"change and move first", "ALTER TABLE item CHANGE name title VARCHAR(9) FIRST", "shop.item", []string{"title", "id", "price"}, ""},
		{"rename column", "ALTER TABLE item RENAME COLUMN price TO cost", "shop.item", []string{"id", "name", "cost"}, ""},
		{"several clauses", "ALTER TABLE item DROP name, ADD name2 INT FIRST", "shop.item", []string{"name2", "id", "price"}, ""},
		{"create", "CREATE TABLE shop.n (a INT, b INT)", "shop.n", []string{"a", "b"}, ""},
		{"create like", "CREATE TABLE shop.copy LIKE shop.item", "shop.copy", []string{"id", "name", "price"}, ""},
		{"rename table", "RENAME TABLE item TO item2", "shop.item2", []string{"id", "name", "price"}, ""},
		{"alter rename", "ALTER TABLE item RENAME TO shop.item3", "shop.item3", []string{"id", "name", "price"}, ""},
		{"index only", "CREATE INDEX i ON item (name)", "shop.item", []string{"id", "name", "price"}, ""},
		{"drop unknown column", "ALTER TABLE item DROP COLUMN nope", "shop.item", nil, "no such column"},
		{"not understood", "ALTER ONLINE TABLE item ADD COLUMN c INT", "shop.item", nil, "DDL not understood"},
		{"create or replace", "CREATE OR REPLACE TABLE item (a INT)", "shop.item", nil, "DDL not understood"},
		{"create select", "CREATE TABLE shop.s SELECT * FROM shop.item", "shop.s", nil, "not replayable"},
	}
	p := parser.New()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, touched := base.ApplyDDL(p, "shop", tt.query, all)
			if len(touched) == 0 && tt.name != "index only" {
				t.Fatalf("no table touched")
			}
			cols, why := got.Columns(tt.table)
			if tt.uncertain != "" {
				if !strings.Contains(why, tt.uncertain) {
					t.Fatalf("why = %q, want it to contain %q", why, tt.uncertain)
				}
				return
			}
			if why != "" || !slices.Equal(cols, tt.want) {
				t.Fatalf("columns = %v (%s), want %v", cols, why, tt.want)
			}
			if c, _ := base.Columns("shop.item"); !slices.Equal(c, []string{"id", "name", "price"}) {
				t.Fatalf("ApplyDDL modified its receiver: %v", c)
			}
		})
	}
}

func TestDropTableForgetsIt(t *testing.T) {
	base := &Schema{Tables: map[string][]string{"shop.item": {"id"}}}
	got, _ := base.ApplyDDL(parser.New(), "shop", "DROP TABLE item", func(string) bool { return true })
	if _, why := got.Columns("shop.item"); why == "" {
		t.Fatal("dropped table still known")
	}
}

func FuzzApplyDDL(f *testing.F) {
	for _, q := range []string{"ALTER TABLE item ADD x INT FIRST", "RENAME TABLE item TO b", "CREATE TABLE a (x int)", "DROP TABLE item", "ALTER TABLE item CHANGE name n INT AFTER price"} {
		f.Add(q)
	}
	p := parser.New()
	f.Fuzz(func(t *testing.T, q string) {
		base := &Schema{Tables: map[string][]string{"shop.item": {"id", "name", "price"}}}
		got, _ := base.ApplyDDL(p, "shop", q, func(string) bool { return true })
		// Whatever the query, every table is either known with distinct
		// columns or marked uncertain, never both.
		for tbl, cols := range got.Tables {
			if _, bad := got.Uncertain[tbl]; bad {
				t.Fatalf("%s both known and uncertain after %q", tbl, q)
			}
			seen := map[string]bool{}
			for _, c := range cols {
				if seen[strings.ToLower(c)] {
					t.Fatalf("%s has column %s twice after %q: %v", tbl, c, q, cols)
				}
				seen[strings.ToLower(c)] = true
			}
		}
	})
}
