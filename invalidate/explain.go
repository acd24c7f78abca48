package invalidate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Explanation says what the rules do with one row change: which rules fire
// and why (or why not), the targets each renders, and what one batch would
// publish to each group. `flashsync rules explain` and POST /rules/explain
// print it.
type Explanation struct {
	Table   string   `json:"table"`
	Action  string   `json:"action"`
	Columns []string `json:"columns"`
	// ChangedColumns lists, for an update, the columns whose value differs
	// between the before and the after image.
	ChangedColumns []string `json:"changed_columns,omitempty"`
	// Notes are remarks on the input, e.g. a table without rules.
	Notes []string          `json:"notes,omitempty"`
	Rules []RuleExplanation `json:"rules"`
	// Purges are the distinct targets per group, exactly as ApplyRow adds
	// them to a batch.
	Purges []GroupPurge `json:"purges"`
}

// RuleExplanation is one rule's verdict on the row change.
type RuleExplanation struct {
	Rule    string            `json:"rule"`
	Fired   bool              `json:"fired"`
	Reason  string            `json:"reason"`
	Routes  []ExplainedRoute  `json:"routes,omitempty"`
	Targets []ExplainedTarget `json:"targets,omitempty"`
	Skipped []SkippedTarget   `json:"skipped,omitempty"`
}

// ExplainedRoute is where one image of the row routes.
type ExplainedRoute struct {
	Image  string `json:"image"`
	Column string `json:"column"`
	// Value is the route value as text; null routes to every group.
	Value *string  `json:"value"`
	Redis []string `json:"redis,omitempty"`
	HTTP  []string `json:"http,omitempty"`
}

// ExplainedTarget is one rendered target of a rule.
type ExplainedTarget struct {
	Kind     string   `json:"kind"` // key, url or tag
	Target   string   `json:"target"`
	Template string   `json:"template"`
	Images   []string `json:"images"` // before and/or after
	Tier     Tier     `json:"tier"`   // redis or http
	Group    string   `json:"group"`
}

// SkippedTarget is a template that named nothing for an image.
type SkippedTarget struct {
	Kind     string `json:"kind"`
	Template string `json:"template"`
	Image    string `json:"image"`
	Reason   string `json:"reason"`
}

// GroupPurge is what one batch publishes to one group.
type GroupPurge struct {
	Tier      Tier     `json:"tier"`
	Group     string   `json:"group"`
	Topic     string   `json:"topic,omitempty"`
	Replicas  []string `json:"replicas,omitempty"`  // Redis
	Instances []string `json:"instances,omitempty"` // HTTP
	Nodes     []string `json:"nodes,omitempty"`     // CDN
	Keys      []string `json:"keys,omitempty"`
	URLs      []string `json:"urls,omitempty"`
	Tags      []string `json:"tags,omitempty"`
	// Patterns and Flush are the admin-only Redis kinds, Bans the HTTP one.
	Patterns []string `json:"patterns,omitempty"`
	Flush    bool     `json:"flush,omitempty"`
	Bans     []string `json:"bans,omitempty"`
	// Sync are the sync writes, at ExplainVersion: the canal writes each at
	// its row's version (epoch, binlog offset of its event, row index).
	Sync []SyncWrite `json:"sync,omitempty"`
}

// ExplainVersion is the version explanations show on sync writes: the
// canal's are its epoch, the row event's binlog offset and the row's index
// in it, none of which a row given by hand has.
var ExplainVersion = SyncVersion{}

