package invalidate

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// PurgeVersion is the version of the Purge wire format.
const PurgeVersion = 1

// Purge is one NSQ message: keys to delete from every replica of a group,
// with where in the binlog they came from.
type Purge struct {
	V     int      `json:"v"`
	Group string   `json:"group"`
	Keys  []string `json:"keys"`
	// Pos and GTID name the commit (or, for a large transaction flushed in
	// parts, the commit to come) the keys derive from.
	Pos  string `json:"pos,omitempty"`
	GTID string `json:"gtid,omitempty"`
	// CommitUnix is the binlog event's timestamp (seconds, server clock).
	CommitUnix int64 `json:"commit_unix,omitempty"`
	// SeenUnixNano is when the canal read the commit; purgers measure
	// commit→purge latency from it (same clock on one machine).
	SeenUnixNano int64 `json:"seen_unix_nano,omitempty"`
}

// Marshal encodes p.
func (p *Purge) Marshal() ([]byte, error) { return json.Marshal(p) }

// maxKeyLen bounds one key; Redis allows 512 MB but a key this long is a bug.
const maxKeyLen = 64 << 10

// DecodePurge decodes and checks a Purge message.
func DecodePurge(body []byte) (*Purge, error) {
	var p Purge
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("decode purge: %w", err)
	}
	if p.V != PurgeVersion {
		return nil, fmt.Errorf("decode purge: version %d, want %d", p.V, PurgeVersion)
	}
	if len(p.Keys) == 0 {
		return nil, errors.New("decode purge: no keys")
	}
	for i, k := range p.Keys {
		if k == "" || len(k) > maxKeyLen {
			return nil, fmt.Errorf("decode purge: keys[%d] has length %d", i, len(k))
		}
	}
	return &p, nil
}

// RedisTopic is the NSQ topic of a Redis group's purges.
func RedisTopic(prefix, group string) string { return prefix + ".redis." + group }

// DeadLetterTopic receives messages that kept failing.
func DeadLetterTopic(prefix string) string { return prefix + ".dead" }

// ReplicaChannel is the NSQ channel of one cache replica: every replica has
// its own, so each gets every message and a down replica's backlog waits in
// its channel without delaying the others.
func ReplicaChannel(addr string) string {
	return strings.NewReplacer(":", "_", "[", "", "]", "", "/", "_").Replace(addr)
}
