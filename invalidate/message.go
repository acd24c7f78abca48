package invalidate

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Versions of the Purge wire format. A message is written with the lowest
// version that holds it, so a purger that knows only an older version
// refuses (retries, then dead-letters) a message it cannot apply instead of
// dropping its fields.
const (
	// PurgeVersionBasic carries keys, URLs and tags: what every publisher
	// wrote before version 2, still written for them.
	PurgeVersionBasic = 1
	// PurgeVersion adds the admin-only kinds (Flush, Patterns, Bans).
	PurgeVersion = 2
	// PurgeVersionHeartbeat is a message with no targets that carries only
	// its coverage (Heartbeat): how far the binlog has been read.
	PurgeVersionHeartbeat = 3
	// PurgeVersionSync adds Sync: versioned writes of keys (sync mode).
	PurgeVersionSync = 4
)

// Purge is one NSQ message: targets to purge from every replica (or
// instance) of a group, with where in the binlog they came from. A message on
// a Redis topic carries keys; one on an HTTP topic carries URLs and/or tags.
type Purge struct {
	V     int      `json:"v"`
	Group string   `json:"group"`
	Keys  []string `json:"keys,omitempty"`
	// URLs are HTTP URLs or paths to purge; Tags are surrogate keys (xkey).
	URLs []string `json:"urls,omitempty"`
	Tags []string `json:"tags,omitempty"`
	// Flush (version 2, Redis topics) empties the replica's database
	// (FLUSHDB ASYNC on the group's configured db).
	Flush bool `json:"flush,omitempty"`
	// Patterns (version 2, Redis topics) are Redis globs: every matching
	// key is unlinked (SCAN MATCH + UNLINK, rate-limited per replica).
	Patterns []string `json:"patterns,omitempty"`
	// Sync (version 4, Redis topics) are versioned writes: each replica
	// sets (or deletes) each key only if the write is newer than the
	// key's stored version.
	Sync []SyncWrite `json:"sync,omitempty"`
	// Bans (version 2, HTTP topics) are regexes on the request URL (path
	// and query): every instance bans the objects whose URL matches
	// (Varnish: BAN with X-Ban-Url, configs/varnish/flashsync.vcl).
	Bans []string `json:"bans,omitempty"`
	// Pos and GTID name the commit (or, for a large transaction flushed in
	// parts, the commit to come) the keys derive from.
	Pos  string `json:"pos,omitempty"`
	GTID string `json:"gtid,omitempty"`
	// CommitUnix is the binlog event's timestamp (seconds, server clock).
	CommitUnix int64 `json:"commit_unix,omitempty"`
	// SeenUnixNano is when the canal read the commit; purgers measure
	// commit→purge latency from it (same clock on one machine).
	SeenUnixNano int64 `json:"seen_unix_nano,omitempty"`
	// Job names the Publish call the message is part of: every target
	// acknowledges it on AckTopic. Empty (older publishers, heartbeats): no
	// ack.
	Job string `json:"job,omitempty"`

	// Coverage, on the canal's messages to Redis groups: this message is
	// part Part of Parts that together carry every target of the group
	// derived from the binlog after offset From up to offset To (binlog
	// offsets, BinlogOffset). A replica whose applied messages cover an
	// unbroken range of offsets up to To has applied every change of its
	// group up to To, whatever order NSQ delivered them in and however
	// often: that is its watermark (package purge). Messages of the admin
	// API carry no coverage.
	From  uint64 `json:"from,omitempty"`
	To    uint64 `json:"to,omitempty"`
	Part  int    `json:"part,omitempty"`
	Parts int    `json:"parts,omitempty"`
	// CaughtUpUnixNano (canal clock) is a time before which every commit
	// the server had written is at or before To: the watermark's age.
	CaughtUpUnixNano int64 `json:"caught_up_unix_nano,omitempty"`
	// Heartbeat (version 3) has no targets: the canal sends one to every
	// Redis group each heartbeat interval so watermarks move while no row
	// of the group changes.
	Heartbeat bool `json:"heartbeat,omitempty"`
}

// Covers tells whether p carries coverage.
func (p *Purge) Covers() bool { return p.Parts > 0 }

// Marshal encodes p.
//
// Sync writes are appended by hand after the rest (SyncWrite.appendJSON):
// encoding/json would check and compact each one's output again.
func (p *Purge) Marshal() ([]byte, error) {
	if len(p.Sync) == 0 {
		return json.Marshal(p)
	}
	rest := *p
	rest.Sync = nil
	b, err := json.Marshal(&rest)
	if err != nil {
		return nil, err
	}
	b = append(b[:len(b)-1], `,"sync":[`...) // before its closing brace
	for i := range p.Sync {
		if i > 0 {
			b = append(b, ',')
		}
		b = p.Sync[i].appendJSON(b)
	}
	return append(b, "]}"...), nil
}

// maxKeyLen bounds one key; Redis allows 512 MB but a key this long is a bug.
const maxKeyLen = 64 << 10

// maxURLLen and maxTagLen bound one URL and one tag: they travel in an HTTP
// request line or header, which caches limit to 8 KB by default.
const (
	maxURLLen = 8 << 10
	maxTagLen = 8 << 10
)

