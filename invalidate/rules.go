package invalidate

import (
	"fmt"
	"slices"
	"strings"

	"github.com/flashsync/flashsync/configs"
)

// Action is what happened to a row.
type Action uint8

const (
	Insert Action = iota + 1
	Update
	Delete
)

func (a Action) String() string {
	switch a {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Change is one row change. Before is nil for an insert, After for a delete;
// both images use Columns.
type Change struct {
	Table   string
	Action  Action
	Columns []string
	Before  []any
	After   []any
}

// Rules turns row changes into cache keys routed to Redis groups.
type Rules struct {
	groups  []string
	byTable map[string][]*rule
}

type rule struct {
	name    string // "rule[i]" for errors
	table   string
	keys    []*Template
	routeBy string
}

// NewRules parses every template once; an error names the rule and template.
func NewRules(specs []configs.Rule, groups []string) (*Rules, error) {
	if len(specs) > 0 && len(groups) == 0 {
		return nil, fmt.Errorf("rules need at least one redis group")
	}
	r := &Rules{groups: groups, byTable: map[string][]*rule{}}
	for i, s := range specs {
		ru := &rule{name: fmt.Sprintf("rule[%d] (%s)", i, s.Table), table: s.Table, routeBy: s.RouteBy}
		if !isColumnName(s.RouteBy) {
			return nil, fmt.Errorf("%s: route_by %q is not a column name", ru.name, s.RouteBy)
		}
		for j, src := range s.Keys {
			t, err := ParseTemplate(src)
			if err != nil {
				return nil, fmt.Errorf("%s: keys[%d]: %w", ru.name, j, err)
			}
			ru.keys = append(ru.keys, t)
		}
		r.byTable[s.Table] = append(r.byTable[s.Table], ru)
	}
	return r, nil
}

// Groups returns the group names in routing order.
func (r *Rules) Groups() []string { return r.groups }

// Tables lists the tables that have rules.
func (r *Rules) Tables() []string {
	var ts []string
	for t := range r.byTable {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	return ts
}

// Bound is a table's rules resolved against its columns: column names become
// indexes once per schema, not once per row.
type Bound struct {
	table  string
	groups int
	rules  []boundRule
	buf    []byte
}

type boundRule struct {
	keys  [][]boundPart
	route int
}

type boundPart struct {
	lit string
	col int // -1 for a literal
}

// Bind resolves the rules of table against its columns. It returns nil, nil
// for a table without rules; an error names the rule and the missing column.
func (r *Rules) Bind(table string, columns []string) (*Bound, error) {
	rules := r.byTable[table]
	if len(rules) == 0 {
		return nil, nil
	}
	index := func(ru *rule, what, col string) (int, error) {
		if i := slices.Index(columns, col); i >= 0 {
			return i, nil
		}
		return 0, fmt.Errorf("%s: %s: column %q is not in %s (columns: %s)", ru.name, what, col, table, strings.Join(columns, ", "))
	}
	b := &Bound{table: table, groups: len(r.groups)}
	for _, ru := range rules {
		route, err := index(ru, "route_by", ru.routeBy)
		if err != nil {
			return nil, err
		}
		br := boundRule{route: route}
		for _, t := range ru.keys {
			var parts []boundPart
			for _, p := range t.parts {
				if p.column == "" {
					parts = append(parts, boundPart{lit: p.lit, col: -1})
					continue
				}
				i, err := index(ru, fmt.Sprintf("key %q", t.src), p.column)
				if err != nil {
					return nil, err
				}
				parts = append(parts, boundPart{col: i})
			}
			br.keys = append(br.keys, parts)
		}
		b.rules = append(b.rules, br)
	}
	return b, nil
}

// Apply adds the keys of one row image to out. An UPDATE calls it for the
// before and the after image, so a changed key column purges old and new keys.
// A key whose columns hold NULL names nothing and is skipped; a NULL route
// value sends the row's keys to every group.
func (b *Bound) Apply(image []any, out *Batch) {
	if image == nil {
		return
	}
	for _, ru := range b.rules {
		group := -1
		if ru.route < len(image) {
			var ok bool
			b.buf, ok = appendValue(b.buf[:0], image[ru.route])
			if ok {
				group = GroupFor(b.buf, b.groups)
			}
		}
	keys:
		for _, parts := range ru.keys {
			b.buf = b.buf[:0]
			for _, p := range parts {
				if p.col < 0 {
					b.buf = append(b.buf, p.lit...)
					continue
				}
				if p.col >= len(image) {
					continue keys
				}
				var ok bool
				if b.buf, ok = appendValue(b.buf, image[p.col]); !ok {
					continue keys
				}
			}
			if group >= 0 {
				out.add(group, b.buf)
				continue
			}
			for g := 0; g < b.groups; g++ {
				out.add(g, b.buf)
			}
		}
	}
}

// ApplyChange adds the keys of both images of c.
func (b *Bound) ApplyChange(c *Change, out *Batch) {
	b.Apply(c.Before, out)
	b.Apply(c.After, out)
}

// Batch collects the distinct keys per group of one flush.
type Batch struct {
	groups []groupKeys
	keys   int
	bytes  int
}

type groupKeys struct {
	keys []string
	seen map[string]struct{}
}

// NewBatch makes a batch for n groups.
func NewBatch(n int) *Batch {
	b := &Batch{groups: make([]groupKeys, n)}
	for i := range b.groups {
		b.groups[i].seen = map[string]struct{}{}
	}
	return b
}

func (b *Batch) add(group int, key []byte) {
	g := &b.groups[group]
	if _, dup := g.seen[string(key)]; dup {
		return
	}
	k := string(key)
	g.seen[k] = struct{}{}
	g.keys = append(g.keys, k)
	b.keys++
	b.bytes += len(k)
}

// Add adds key to group, once.
func (b *Batch) Add(group int, key string) { b.add(group, []byte(key)) }

// Len is the number of distinct keys.
func (b *Batch) Len() int { return b.keys }

// Bytes is the total size of the distinct keys.
func (b *Batch) Bytes() int { return b.bytes }

// Keys returns group's keys in the order they were first added.
func (b *Batch) Keys(group int) []string { return b.groups[group].keys }

// NumGroups is the number of groups the batch routes to.
func (b *Batch) NumGroups() int { return len(b.groups) }

// Reset empties the batch for reuse.
func (b *Batch) Reset() {
	for i := range b.groups {
		g := &b.groups[i]
		g.keys = g.keys[:0]
		clear(g.seen)
	}
	b.keys, b.bytes = 0, 0
}
