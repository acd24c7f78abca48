package invalidate

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Sync mode: a rule's sync targets write the row's new image to a key in
// every replica of its group instead of deleting it, each write fenced by
// the row's SyncVersion (the purger's sync script applies a write only if
// it is newer than the key's stored version).

// SyncVersionPrefix names a synced key's version key in every replica:
// the prefix, then the key. It holds the version of the last write applied
// to the key (a deleted key's, for the purger's tombstone TTL).
const SyncVersionPrefix = "flashsync:v:"

// SyncEpochKey holds, in every replica, the newest epoch of the sync
// writes applied to it (its first 10 bytes of a version): a reader's
// versioned fill of a key that has no version yet takes its epoch from it.
// It lives with the replica's data, like WatermarkKey.
const SyncEpochKey = WatermarkKey + ":sync-epoch"

// SyncOp is what a sync write does to its key.
type SyncOp string

const (
	// SyncSet sets a string value (a JSON object, a template's text).
	SyncSet SyncOp = "set"
	// SyncHash replaces the key with a hash of column values.
	SyncHash SyncOp = "hash"
	// SyncDel deletes the key: the row was deleted, or its key changed.
	SyncDel SyncOp = "del"
)

// Formats of a sync target's value.
const (
	SyncFormatJSON = "json" // a JSON object of the columns (AppendJSONRow)
	SyncFormatHash = "hash" // a Redis hash of the columns (HashFields)
	SyncFormatText = "text" // a template over the columns, like a key's
)

// SyncFormats are the formats a sync target accepts, the default first.
var SyncFormats = []string{SyncFormatJSON, SyncFormatHash, SyncFormatText}

// SyncTarget is one key a rule keeps equal to the row (configs'
// [[rule.sync]] documents each field).
type SyncTarget struct {
	Key        string
	Format     string
	Columns    []string
	Value      string
	TTL        time.Duration
	RefreshHot bool
}

// SyncWrite is one versioned write of a key, as a Purge carries it.
type SyncWrite struct {
	Key     string
	Op      SyncOp
	Version SyncVersion
	// TTL is the value's time to live; 0: none.
	TTL time.Duration
	// Value is a set's value; JSON tells that it is a JSON text (the json
	// format; it must then be valid JSON), which travels as JSON rather
	// than quoted in a string.
	Value []byte
	JSON  bool
	// Fields are a hash's field, value, ... pairs (values may be any bytes).
	Fields []string
	// HotOnly (refresh_hot) writes a set or hash only where the replica
	// holds the key: a replica that does not is left as it is.
	HotOnly bool
}

// syncWireJSON is a SyncWrite on the wire. A JSON value travels as JSON
// ("json"); other values as JSON strings when they are valid UTF-8 and as
// base64 otherwise (B64 set: the value and every hash field and value are
// base64; the key too), so no byte is replaced.
type syncWireJSON struct {
	Key     string          `json:"key"`
	Op      SyncOp          `json:"op"`
	Version string          `json:"ver"`
	TTLms   int64           `json:"ttl_ms,omitempty"`
	Value   *string         `json:"value,omitempty"`
	JSON    json.RawMessage `json:"json,omitempty"`
	Fields  []string        `json:"fields,omitempty"`
	B64     bool            `json:"b64,omitempty"`
	HotOnly bool            `json:"hot,omitempty"`
}

// MarshalJSON encodes w for a Purge (appendJSON).
func (w SyncWrite) MarshalJSON() ([]byte, error) { return w.appendJSON(nil), nil }

// appendJSON appends w's wire form, by hand: a message carries up to
// MaxKeysPerMessage writes, each a row's value, and encoding/json's
// reflection, its quoting of a JSON value as a string and its check of
// every MarshalJSON's output cost sync mode a third of its catch-up
// (bench/bulkupdate's profile).
func (w *SyncWrite) appendJSON(b []byte) []byte {
	asJSON := w.JSON && w.Op == SyncSet
	b64 := !utf8.ValidString(w.Key) || (!asJSON && !utf8.Valid(w.Value)) || slices.ContainsFunc(w.Fields, func(f string) bool { return !utf8.ValidString(f) })
	str := func(b []byte, s string) []byte {
		if !b64 {
			return appendJSONString(b, s)
		}
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, []byte(s))
		return append(b, '"')
	}
	b = append(b, `{"key":`...)
	b = str(b, w.Key)
	b = append(b, `,"op":`...)
	b = appendJSONString(b, string(w.Op))
	b = append(b, `,"ver":"`...)
	b = w.Version.appendTo(b)
	b = append(b, '"')
	if ms := w.TTL.Milliseconds(); ms != 0 {
		b = append(b, `,"ttl_ms":`...)
		b = strconv.AppendInt(b, ms, 10)
	}
	switch {
	case asJSON:
		b = append(b, `,"json":`...)
		b = append(b, w.Value...)
	case w.Op == SyncSet:
		b = append(b, `,"value":`...)
		b = str(b, string(w.Value))
	}
	if len(w.Fields) > 0 {
		b = append(b, `,"fields":[`...)
		for i, f := range w.Fields {
			if i > 0 {
				b = append(b, ',')
			}
			b = str(b, f)
		}
		b = append(b, ']')
	}
	if b64 {
		b = append(b, `,"b64":true`...)
	}
	if w.HotOnly {
		b = append(b, `,"hot":true`...)
	}
	return append(b, '}')
}