// Explain evaluates the rules of table for one row change the way the canal
// does (Bind, then ApplyRow) and reports every step. columns name the values
// of before and after; a column a rule needs that is not among them is an
// error naming it, as Bind's at start. An insert needs after, a delete
// before, an update both. A table without rules is not an error: the
// explanation says its rows are skipped.
func (r *Rules) Explain(table string, action Action, columns []string, before, after []any) (*Explanation, error) {
	e := &Explanation{Table: table, Action: action.String(), Columns: columns, Rules: []RuleExplanation{}, Purges: []GroupPurge{}}
	for i, c := range columns {
		if slices.Index(columns, c) != i {
			return nil, fmt.Errorf("column %q is given twice", c)
		}
	}
	for _, img := range []struct {
		name  string
		image []any
	}{{"before", before}, {"after", after}} {
		if img.image != nil && len(img.image) != len(columns) {
			return nil, fmt.Errorf("the %s image has %d values for %d columns", img.name, len(img.image), len(columns))
		}
	}
	switch action {
	case Insert:
		if after == nil {
			return nil, errors.New("an insert needs the after image")
		}
		if before != nil {
			e.Notes = append(e.Notes, "the before image is ignored: an insert has only an after image")
		}
	case Delete:
		if before == nil {
			return nil, errors.New("a delete needs the before image")
		}
		if after != nil {
			e.Notes = append(e.Notes, "the after image is ignored: a delete has only a before image")
		}
	case Update:
		if before == nil || after == nil {
			return nil, errors.New("an update needs the before and the after image")
		}
		for i, c := range columns {
			if !valuesEqual(before[i], after[i]) {
				e.ChangedColumns = append(e.ChangedColumns, c)
			}
		}
	default:
		return nil, fmt.Errorf("unknown action %v", action)
	}
	b, err := r.Bind(table, columns)
	if err != nil {
		return nil, err
	}
	if b == nil {
		e.Notes = append(e.Notes, fmt.Sprintf("no [[rule]] for %s: its rows are skipped (tables with rules: %s)", table, strings.Join(r.Tables(), ", ")))
		return e, nil
	}
	var images []string
	switch action {
	case Insert:
		images = []string{"after"}
	case Delete:
		images = []string{"before"}
	default:
		images = []string{"before", "after"}
	}
	imageOf := func(name string) []any {
		if name == "before" {
			return before
		}
		return after
	}
	for i := range b.rules {
		ru := &b.rules[i]
		d := ru.decide(action, before, after)
		re := RuleExplanation{Rule: ru.src.name, Fired: d.fired(), Reason: ru.reason(d, action, columns, before, after)}
		if re.Fired {
			for _, img := range images {
				r.explainImage(b, ru, img, imageOf(img), columns, &re)
			}
		}
		e.Rules = append(e.Rules, re)
	}
	batch := r.NewBatch()
	b.ApplyRowAt(ExplainVersion, action, before, after, batch)
	e.Purges = r.Purges(batch)
	return e, nil
}

// Purges lists what b publishes to each group, Redis groups first, each
// with its replicas or instances; a batch of these rules' groups.
func (r *Rules) Purges(b *Batch) []GroupPurge {
	ps := []GroupPurge{}
	for g := 0; g < b.NumGroups() && g < len(r.redis); g++ {
		if b.HasRedis(g) {
			ps = append(ps, GroupPurge{Tier: TierRedis, Group: r.redis[g].Name,
				Replicas: r.redis[g].Addrs, Keys: b.Keys(g), Patterns: b.Patterns(g), Flush: b.Flush(g), Sync: b.Sync(g)})
		}
	}
	for g := 0; g < b.NumHTTPGroups() && g < len(r.http); g++ {
		if urls, tags, bans := b.URLs(g), b.Tags(g), b.Bans(g); len(urls)+len(tags)+len(bans) > 0 {
			ps = append(ps, GroupPurge{Tier: TierHTTP, Group: r.http[g].Name,
				Instances: r.http[g].Addrs, URLs: urls, Tags: tags, Bans: bans})
		}
	}
	return ps
}

// ExplainRow explains a purge of one row asked for by hand (the admin API):
// every rule of table renders its targets from image, whatever its
// conditions (actions, changed, ignore_changes), which select row changes,
// not purges someone asks for. A NULL (or unknown) value skips the targets
// that name it, and a NULL route value sends the rule's targets to every
// group of the tier, as ApplyRow does. The row's targets are added to out.
// A table without rules, or a column a rule needs that columns lack, is an
// error.
func (r *Rules) ExplainRow(table string, columns []string, image []any, out *Batch) (*Explanation, error) {
	if len(image) != len(columns) {
		return nil, fmt.Errorf("the row has %d values for %d columns", len(image), len(columns))
	}
	b, err := r.Bind(table, columns)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("no [[rule]] for %s (tables with rules: %s)", table, strings.Join(r.Tables(), ", "))
	}
	e := &Explanation{Table: table, Action: "purge", Columns: columns, Rules: []RuleExplanation{}}
	batch := r.NewBatch()
	for i := range b.rules {
		ru := &b.rules[i]
		re := RuleExplanation{Rule: ru.src.name, Fired: true, Reason: "purged by hand: every rule of the table renders the row, whatever its conditions"}
		r.explainImage(b, ru, "row", image, columns, &re)
		b.render(ru, image, batch)
		b.render(ru, image, out)
		e.Rules = append(e.Rules, re)
	}
	e.Purges = r.Purges(batch)
	return e, nil
}

