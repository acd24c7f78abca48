package cacheaside

import (
	"bytes"
	"strconv"
	"time"
)

// envelopePrefix starts every value a Reader fills: "\x00fs1:<fill start
// unix ns>:<value>". The NUL keeps it apart from any text or JSON value
// another writer stores, and from leases ("\x00lease:..."); "fs1" is the
// format's version. The fill start is in decimal so that redis-cli shows it
// as it is; 25 bytes at most per value.
const envelopePrefix = "\x00fs1:"

// EncodeValue wraps value in the envelope with its fill start: the instant
// the filler started reading MySQL, after its lease was in place, so the
// value is at least as new as the row was then.
func EncodeValue(fillStart time.Time, value []byte) []byte {
	b := make([]byte, 0, len(envelopePrefix)+20+len(value))
	b = append(b, envelopePrefix...)
	b = strconv.AppendInt(b, fillStart.UnixNano(), 10)
	b = append(b, ':')
	return append(b, value...)
}

// DecodeValue unwraps a value a Reader filled: the value and its fill start,
// ok true. A value without a well-formed envelope (another writer's, or a
// lease) comes back as it is with ok false: readers serve it, and a
// consistency checker cannot tell its age.
func DecodeValue(b []byte) (value []byte, fillStart time.Time, ok bool) {
	rest, found := bytes.CutPrefix(b, []byte(envelopePrefix))
	if !found {
		return b, time.Time{}, false
	}
	digits, value, found := bytes.Cut(rest, []byte{':'})
	ns, valid := parseNanos(digits)
	if !found || !valid {
		return b, time.Time{}, false
	}
	return value, time.Unix(0, ns), true
}

// parseNanos parses the fill start as EncodeValue writes it: a non-negative
// decimal without sign or leading zeros (so an envelope has one spelling),
// within int64.
func parseNanos(d []byte) (int64, bool) {
	if len(d) == 0 || len(d) > 19 || (d[0] == '0' && len(d) > 1) {
		return 0, false
	}
	var n int64
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false
		}
		digit := int64(c - '0')
		if n > (1<<63-1-digit)/10 {
			return 0, false
		}
		n = n*10 + digit
	}
	return n, true
}

// IsLease tells whether a stored value is a filler's lease, not a value:
// a reader never serves it, and a checker cannot judge the key.
func IsLease(b []byte) bool { return bytes.HasPrefix(b, []byte(leasePrefix)) }