// UnmarshalJSON decodes and checks a SyncWrite.
func (w *SyncWrite) UnmarshalJSON(b []byte) error {
	var in syncWireJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	return in.write(w)
}

// write checks in and sets *w to the write it carries.
func (in *syncWireJSON) write(w *SyncWrite) error {
	v, err := ParseSyncVersion(in.Version)
	if err != nil {
		return err
	}
	dec := func(s string) (string, error) {
		if !in.B64 {
			return s, nil
		}
		d, err := base64.StdEncoding.DecodeString(s)
		return string(d), err
	}
	key, err := dec(in.Key)
	if err != nil {
		return fmt.Errorf("key: %w", err)
	}
	*w = SyncWrite{Key: key, Op: in.Op, Version: v, TTL: time.Duration(in.TTLms) * time.Millisecond, HotOnly: in.HotOnly}
	in.Key = key
	switch {
	case in.Key == "" || len(in.Key) > maxKeyLen:
		return fmt.Errorf("key has length %d (1 to %d)", len(in.Key), maxKeyLen)
	case in.TTLms < 0:
		return fmt.Errorf("%s: ttl_ms %d is negative", in.Key, in.TTLms)
	case in.Op == SyncSet && (in.Value == nil) == (in.JSON == nil):
		return fmt.Errorf("%s: a set has a value or json, one of them", in.Key)
	case in.Op != SyncSet && (in.Value != nil || in.JSON != nil):
		return fmt.Errorf("%s: %s with a value", in.Key, in.Op)
	case in.Op == SyncHash && (len(in.Fields) == 0 || len(in.Fields)%2 != 0):
		return fmt.Errorf("%s: hash of %d field arguments, want field and value pairs", in.Key, len(in.Fields))
	case in.Op != SyncHash && len(in.Fields) > 0:
		return fmt.Errorf("%s: %s with hash fields", in.Key, in.Op)
	case in.Op != SyncSet && in.Op != SyncHash && in.Op != SyncDel:
		return fmt.Errorf("%s: op %q (set, hash, del)", in.Key, in.Op)
	case in.HotOnly && in.Op == SyncDel:
		return fmt.Errorf("%s: hot applies to set and hash; a delete deletes wherever the key is", in.Key)
	}
	if in.Value != nil {
		s, err := dec(*in.Value)
		if err != nil {
			return fmt.Errorf("%s: value: %w", in.Key, err)
		}
		w.Value = []byte(s)
	}
	if in.JSON != nil {
		w.Value, w.JSON = in.JSON, true // json.RawMessage decodes to a copy
	}
	for _, f := range in.Fields {
		s, err := dec(f)
		if err != nil {
			return fmt.Errorf("%s: fields: %w", in.Key, err)
		}
		w.Fields = append(w.Fields, s)
	}
	return nil
}

// size is w's share of a message's bytes (roughly its encoded length).
func (w *SyncWrite) size() int {
	n := len(w.Key) + len(w.Value) + syncVersionLen + 48
	for _, f := range w.Fields {
		n += len(f) + 3
	}
	return n
}

// syncRule is a rule's sync target, parsed.
type syncRule struct {
	key        *Template
	format     string
	columns    []string // json, hash; nil: all of the table's
	value      *Template
	ttl        time.Duration
	refreshHot bool
}

func parseSyncTarget(ruleName string, i int, s SyncTarget) (syncRule, error) {
	name := fmt.Sprintf("%s: sync[%d]", ruleName, i)
	key, err := ParseTemplate(s.Key)
	if err != nil {
		return syncRule{}, fmt.Errorf("%s: key: %w", name, err)
	}
	sr := syncRule{key: key, format: s.Format, columns: s.Columns, ttl: s.TTL, refreshHot: s.RefreshHot}
	if sr.format == "" {
		sr.format = SyncFormatJSON
	}
	switch {
	case !slices.Contains(SyncFormats, sr.format):
		return syncRule{}, fmt.Errorf("%s: format %q (json, hash, text)", name, s.Format)
	case s.TTL < 0:
		return syncRule{}, fmt.Errorf("%s: ttl %v is negative", name, s.TTL)
	case sr.format == SyncFormatText && s.Value == "":
		return syncRule{}, fmt.Errorf("%s: format text needs a value template", name)
	case sr.format == SyncFormatText && len(s.Columns) > 0:
		return syncRule{}, fmt.Errorf("%s: columns are for json and hash; text renders its value template", name)
	case sr.format != SyncFormatText && s.Value != "":
		return syncRule{}, fmt.Errorf("%s: value is the text format's template; %s renders columns", name, sr.format)
	}
	for j, c := range s.Columns {
		if !isColumnName(c) {
			return syncRule{}, fmt.Errorf("%s: columns[%d]: %q is not a column name", name, j, c)
		}
	}
	if sr.format == SyncFormatText {
		if sr.value, err = ParseTemplate(s.Value); err != nil {
			return syncRule{}, fmt.Errorf("%s: value: %w", name, err)
		}
	}
	return sr, nil
}