// SetTopics fills in the NSQ topic of every purge.
func (e *Explanation) SetTopics(prefix string) {
	for i := range e.Purges {
		p := &e.Purges[i]
		if p.Tier == TierRedis {
			p.Topic = RedisTopic(prefix, p.Group)
		} else {
			p.Topic = HTTPTopic(prefix, p.Group)
		}
	}
}

func (r *Rules) explainImage(b *Bound, ru *boundRule, img string, image []any, columns []string, re *RuleExplanation) {
	groups := [2][]Group{r.redis, r.http} // by Tier.index
	route := b.routeGroups(ru, image)
	rt := ExplainedRoute{Image: img, Column: columns[ru.route]}
	if v, ok := appendValue(nil, image[ru.route]); ok {
		s := string(v)
		rt.Value = &s
	}
	var tiers [2]bool
	for kind, ts := range ru.templates {
		if len(ts) > 0 {
			tiers[Kind(kind).tierIndex()] = true
		}
	}
	tiers[redisTier] = tiers[redisTier] || len(ru.sync) > 0
	names := func(tier Tier) []string {
		if !tiers[tier.index()] {
			return nil
		}
		if g := route[tier.index()]; g >= 0 {
			return []string{groups[tier.index()][g].Name}
		}
		var all []string
		for _, g := range groups[tier.index()] {
			all = append(all, g.Name)
		}
		return all
	}
	rt.Redis, rt.HTTP = names(TierRedis), names(TierHTTP)
	re.Routes = append(re.Routes, rt)
	// explain adds one template's target, rendered from image, to each of
	// groups (or why it names nothing); a target the other image named
	// too gets that image added.
	explain := func(kind, src string, parts []boundPart, tier Tier) {
		buf, ok := renderParts(nil, parts, image)
		if !ok {
			re.Skipped = append(re.Skipped, SkippedTarget{Kind: kind, Template: src, Image: img, Reason: nullReason(parts, image, columns)})
			return
		}
		for _, group := range names(tier) {
			t := ExplainedTarget{Kind: kind, Target: string(buf), Template: src, Tier: tier, Group: group}
			if i := slices.IndexFunc(re.Targets, func(o ExplainedTarget) bool {
				return o.Kind == t.Kind && o.Target == t.Target && o.Group == t.Group && o.Template == t.Template
			}); i >= 0 {
				re.Targets[i].Images = append(re.Targets[i].Images, img)
				continue
			}
			t.Images = []string{img}
			re.Targets = append(re.Targets, t)
		}
	}
	for kind, ts := range ru.templates {
		for j, parts := range ts {
			explain(Kind(kind).String(), ru.src.templates[kind][j].src, parts, Kind(kind).Tier())
		}
	}
	for j := range ru.sync {
		explain("sync", ru.src.sync[j].key.src, ru.sync[j].key, TierRedis)
	}
}

func nullReason(parts []boundPart, image []any, columns []string) string {
	for _, p := range parts {
		if p.col >= 0 && image[p.col] == nil {
			return fmt.Sprintf("column %s is NULL", columns[p.col])
		}
	}
	return "a column is NULL"
}

