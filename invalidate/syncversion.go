package invalidate

import (
	"fmt"
	"strconv"
	"strings"
)

// SyncVersion orders the sync writes of one key (issue 12): a replica
// applies a write only if its version is newer than the one it holds, so
// a redelivered, reordered or replayed older write never takes a value back
// in time. Epoch grows with every canal start that cannot continue the
// binlog's order (a reset to the current position, a failover to another
// server whose offsets are not comparable); Offset is the row event's
// binlog offset (BinlogOffset); Row is the row's index in its event, for
// one event changing a key more than once.
type SyncVersion struct {
	Epoch  uint32
	Offset uint64
	Row    uint32
}

// syncVersionLen is the length of every SyncVersion's String: fixed, so
// that replicas compare versions as strings (Lua numbers are doubles,
// exact only to 2^53).
const syncVersionLen = 10 + 1 + 20 + 1 + 10

// String is the version as stored: zero-padded decimal fields, whose
// byte order is the versions' order.
func (v SyncVersion) String() string { return string(v.appendTo(make([]byte, 0, syncVersionLen))) }

// appendTo appends String's form to b.
func (v SyncVersion) appendTo(b []byte) []byte {
	pad := func(b []byte, n uint64, width int) []byte {
		var d [20]byte
		s := strconv.AppendUint(d[:0], n, 10)
		for range width - len(s) {
			b = append(b, '0')
		}
		return append(b, s...)
	}
	b = pad(b, uint64(v.Epoch), 10)
	b = append(b, ':')
	b = pad(b, v.Offset, 20)
	b = append(b, ':')
	return pad(b, uint64(v.Row), 10)
}

// Compare is -1, 0 or +1 as v is older than, the same as or newer than w.
func (v SyncVersion) Compare(w SyncVersion) int {
	for _, c := range [...][2]uint64{{uint64(v.Epoch), uint64(w.Epoch)}, {v.Offset, w.Offset}, {uint64(v.Row), uint64(w.Row)}} {
		switch {
		case c[0] < c[1]:
			return -1
		case c[0] > c[1]:
			return 1
		}
	}
	return 0
}

// ParseSyncVersion parses a stored version.
func ParseSyncVersion(s string) (SyncVersion, error) {
	var v SyncVersion
	parts := strings.Split(s, ":")
	if len(s) != syncVersionLen || len(parts) != 3 || len(parts[0]) != 10 || len(parts[1]) != 20 || len(parts[2]) != 10 {
		return v, fmt.Errorf("sync version %q: want %d digits:%d digits:%d digits", s, 10, 20, 10)
	}
	epoch, err1 := strconv.ParseUint(parts[0], 10, 32)
	offset, err2 := strconv.ParseUint(parts[1], 10, 64)
	row, err3 := strconv.ParseUint(parts[2], 10, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		return v, fmt.Errorf("sync version %q: not decimal fields in range", s)
	}
	return SyncVersion{Epoch: uint32(epoch), Offset: offset, Row: uint32(row)}, nil
}
