package invalidate

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// AckTopic receives the purgers' and the dispatcher's acks.
func AckTopic(prefix string) string { return prefix + ".acks" }

// AckChannel is the channel of AckTopic one center's job store reads:
// ephemeral and its own, so every center (the active canal and its standbys
// alike) sees every ack, and nothing piles up for a center that is gone.
func AckChannel(id string) string { return "jobs-" + id + "#ephemeral" }

// JobTarget is one cache target expected to acknowledge a job: a Redis
// replica, an HTTP cache instance or a CDN node.
type JobTarget struct {
	Tier   Tier   `json:"tier"`
	Group  string `json:"group"`
	Target string `json:"target"`
}

// Ack reports that one target applied (OK) or dead-lettered (!OK) a message
// of a job. Acks are progress reports, not delivery: one may be lost.
type Ack struct {
	Job    string `json:"job"`
	Tier   Tier   `json:"tier"`
	Group  string `json:"group"`
	Target string `json:"target"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	// LatencyMS is from the canal reading the commit (or, without that,
	// from the message's publication) to the target done with it.
	LatencyMS float64   `json:"latency_ms"`
	At        time.Time `json:"at"`
}

// DecodeAck decodes an ack record.
func DecodeAck(body []byte) (*Ack, error) {
	var a Ack
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("decode ack: %w", err)
	}
	if a.Job == "" || a.Target == "" {
		return nil, errors.New("decode ack: no job or target")
	}
	return &a, nil
}

// NewJobID returns a new random job ID of 16 hex characters.
func NewJobID() string {
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// AckLatency is the latency of an ack for a message seen by the canal at
// seenUnixNano (0: unknown) and published at publishedUnixNano.
func AckLatency(seenUnixNano, publishedUnixNano int64) float64 {
	from := seenUnixNano
	if from <= 0 {
		from = publishedUnixNano
	}
	if from <= 0 {
		return 0
	}
	return float64(time.Since(time.Unix(0, from))) / float64(time.Millisecond)
}