// reason says in words why decide decided d.
func (ru *boundRule) reason(d decision, action Action, columns []string, before, after []any) string {
	cond := ""
	switch {
	case len(ru.src.changed) > 0:
		cond = "changed = [" + strings.Join(ru.src.changed, ", ") + "]"
	case len(ru.src.ignore) > 0:
		cond = "ignore_changes = [" + strings.Join(ru.src.ignore, ", ") + "]"
	}
	changedCols := func(keep func(i int) bool) []string {
		var out []string
		for i, c := range columns {
			if keep(i) && !valuesEqual(before[i], after[i]) {
				out = append(out, c)
			}
		}
		return out
	}
	switch d {
	case skipsAction:
		return fmt.Sprintf("action not listed: %s is not in actions [%s]", action, ru.actions)
	case skipsUnchanged:
		return fmt.Sprintf("no listed column changed (%s)", cond)
	case skipsIgnored:
		if changed := changedCols(func(int) bool { return true }); len(changed) > 0 {
			return fmt.Sprintf("only ignored columns changed: %s (%s)", strings.Join(changed, ", "), cond)
		}
		return fmt.Sprintf("no column changed (%s)", cond)
	case firesChanged:
		return fmt.Sprintf("listed columns changed: %s (%s)", strings.Join(changedCols(func(i int) bool { return slices.Contains(ru.changed, i) }), ", "), cond)
	case firesNotIgnored:
		return fmt.Sprintf("columns outside ignore_changes changed: %s (%s)", strings.Join(changedCols(func(i int) bool { return !ru.ignored[i] }), ", "), cond)
	}
	s := fmt.Sprintf("%s is in actions [%s]", action, ru.actions)
	switch {
	case cond != "" && action != Update:
		s += "; " + cond + " applies to updates only"
	case action == Update:
		s += "; no changed/ignore_changes condition"
	}
	return s
}