// DecodePurge decodes and checks a Purge message.
func DecodePurge(body []byte) (*Purge, error) {
	// Sync writes are decoded into their wire form (the outer Sync field
	// shadows Purge's) and converted, rather than by SyncWrite's
	// UnmarshalJSON, which would scan each one a second time.
	p, fast := decodePurgeFast(body)
	var wire struct {
		Purge
		Sync []syncWireJSON `json:"sync,omitempty"`
	}
	if !fast {
		if err := json.Unmarshal(body, &wire); err != nil {
			return nil, fmt.Errorf("decode purge: %w", err)
		}
		p = wire.Purge
	}
	if len(wire.Sync) > 0 {
		p.Sync = make([]SyncWrite, len(wire.Sync))
		for i := range wire.Sync {
			if err := wire.Sync[i].write(&p.Sync[i]); err != nil {
				return nil, fmt.Errorf("decode purge: sync[%d]: %w", i, err)
			}
		}
	}
	switch {
	case p.V < PurgeVersionBasic || p.V > PurgeVersionSync:
		return nil, fmt.Errorf("decode purge: version %d, want %d to %d", p.V, PurgeVersionBasic, PurgeVersionSync)
	case p.Parts < 0 || (p.Parts > 0 && (p.Part < 1 || p.Part > p.Parts || p.From > p.To)) || (p.Parts == 0 && (p.Part != 0 || p.From != 0 || p.To != 0)):
		return nil, fmt.Errorf("decode purge: coverage part %d of %d, from %d to %d: want 1 <= part <= parts, from <= to", p.Part, p.Parts, p.From, p.To)
	case p.Heartbeat != (p.V == PurgeVersionHeartbeat):
		return nil, fmt.Errorf("decode purge: version %d with heartbeat %v: heartbeats, only they, are version %d", p.V, p.Heartbeat, PurgeVersionHeartbeat)
	case p.Heartbeat:
		if len(p.Keys)+len(p.URLs)+len(p.Tags)+len(p.Patterns)+len(p.Bans)+len(p.Sync) > 0 || p.Flush || p.Parts != 1 {
			return nil, errors.New("decode purge: a heartbeat carries no targets and is one part")
		}
		return &p, nil
	case p.V == PurgeVersionBasic && (p.Flush || len(p.Patterns)+len(p.Bans) > 0):
		return nil, fmt.Errorf("decode purge: version %d carries no flush, patterns or bans", p.V)
	case len(p.Sync) > 0 && p.V < PurgeVersionSync:
		return nil, fmt.Errorf("decode purge: version %d carries no sync writes", p.V)
	case len(p.Sync) > 0 && len(p.URLs)+len(p.Tags)+len(p.Bans) > 0:
		return nil, errors.New("decode purge: sync writes are Redis writes; the message has urls, tags or bans")
	case len(p.Keys)+len(p.URLs)+len(p.Tags)+len(p.Patterns)+len(p.Bans)+len(p.Sync) == 0 && !p.Flush:
		return nil, errors.New("decode purge: no keys, urls, tags, patterns, bans, sync or flush")
	case (p.Flush || len(p.Patterns) > 0) && len(p.URLs)+len(p.Tags)+len(p.Bans) > 0:
		return nil, errors.New("decode purge: flush and patterns are Redis purges; the message has urls, tags or bans")
	case len(p.Bans) > 0 && len(p.Keys) > 0:
		return nil, errors.New("decode purge: bans are HTTP purges; the message has keys")
	}
	for _, f := range []struct {
		name    string
		targets *[]string
		max     int
	}{{"keys", &p.Keys, maxKeyLen}, {"urls", &p.URLs, maxURLLen}, {"tags", &p.Tags, maxTagLen}, {"patterns", &p.Patterns, maxKeyLen}, {"bans", &p.Bans, maxURLLen}} {
		for i, t := range *f.targets {
			if t == "" || len(t) > f.max {
				return nil, fmt.Errorf("decode purge: %s[%d] has length %d (1 to %d)", f.name, i, len(t), f.max)
			}
		}
		if len(*f.targets) == 0 {
			*f.targets = nil // "keys":[] and no keys are the same message
		}
	}
	return &p, nil
}

// DefaultTopicPrefix starts every topic name unless configured otherwise.
const DefaultTopicPrefix = "flashsync"

// RedisTopic is the NSQ topic of a Redis group's purges.
func RedisTopic(prefix, group string) string { return prefix + ".redis." + group }

// HTTPTopic is the NSQ topic of an HTTP group's URL and tag purges.
func HTTPTopic(prefix, group string) string { return prefix + ".http." + group }

// DeadLetterTopic receives messages that kept failing.
func DeadLetterTopic(prefix string) string { return prefix + ".dead" }

// ReplicaChannel is the NSQ channel of one cache replica: every replica has
// its own, so each gets every message and a down replica's backlog waits in
// its channel without delaying the others.
func ReplicaChannel(addr string) string {
	return strings.NewReplacer(":", "_", "[", "", "]", "", "/", "_").Replace(addr)
}

// BinlogOffset orders binlog positions as one number: the file's sequence
// number (the digits after the last '.' of its name, as MySQL and MariaDB
// name them) above the position in the file. ok is false for a name
// without such a number.
func BinlogOffset(file string, pos uint32) (offset uint64, ok bool) {
	i := strings.LastIndexByte(file, '.')
	if i < 0 || i == len(file)-1 {
		return 0, false
	}
	n, err := strconv.ParseUint(file[i+1:], 10, 32)
	if err != nil {
		return 0, false
	}
	return n<<32 | uint64(pos), true
}