// boundSync is a sync target resolved against the table's columns.
type boundSync struct {
	src   *syncRule
	key   []boundPart
	names []string // json, hash: the columns' names
	idx   []int    // and indexes
	value []boundPart
}

// bindSync resolves sr against columns; index names a missing column.
func bindSync(sr *syncRule, columns []string, index func(what, col string) (int, error)) (boundSync, error) {
	bs := boundSync{src: sr}
	bindTemplate := func(what string, t *Template) ([]boundPart, error) {
		var parts []boundPart
		for _, p := range t.parts {
			if p.column == "" {
				parts = append(parts, boundPart{lit: p.lit, col: -1})
				continue
			}
			i, err := index(fmt.Sprintf("sync %s %q", what, t.src), p.column)
			if err != nil {
				return nil, err
			}
			parts = append(parts, boundPart{col: i})
		}
		return parts, nil
	}
	var err error
	if bs.key, err = bindTemplate("key", sr.key); err != nil {
		return bs, err
	}
	switch {
	case sr.format == SyncFormatText:
		bs.value, err = bindTemplate("value", sr.value)
		return bs, err
	case len(sr.columns) == 0:
		bs.names = slices.Clone(columns)
		for i := range columns {
			bs.idx = append(bs.idx, i)
		}
	default:
		for _, c := range sr.columns {
			i, err := index("sync columns", c)
			if err != nil {
				return bs, err
			}
			bs.names = append(bs.names, c)
			bs.idx = append(bs.idx, i)
		}
	}
	return bs, nil
}

// write is the write that makes key hold image (nil: deleted). A text
// value whose columns hold NULL cannot be rendered: the key is deleted.
func (bs *boundSync) write(key string, v SyncVersion, image []any) SyncWrite {
	w := SyncWrite{Key: key, Op: SyncDel, Version: v}
	if image == nil {
		return w
	}
	switch bs.src.format {
	case SyncFormatJSON:
		w.Op, w.Value, w.JSON = SyncSet, AppendJSONRow(nil, bs.names, bs.idx, image), true
	case SyncFormatHash:
		if w.Fields = HashFields(bs.names, bs.idx, image); len(w.Fields) == 0 {
			w.Fields = nil // every column NULL: an empty hash is no key in Redis
			return w
		}
		w.Op = SyncHash
	default:
		val, ok := renderParts(nil, bs.value, image)
		if !ok {
			return w
		}
		w.Op, w.Value = SyncSet, val
	}
	w.TTL, w.HotOnly = bs.src.ttl, bs.src.refreshHot
	return w
}

// syncSet is a group's sync writes in one batch: the newest per key.
type syncSet struct {
	list []SyncWrite
	at   map[string]int // key → index in list
}

// addSync adds w to a Redis group, keeping per key only the newest write:
// a batch that changes a row twice writes its last image once.
func (b *Batch) addSync(group int, w SyncWrite) {
	for len(b.sync) <= group {
		b.sync = append(b.sync, syncSet{})
	}
	for len(b.redis) <= group {
		b.redis = append(b.redis, targetSet{})
	}
	s := &b.sync[group]
	if s.at == nil {
		s.at = map[string]int{}
	}
	if i, ok := s.at[w.Key]; ok {
		old := &s.list[i]
		if w.Version.Compare(old.Version) > 0 {
			b.bytes += w.size() - old.size()
			*old = w
		}
		return
	}
	s.at[w.Key] = len(s.list)
	s.list = append(s.list, w)
	b.n++
	b.bytes += w.size()
}

// AddSync adds a versioned write to a Redis group; of several writes of a
// key, the newest is kept.
func (b *Batch) AddSync(group int, w SyncWrite) { b.addSync(group, w) }

// Sync returns a Redis group's sync writes in the order their keys were
// first added.
func (b *Batch) Sync(group int) []SyncWrite {
	if group >= len(b.sync) {
		return nil
	}
	return b.sync[group].list
}

// syncChunks splits writes into messages of at most n writes and about
// maxBytes (one write larger than that is a message of its own).
func syncChunks(writes []SyncWrite, n, maxBytes int) [][]SyncWrite {
	var out [][]SyncWrite
	for len(writes) > 0 {
		k, size := 0, 0
		for k < len(writes) && k < n && (k == 0 || size+writes[k].size() <= maxBytes) {
			size += writes[k].size()
			k++
		}
		out = append(out, writes[:k])
		writes = writes[k:]
	}
	return out
}

// maxSyncMessageBytes bounds one message's sync writes (nsqd refuses a
// message over its --max-msg-size, 1 MiB by default).
const maxSyncMessageBytes = 256 << 10