// WriteText writes e for people.
func (e *Explanation) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n", e.Table, e.Action)
	fmt.Fprintf(&b, "  columns: %s\n", strings.Join(e.Columns, ", "))
	if e.Action == Update.String() {
		changed := strings.Join(e.ChangedColumns, ", ")
		if changed == "" {
			changed = "none"
		}
		fmt.Fprintf(&b, "  changed: %s\n", changed)
	}
	for _, n := range e.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	for _, re := range e.Rules {
		verdict := "fired"
		if !re.Fired {
			verdict = "not fired"
		}
		fmt.Fprintf(&b, "\n%s: %s: %s\n", re.Rule, verdict, re.Reason)
		for _, rt := range re.Routes {
			value := "NULL (every group)"
			if rt.Value != nil {
				value = *rt.Value
			}
			var to []string
			if len(rt.Redis) > 0 {
				to = append(to, "redis "+strings.Join(rt.Redis, ", "))
			}
			if len(rt.HTTP) > 0 {
				to = append(to, "http "+strings.Join(rt.HTTP, ", "))
			}
			fmt.Fprintf(&b, "  route %s %s=%s -> %s\n", rt.Image, rt.Column, value, strings.Join(to, "; "))
		}
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		for _, t := range re.Targets {
			fmt.Fprintf(tw, "  %s\t%s\t%s %s\tfrom %s (%s)\n", t.Kind, t.Target, t.Tier, t.Group, t.Template, strings.Join(t.Images, ", "))
		}
		for _, s := range re.Skipped {
			fmt.Fprintf(tw, "  %s\t-\tskipped\tfrom %s (%s: %s)\n", s.Kind, s.Template, s.Image, s.Reason)
		}
		tw.Flush()
	}
	if len(e.Purges) == 0 {
		b.WriteString("\npurges: none\n")
	} else {
		b.WriteString("\npurges (deduplicated, as one batch publishes them):\n")
	}
	for _, p := range e.Purges {
		members := "replicas " + strings.Join(p.Replicas, ", ")
		if p.Tier == TierHTTP {
			members = "instances " + strings.Join(p.Instances, ", ")
		}
		topic := ""
		if p.Topic != "" {
			topic = ", topic " + p.Topic
		}
		fmt.Fprintf(&b, "  %s %s (%s%s)\n", p.Tier, p.Group, members, topic)
		for _, t := range [][2]any{{"key", p.Keys}, {"url", p.URLs}, {"tag", p.Tags}} {
			for _, v := range t[1].([]string) {
				fmt.Fprintf(&b, "    %s %s\n", t[0], v)
			}
		}
		for _, w := range p.Sync {
			fmt.Fprintf(&b, "    sync %s %s", w.Op, w.Key)
			switch w.Op {
			case SyncSet:
				fmt.Fprintf(&b, " = %q", w.Value)
			case SyncHash:
				fmt.Fprintf(&b, " = %q", w.Fields)
			}
			if w.TTL > 0 {
				fmt.Fprintf(&b, " ttl %v", w.TTL)
			}
			b.WriteString(" at the row's version (canal epoch:binlog offset:row), fenced\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ExplainRequest explains a parsed request: its action is the explicit one
// or the one its images imply (ExplainRequest.ParseAction).
func (r *Rules) ExplainRequest(q *ExplainRequest) (*Explanation, error) {
	if q.Table == "" {
		return nil, errors.New("table: missing; name the db.table the row belongs to")
	}
	action, err := q.ParseAction()
	if err != nil {
		return nil, err
	}
	return r.Explain(q.Table, action, q.Columns, q.Before, q.After)
}

// ExplainRequest is a row change given as JSON, for Explain:
//
//	{"table": "shop.item", "action": "update", "before": {...}, "after": {...}}
//
// table and action are optional (the action follows from the images); each
// image maps column names to values: numbers (integral ones become int64,
// others keep their text), strings, or null. The columns are those present,
// in the order of the first image.
type ExplainRequest struct {
	Table   string
	Action  string
	Columns []string
	Before  []any // nil without a before image
	After   []any // nil without an after image
}

// ParseExplainRequest parses and checks an ExplainRequest.
func ParseExplainRequest(data []byte) (*ExplainRequest, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	q := &ExplainRequest{}
	var images [2]*jsonImage // before, after
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("row: %w", err)
		}
		switch key := tok.(string); key {
		case "table", "action":
			var s string
			if err := dec.Decode(&s); err != nil {
				return nil, fmt.Errorf("row: %s: %w", key, err)
			}
			if key == "table" {
				q.Table = s
			} else {
				q.Action = s
			}
		case "before", "after":
			img, err := decodeImage(dec, key)
			if err != nil {
				return nil, err
			}
			images[map[string]int{"before": 0, "after": 1}[key]] = img
		default:
			return nil, fmt.Errorf("row: unknown key %q (table, action, before, after)", key)
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("row: data after the JSON object")
	}
	before, after := images[0], images[1]
	switch {
	case before == nil && after == nil:
		return nil, errors.New(`row: needs a "before" or an "after" image (or both, for an update)`)
	case before != nil && after != nil:
		q.Columns, q.Before = before.cols, before.vals
		q.After = make([]any, len(q.Columns))
		for i, c := range after.cols {
			j := slices.Index(before.cols, c)
			if j < 0 {
				return nil, fmt.Errorf("row: column %q is in after but not in before", c)
			}
			q.After[j] = after.vals[i]
		}
		for _, c := range before.cols {
			if !slices.Contains(after.cols, c) {
				return nil, fmt.Errorf("row: column %q is in before but not in after", c)
			}
		}
	case before != nil:
		q.Columns, q.Before = before.cols, before.vals
	default:
		q.Columns, q.After = after.cols, after.vals
	}
	return q, nil
}

// ParseAction returns the request's action: the explicit one, else insert
// for only an after image, delete for only a before image, update for both.
func (q *ExplainRequest) ParseAction() (Action, error) {
	switch {
	case q.Action != "":
		return ParseAction(q.Action)
	case q.Before != nil && q.After != nil:
		return Update, nil
	case q.After != nil:
		return Insert, nil
	default:
		return Delete, nil
	}
}

type jsonImage struct {
	cols []string
	vals []any
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("row: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("row: want %c, found %v", rune(want), tok)
	}
	return nil
}

// decodeImage reads one image: an object of column values, or null for none.
func decodeImage(dec *json.Decoder, name string) (*jsonImage, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("row: %s: %w", name, err)
	}
	if tok == nil {
		return nil, nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("row: %s: want an object of column values, found %v", name, tok)
	}
	img := &jsonImage{cols: []string{}, vals: []any{}}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("row: %s: %w", name, err)
		}
		col := tok.(string)
		if slices.Contains(img.cols, col) {
			return nil, fmt.Errorf("row: %s: column %q is given twice", name, col)
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, fmt.Errorf("row: %s.%s: %w", name, col, err)
		}
		var v any
		switch x := tok.(type) {
		case nil:
		case string:
			v = x
		case json.Number:
			if n, err := strconv.ParseInt(string(x), 10, 64); err == nil {
				v = n
			} else {
				v = string(x)
			}
		default:
			return nil, fmt.Errorf("row: %s.%s: %v is not a column value (numbers, strings, null)", name, col, tok)
		}
		img.cols = append(img.cols, col)
		img.vals = append(img.vals, v)
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return img, nil
}
