package invalidate

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/flashsync/flashsync/internal/route"
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

// ParseAction parses "insert", "update" or "delete".
func ParseAction(s string) (Action, error) {
	for _, a := range []Action{Insert, Update, Delete} {
		if s == a.String() {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown action %q (insert, update, delete)", s)
}

// actionSet is a bit set of Actions.
type actionSet uint8

const allActions = actionSet(1<<Insert | 1<<Update | 1<<Delete)

func (s actionSet) has(a Action) bool { return a < 8 && s&(1<<a) != 0 }

func (s actionSet) String() string {
	var names []string
	for _, a := range []Action{Insert, Update, Delete} {
		if s.has(a) {
			names = append(names, a.String())
		}
	}
	return strings.Join(names, ", ")
}

// Kind is the kind of a cache target.
type Kind uint8

const (
	// KindKey is a Redis key, purged in a Redis group.
	KindKey Kind = iota
	// KindURL is an HTTP URL or path, purged in an HTTP group.
	KindURL
	// KindTag is a surrogate key (xkey tag), purged in an HTTP group.
	KindTag
	numKinds
)

func (k Kind) String() string {
	switch k {
	case KindKey:
		return "key"
	case KindURL:
		return "url"
	case KindTag:
		return "tag"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Tier is the cache tier a kind of target is purged in.
func (k Kind) Tier() Tier {
	if k == KindKey {
		return TierRedis
	}
	return TierHTTP
}

// Tier is a layer of caches, as job targets and acks name it on the wire.
type Tier string

const (
	// TierRedis is the Redis groups' replicas, purged by key.
	TierRedis Tier = "redis"
	// TierHTTP is the HTTP groups' instances (Varnish), purged by URL and tag.
	TierHTTP Tier = "http"
	// TierCDN is the CDN nodes' consoles, sent every URL and tag.
	TierCDN Tier = "cdn"
)

// The arrays kept per tier a rule routes in (group counts, routed groups)
// are indexed by these, not by Tier: no string compare on the hot path.
const (
	redisTier = iota
	httpTier
)

// index is t's position in the arrays kept per tier.
func (t Tier) index() int {
	if t == TierRedis {
		return redisTier
	}
	return httpTier
}

// tierIndex is the index of the tier k is purged in.
func (k Kind) tierIndex() int {
	if k == KindKey {
		return redisTier
	}
	return httpTier
}

// Rules turns row changes into cache targets routed to groups: keys to the
// Redis groups, URLs and tags to the HTTP groups.
type Rules struct {
	redis   []Group
	http    []Group
	byTable map[string][]*rule
}

type rule struct {
	name      string // "rule[i] (db.table)" for errors
	table     string
	templates [numKinds][]*Template
	routeBy   string
	actions   actionSet
	changed   []string
	ignore    []string
	sync      []syncRule
}

// Rule maps the rows of one table to cache targets (configs' [[rule]]
// documents each field).
type Rule struct {
	Table         string
	Keys          []string
	URLs          []string
	Tags          []string
	RouteBy       string
	Actions       []string
	Changed       []string
	IgnoreChanges []string
	// Sync are keys kept equal to the row (sync mode), in the Redis groups.
	Sync []SyncTarget
}

// NewRules parses rules that route only to Redis groups, named in routing
// order. A rule with urls or tags is an error; use NewRulesWithGroups.
func NewRules(specs []Rule, redisGroups []string) (*Rules, error) {
	groups := make([]Group, len(redisGroups))
	for i, g := range redisGroups {
		groups[i].Name = g
	}
	return NewRulesWithGroups(specs, groups, nil)
}

// NewRulesWithGroups parses every template once, at start; an error names
// the rule and the template (and, for syntax, the offset). Keys route to the
// redis groups, URLs and tags to the http groups, both in routing order.
func NewRulesWithGroups(specs []Rule, redis, http []Group) (*Rules, error) {
	r := &Rules{redis: redis, http: http, byTable: map[string][]*rule{}}
	for i, s := range specs {
		ru := &rule{name: fmt.Sprintf("rule[%d] (%s)", i, s.Table), table: s.Table, routeBy: s.RouteBy,
			changed: s.Changed, ignore: s.IgnoreChanges}
		if !isColumnName(s.RouteBy) {
			return nil, fmt.Errorf("%s: route_by %q is not a column name", ru.name, s.RouteBy)
		}
		for kind, srcs := range [numKinds][]string{KindKey: s.Keys, KindURL: s.URLs, KindTag: s.Tags} {
			for j, src := range srcs {
				t, err := ParseTemplate(src)
				if err != nil {
					return nil, fmt.Errorf("%s: %ss[%d]: %w", ru.name, Kind(kind), j, err)
				}
				ru.templates[kind] = append(ru.templates[kind], t)
			}
		}
		for j, st := range s.Sync {
			sr, err := parseSyncTarget(ru.name, j, st)
			if err != nil {
				return nil, err
			}
			ru.sync = append(ru.sync, sr)
		}
		switch {
		case len(s.Keys)+len(s.URLs)+len(s.Tags)+len(s.Sync) == 0:
			return nil, fmt.Errorf("%s: no target; a rule needs at least one of keys, urls, tags, sync", ru.name)
		case len(s.Keys) > 0 && len(redis) == 0:
			return nil, fmt.Errorf("%s: keys need at least one [[redis_group]]", ru.name)
		case len(s.Sync) > 0 && len(redis) == 0:
			return nil, fmt.Errorf("%s: sync needs at least one [[redis_group]]", ru.name)
		case len(s.URLs)+len(s.Tags) > 0 && len(http) == 0:
			return nil, fmt.Errorf("%s: urls and tags need at least one [[http_group]]", ru.name)
		}
		if len(s.Actions) == 0 {
			ru.actions = allActions
		}
		for j, name := range s.Actions {
			a, err := ParseAction(name)
			if err != nil {
				return nil, fmt.Errorf("%s: actions[%d]: %w", ru.name, j, err)
			}
			ru.actions |= 1 << a
		}
		if len(s.Changed) > 0 && len(s.IgnoreChanges) > 0 {
			return nil, fmt.Errorf("%s: changed and ignore_changes are mutually exclusive", ru.name)
		}
		for _, cond := range []struct {
			key  string
			cols []string
		}{{"changed", s.Changed}, {"ignore_changes", s.IgnoreChanges}} {
			for j, col := range cond.cols {
				if !isColumnName(col) {
					return nil, fmt.Errorf("%s: %s[%d]: %q is not a column name", ru.name, cond.key, j, col)
				}
			}
		}
		r.byTable[s.Table] = append(r.byTable[s.Table], ru)
	}
	return r, nil
}

// Groups returns the Redis group names in routing order.
func (r *Rules) Groups() []string {
	names := make([]string, len(r.redis))
	for i, g := range r.redis {
		names[i] = g.Name
	}
	return names
}

// RedisGroups returns the Redis groups in routing order.
func (r *Rules) RedisGroups() []Group { return r.redis }

// HTTPGroups returns the HTTP groups (Replicas holds their instances) in
// routing order.
func (r *Rules) HTTPGroups() []Group { return r.http }

// Tables lists the tables that have rules.
func (r *Rules) Tables() []string {
	var ts []string
	for t := range r.byTable {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	return ts
}

// NewBatch makes a batch sized for the Redis and HTTP groups.
func (r *Rules) NewBatch() *Batch { return newBatch(len(r.redis), len(r.http)) }

// Bound is a table's rules resolved against its columns: column names become
// indexes once per schema, not once per row. A Bound is not safe for
// concurrent use (it reuses a buffer); a nil *Bound applies nothing.
type Bound struct {
	table  string
	groups [2]int // per Tier
	rules  []boundRule
	buf    []byte
}

type boundRule struct {
	src       *rule
	templates [numKinds][][]boundPart
	route     int
	actions   actionSet
	changed   []int  // column indexes; fire only if one of them changed
	ignored   []bool // per column, nil without ignore_changes
	sync      []boundSync
}

type boundPart struct {
	lit string
	col int // -1 for a literal
}

// Bind resolves the rules of table against its columns. It returns nil, nil
// for a table without rules, so callers skip its rows at the cost of one map
// lookup per schema; an error names the rule and the missing column.
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
	b := &Bound{table: table, groups: [2]int{redisTier: len(r.redis), httpTier: len(r.http)}}
	for _, ru := range rules {
		route, err := index(ru, "route_by", ru.routeBy)
		if err != nil {
			return nil, err
		}
		br := boundRule{src: ru, route: route, actions: ru.actions}
		for kind, ts := range ru.templates {
			for _, t := range ts {
				var parts []boundPart
				for _, p := range t.parts {
					if p.column == "" {
						parts = append(parts, boundPart{lit: p.lit, col: -1})
						continue
					}
					i, err := index(ru, fmt.Sprintf("%s %q", Kind(kind), t.src), p.column)
					if err != nil {
						return nil, err
					}
					parts = append(parts, boundPart{col: i})
				}
				br.templates[kind] = append(br.templates[kind], parts)
			}
		}
		for _, col := range ru.changed {
			i, err := index(ru, "changed", col)
			if err != nil {
				return nil, err
			}
			br.changed = append(br.changed, i)
		}
		if len(ru.ignore) > 0 {
			br.ignored = make([]bool, len(columns))
			for _, col := range ru.ignore {
				i, err := index(ru, "ignore_changes", col)
				if err != nil {
					return nil, err
				}
				br.ignored[i] = true
			}
		}
		for j := range ru.sync {
			bs, err := bindSync(&ru.sync[j], columns, func(what, col string) (int, error) { return index(ru, what, col) })
			if err != nil {
				return nil, err
			}
			br.sync = append(br.sync, bs)
		}
		b.rules = append(b.rules, br)
	}
	return b, nil
}

// decision is why a rule fires for a row or not.
type decision uint8

const (
	fires           decision = iota // no condition applies
	firesChanged                    // update: a column in changed changed
	firesNotIgnored                 // update: a column outside ignore_changes changed
	skipsAction                     // the action is not in actions
	skipsUnchanged                  // update: no column in changed changed
	skipsIgnored                    // update: every changed column is in ignore_changes
)

func (d decision) fired() bool { return d <= firesNotIgnored }

// decide evaluates the rule's conditions. An UPDATE whose images cannot be
// compared (missing or short) fires: purging too much is safe.
func (ru *boundRule) decide(action Action, before, after []any) decision {
	if !ru.actions.has(action) {
		return skipsAction
	}
	if action != Update || before == nil || after == nil {
		return fires
	}
	switch {
	case ru.changed != nil:
		for _, i := range ru.changed {
			if i >= len(before) || i >= len(after) || !valuesEqual(before[i], after[i]) {
				return firesChanged
			}
		}
		return skipsUnchanged
	case ru.ignored != nil:
		if len(before) != len(after) || len(before) > len(ru.ignored) {
			return firesNotIgnored
		}
		for i := range before {
			if !ru.ignored[i] && !valuesEqual(before[i], after[i]) {
				return firesNotIgnored
			}
		}
		return skipsIgnored
	}
	return fires
}

// ApplyRow adds to out the targets of every rule of the table that fires for
// one row change: for an insert the after image, for a delete the before
// image, for an update both, so a changed key column purges the old and the
// new target. Conditions (actions, changed, ignore_changes) are evaluated
// first. A target whose columns hold NULL names nothing and is skipped; a
// NULL route value sends the row's targets to every group of the tier.
//
// ApplyRow knows no version, so a rule's sync keys are deleted like its
// keys (a later sync write, newer than the key's stored version, writes
// them again); the canal calls ApplyRowAt.
func (b *Bound) ApplyRow(action Action, before, after []any, out *Batch) {
	b.apply(nil, action, before, after, out)
}

// ApplyRowAt is ApplyRow for the change at version v: sync targets write
// the after image (insert, update) or delete the key (delete; an update's
// old key when its key changed), each write at v.
func (b *Bound) ApplyRowAt(v SyncVersion, action Action, before, after []any, out *Batch) {
	b.apply(&v, action, before, after, out)
}

func (b *Bound) apply(v *SyncVersion, action Action, before, after []any, out *Batch) {
	if b == nil {
		return
	}
	for i := range b.rules {
		ru := &b.rules[i]
		if !ru.decide(action, before, after).fired() {
			continue
		}
		switch action {
		case Insert:
			b.render(ru, after, out)
		case Delete:
			b.render(ru, before, out)
		default:
			b.render(ru, before, out)
			b.render(ru, after, out)
		}
		if len(ru.sync) > 0 {
			b.renderSync(ru, v, action, before, after, out)
		}
	}
}

// renderSync adds ru's sync writes for one row change: the key rendered
// from the after image gets the after image; the key rendered from the
// before image, if it differs (or the row was deleted), is deleted.
// Without a version both keys are deleted.
func (b *Bound) renderSync(ru *boundRule, v *SyncVersion, action Action, before, after []any, out *Batch) {
	if action == Insert {
		before = nil
	}
	if action == Delete {
		after = nil
	}
	for i := range ru.sync {
		bs := &ru.sync[i]
		var oldKey string
		if before != nil {
			if buf, ok := renderParts(b.buf[:0], bs.key, before); ok {
				oldKey = string(buf)
			}
		}
		newKey := ""
		if after != nil {
			if buf, ok := renderParts(b.buf[:0], bs.key, after); ok {
				newKey = string(buf)
			}
		}
		// emit sends key, routed by the image it was rendered from, the
		// write of value (nil: a delete).
		emit := func(key string, routeImage, value []any) {
			route := b.routeGroups(ru, routeImage)[redisTier]
			for g := 0; g < b.groups[redisTier]; g++ {
				if route >= 0 && g != route {
					continue
				}
				if v == nil {
					out.add(KindKey, g, []byte(key))
				} else {
					out.addSync(g, bs.write(key, *v, value))
				}
			}
		}
		if oldKey != "" && oldKey != newKey {
			emit(oldKey, before, nil)
		}
		if newKey != "" {
			emit(newKey, after, after)
		}
	}
}

// routeGroups returns the group of each tier the image routes to, or -1 for
// a NULL route value (every group).
func (b *Bound) routeGroups(ru *boundRule, image []any) [2]int {
	g := [2]int{-1, -1}
	if ru.route >= len(image) {
		return g
	}
	var ok bool
	if b.buf, ok = appendValue(b.buf[:0], image[ru.route]); ok {
		g[redisTier] = route.GroupFor(b.buf, b.groups[redisTier])
		g[httpTier] = route.GroupFor(b.buf, b.groups[httpTier])
	}
	return g
}

func (b *Bound) render(ru *boundRule, image []any, out *Batch) {
	if image == nil {
		return
	}
	route := b.routeGroups(ru, image)
	for kind, ts := range ru.templates {
		tier := Kind(kind).tierIndex()
		for _, parts := range ts {
			var ok bool
			if b.buf, ok = renderParts(b.buf[:0], parts, image); !ok {
				continue
			}
			if g := route[tier]; g >= 0 {
				out.add(Kind(kind), g, b.buf)
				continue
			}
			for g := 0; g < b.groups[tier]; g++ {
				out.add(Kind(kind), g, b.buf)
			}
		}
	}
}

// renderParts appends one template rendered over image; false if a column
// is NULL or missing.
func renderParts(buf []byte, parts []boundPart, image []any) ([]byte, bool) {
	for _, p := range parts {
		if p.col < 0 {
			buf = append(buf, p.lit...)
			continue
		}
		if p.col >= len(image) {
			return buf, false
		}
		var ok bool
		if buf, ok = appendValue(buf, image[p.col]); !ok {
			return buf, false
		}
	}
	return buf, true
}

// valuesEqual compares two column values as go-mysql decodes them (integers
// of every width, floats, strings for text, DECIMAL and temporal types,
// []byte for blobs and JSON, time.Time, nil for NULL). Values of different
// types (as from JSON) compare by their text form, the one keys use.
func valuesEqual(a, b any) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case string:
		if y, ok := b.(string); ok {
			return x == y
		}
	case []byte:
		if y, ok := b.([]byte); ok {
			return bytes.Equal(x, y)
		}
	case int64:
		if y, ok := b.(int64); ok {
			return x == y
		}
	case int32:
		if y, ok := b.(int32); ok {
			return x == y
		}
	case int16:
		if y, ok := b.(int16); ok {
			return x == y
		}
	case int8:
		if y, ok := b.(int8); ok {
			return x == y
		}
	case int:
		if y, ok := b.(int); ok {
			return x == y
		}
	case uint64:
		if y, ok := b.(uint64); ok {
			return x == y
		}
	case uint32:
		if y, ok := b.(uint32); ok {
			return x == y
		}
	case uint16:
		if y, ok := b.(uint16); ok {
			return x == y
		}
	case uint8:
		if y, ok := b.(uint8); ok {
			return x == y
		}
	case uint:
		if y, ok := b.(uint); ok {
			return x == y
		}
	case float64:
		if y, ok := b.(float64); ok {
			return x == y
		}
	case float32:
		if y, ok := b.(float32); ok {
			return x == y
		}
	case time.Time:
		if y, ok := b.(time.Time); ok {
			return x.Equal(y)
		}
	}
	if b == nil {
		return false
	}
	var sa, sb [64]byte
	ta, _ := appendValue(sa[:0], a)
	tb, _ := appendValue(sb[:0], b)
	return bytes.Equal(ta, tb)
}

// Batch collects the distinct targets of one flush: keys per Redis group,
// URLs and tags per HTTP group, each deduplicated.
type Batch struct {
	redis []targetSet // keys
	// admin-only kinds per Redis group: patterns, flush
	patterns []targetSet
	flush    []bool
	sync     []syncSet    // sync writes per Redis group
	http     []httpTarget // urls and tags
	n        int
	bytes    int
}

type targetSet struct {
	list []string
	seen map[string]struct{}
}

type httpTarget struct{ urls, tags, bans targetSet }

func newBatch(redis, http int) *Batch {
	return &Batch{redis: make([]targetSet, redis), http: make([]httpTarget, http)}
}

// NewBatch makes a batch for n Redis groups and no HTTP group; it grows if
// targets of more groups are added. Rules.NewBatch sizes both tiers.
func NewBatch(n int) *Batch { return newBatch(n, 0) }

func (b *Batch) set(kind Kind, group int) *targetSet {
	if kind == kindPattern {
		for len(b.patterns) <= group {
			b.patterns = append(b.patterns, targetSet{})
		}
		for len(b.redis) <= group {
			b.redis = append(b.redis, targetSet{})
		}
		return &b.patterns[group]
	}
	if kind == KindKey {
		for len(b.redis) <= group {
			b.redis = append(b.redis, targetSet{})
		}
		return &b.redis[group]
	}
	for len(b.http) <= group {
		b.http = append(b.http, httpTarget{})
	}
	if kind == KindURL {
		return &b.http[group].urls
	}
	if kind == kindBan {
		return &b.http[group].bans
	}
	return &b.http[group].tags
}

func (b *Batch) add(kind Kind, group int, target []byte) {
	s := b.set(kind, group)
	if s.seen == nil {
		s.seen = map[string]struct{}{}
	} else if _, dup := s.seen[string(target)]; dup {
		return
	}
	t := string(target)
	s.seen[t] = struct{}{}
	s.list = append(s.list, t)
	b.n++
	b.bytes += len(t)
}

// Add adds a key to a Redis group, once.
func (b *Batch) Add(group int, key string) { b.add(KindKey, group, []byte(key)) }

// AddURL adds a URL to an HTTP group, once.
func (b *Batch) AddURL(group int, url string) { b.add(KindURL, group, []byte(url)) }

// AddTag adds a tag to an HTTP group, once.
func (b *Batch) AddTag(group int, tag string) { b.add(KindTag, group, []byte(tag)) }

// kindPattern is a batch's Redis glob patterns (not a rule's kind).
const kindPattern Kind = 255

// kindBan is a batch's URL regexes to ban (not a rule's kind).
const kindBan Kind = 254

// AddBan adds a ban (a regex on the request URL) to an HTTP group, once.
func (b *Batch) AddBan(group int, ban string) { b.add(kindBan, group, []byte(ban)) }

// Bans returns an HTTP group's bans in the order they were first added.
func (b *Batch) Bans(group int) []string {
	if group >= len(b.http) {
		return nil
	}
	return b.http[group].bans.list
}

// AddPattern adds a Redis glob pattern to a Redis group, once: every
// replica unlinks the keys that match it.
func (b *Batch) AddPattern(group int, pattern string) { b.add(kindPattern, group, []byte(pattern)) }

// AddFlush asks every replica of a Redis group to empty its database.
func (b *Batch) AddFlush(group int) {
	for len(b.flush) <= group {
		b.flush = append(b.flush, false)
	}
	for len(b.redis) <= group {
		b.redis = append(b.redis, targetSet{})
	}
	if !b.flush[group] {
		b.flush[group] = true
		b.n++
	}
}

// Patterns returns a Redis group's patterns in the order they were first added.
func (b *Batch) Patterns(group int) []string {
	if group >= len(b.patterns) {
		return nil
	}
	return b.patterns[group].list
}

// Flush tells whether a Redis group is to be flushed.
func (b *Batch) Flush(group int) bool { return group < len(b.flush) && b.flush[group] }

// HasRedis tells whether a Redis group receives anything: keys, patterns or a flush.
func (b *Batch) HasRedis(group int) bool {
	return len(b.Keys(group))+len(b.Patterns(group))+len(b.Sync(group)) > 0 || b.Flush(group)
}

// Len is the number of distinct targets (per group and kind).
func (b *Batch) Len() int { return b.n }

// Bytes is the total size of the distinct targets.
func (b *Batch) Bytes() int { return b.bytes }

// Keys returns a Redis group's keys in the order they were first added.
func (b *Batch) Keys(group int) []string {
	if group >= len(b.redis) {
		return nil
	}
	return b.redis[group].list
}

// URLs returns an HTTP group's URLs in the order they were first added.
func (b *Batch) URLs(group int) []string {
	if group >= len(b.http) {
		return nil
	}
	return b.http[group].urls.list
}

// Tags returns an HTTP group's tags in the order they were first added.
func (b *Batch) Tags(group int) []string {
	if group >= len(b.http) {
		return nil
	}
	return b.http[group].tags.list
}

// NumGroups is the number of Redis groups the batch routes keys to.
func (b *Batch) NumGroups() int { return len(b.redis) }

// NumHTTPGroups is the number of HTTP groups the batch routes URLs and tags to.
func (b *Batch) NumHTTPGroups() int { return len(b.http) }

// Reset empties the batch for reuse.
func (b *Batch) Reset() {
	reset := func(s *targetSet) {
		s.list = s.list[:0]
		clear(s.seen)
	}
	for i := range b.redis {
		reset(&b.redis[i])
	}
	for i := range b.patterns {
		reset(&b.patterns[i])
	}
	clear(b.flush)
	for i := range b.sync {
		b.sync[i].list = b.sync[i].list[:0]
		clear(b.sync[i].at)
	}
	for i := range b.http {
		reset(&b.http[i].urls)
		reset(&b.http[i].tags)
		reset(&b.http[i].bans)
	}
	b.n, b.bytes = 0, 0
}
