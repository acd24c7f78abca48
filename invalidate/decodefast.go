package invalidate

import (
	"strconv"
	"unicode/utf8"
)

// decodePurgeFast decodes the messages flashsync's publishers write — one
// compact JSON object of the Purge fields, strings without escapes,
// integers — without encoding/json's reflection and second scan: each
// replica's purger decodes every message of its group, a fifth of a
// catch-up's CPU with encoding/json (docs/BENCHMARKS.md). Anything else
// (whitespace, an escape, an unknown or repeated field, null, a float,
// sync writes, invalid UTF-8) returns ok false, and DecodePurge decodes it
// with encoding/json, so the result is always what encoding/json gives
// (FuzzDecodePurgeFast checks it).
func decodePurgeFast(b []byte) (p Purge, ok bool) {
	if strconv.IntSize != 64 || !utf8.Valid(b) {
		return p, false
	}
	d := fastDecoder{b: b}
	if !d.byte('{') {
		return p, false
	}
	var seen uint32
	for first := true; ; first = false {
		if d.byte('}') {
			break
		}
		if !first && !d.byte(',') {
			return p, false
		}
		name, ok := d.str()
		if !ok || !d.byte(':') {
			return p, false
		}
		field := fastField(name)
		if field == 0 || seen&field != 0 {
			return p, false
		}
		seen |= field
		switch field {
		case fV:
			var n int64
			n, ok = d.int()
			p.V = int(n)
		case fGroup:
			p.Group, ok = d.str()
		case fKeys:
			p.Keys, ok = d.strs()
		case fURLs:
			p.URLs, ok = d.strs()
		case fTags:
			p.Tags, ok = d.strs()
		case fPatterns:
			p.Patterns, ok = d.strs()
		case fBans:
			p.Bans, ok = d.strs()
		case fFlush:
			p.Flush, ok = d.bool()
		case fHeartbeat:
			p.Heartbeat, ok = d.bool()
		case fPos:
			p.Pos, ok = d.str()
		case fGTID:
			p.GTID, ok = d.str()
		case fJob:
			p.Job, ok = d.str()
		case fCommitUnix:
			p.CommitUnix, ok = d.int()
		case fSeen:
			p.SeenUnixNano, ok = d.int()
		case fCaughtUp:
			p.CaughtUpUnixNano, ok = d.int()
		case fPart:
			var n int64
			n, ok = d.int()
			p.Part = int(n)
		case fParts:
			var n int64
			n, ok = d.int()
			p.Parts = int(n)
		case fFrom:
			p.From, ok = d.uint()
		case fTo:
			p.To, ok = d.uint()
		}
		if !ok {
			return Purge{}, false
		}
	}
	return p, d.i == len(b)
}

const (
	fV uint32 = 1 << iota
	fGroup
	fKeys
	fURLs
	fTags
	fPatterns
	fBans
	fFlush
	fHeartbeat
	fPos
	fGTID
	fJob
	fCommitUnix
	fSeen
	fCaughtUp
	fPart
	fParts
	fFrom
	fTo
)

// fastField is the Purge field of an exact JSON name, 0 for none
// (encoding/json also matches other cases: those go to it).
func fastField(name string) uint32 {
	switch name {
	case "v":
		return fV
	case "group":
		return fGroup
	case "keys":
		return fKeys
	case "urls":
		return fURLs
	case "tags":
		return fTags
	case "patterns":
		return fPatterns
	case "bans":
		return fBans
	case "flush":
		return fFlush
	case "heartbeat":
		return fHeartbeat
	case "pos":
		return fPos
	case "gtid":
		return fGTID
	case "job":
		return fJob
	case "commit_unix":
		return fCommitUnix
	case "seen_unix_nano":
		return fSeen
	case "caught_up_unix_nano":
		return fCaughtUp
	case "part":
		return fPart
	case "parts":
		return fParts
	case "from":
		return fFrom
	case "to":
		return fTo
	}
	return 0
}

type fastDecoder struct {
	b []byte
	i int
}

// byte consumes c if it is next.
func (d *fastDecoder) byte(c byte) bool {
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// str reads a string without escapes or control characters.
func (d *fastDecoder) str() (string, bool) {
	if !d.byte('"') {
		return "", false
	}
	start := d.i
	for ; d.i < len(d.b); d.i++ {
		switch c := d.b[d.i]; {
		case c == '"':
			s := string(d.b[start:d.i])
			d.i++
			return s, true
		case c == '\\' || c < 0x20:
			return "", false
		}
	}
	return "", false
}

// strs reads an array of strings; an empty array is an empty, non-nil
// slice, as encoding/json makes it.
func (d *fastDecoder) strs() ([]string, bool) {
	if !d.byte('[') {
		return nil, false
	}
	out := []string{}
	if d.byte(']') {
		return out, true
	}
	for {
		s, ok := d.str()
		if !ok {
			return nil, false
		}
		out = append(out, s)
		if d.byte(']') {
			return out, true
		}
		if !d.byte(',') {
			return nil, false
		}
	}
}

func (d *fastDecoder) bool() (bool, bool) {
	for _, lit := range [...]string{"true", "false"} {
		if len(d.b)-d.i >= len(lit) && string(d.b[d.i:d.i+len(lit)]) == lit {
			d.i += len(lit)
			return lit == "true", true
		}
	}
	return false, false
}

// digits reads a JSON integer's text: an optional minus, then 0 or a
// digit 1-9 and more digits; a fraction or exponent is not one.
func (d *fastDecoder) digits(signed bool) (string, bool) {
	start := d.i
	if signed && d.i < len(d.b) && d.b[d.i] == '-' {
		d.i++
	}
	first := d.i
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		d.i++
	}
	switch {
	case d.i == first, d.b[first] == '0' && d.i-first > 1:
		return "", false
	case d.i < len(d.b) && (d.b[d.i] == '.' || d.b[d.i] == 'e' || d.b[d.i] == 'E'):
		return "", false
	}
	return string(d.b[start:d.i]), true
}

// int reads an integer that fits int64 (int is 64 bits where flashsync
// runs; strconv.IntSize is checked at the call of decodePurgeFast).
func (d *fastDecoder) int() (int64, bool) {
	s, ok := d.digits(true)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

func (d *fastDecoder) uint() (uint64, bool) {
	s, ok := d.digits(false)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}
