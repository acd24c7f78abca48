package purge

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flashsync/flashsync/invalidate"
)

// A rejoin log is what a purger applied to one replica, message by
// message, numbered by the replica's applied sequence (watermark.lua), so
// that a replica restarted from a snapshot can be replayed rather than
// flushed: the snapshot says which sequence it holds, and every message
// logged after it is purged again (rejoin = "replay").
//
// The log is a directory of segment files named by the first sequence
// they hold. Each record is its payload's length and CRC-32C, then the
// payload; a crash mid-write leaves a torn record at the end of the newest
// segment, which opening cuts. Records are appended without fsync: a
// process crash keeps what the kernel has, and an OS crash that loses the
// tail shows as missing sequences, which make the replay fall back to a
// flush. The log is bounded by size and age: whole old segments are
// removed, so trimming never rewrites a file.
type rejoinLog struct {
	dir      string
	maxBytes int64
	maxAge   time.Duration

	mu    sync.Mutex
	segs  []logSegment // oldest first; the last is appended to
	cur   *os.File
	total int64
	last  uint64 // the largest sequence appended
	buf   []byte
}

type logSegment struct {
	first   uint64 // the first sequence it holds
	path    string
	size    int64
	firstAt time.Time // when its first record was appended
}

// logRecord is one message applied to the replica.
type logRecord struct {
	seq      uint64
	at       int64 // unix ns, when it was applied
	wm       invalidate.Watermark
	flush    bool
	keys     []string
	patterns []string
}

const (
	segmentSuffix = ".seg"
	// maxRecordBytes bounds one record: a message's keys are bounded by
	// NSQ's message size (1 MiB by default) and the canal's batching.
	maxRecordBytes = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// openRejoinLog opens (creating) the log in dir, cutting a torn tail.
func openRejoinLog(dir string, maxBytes int64, maxAge time.Duration) (*rejoinLog, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("rejoin log: %w", err)
	}
	l := &rejoinLog{dir: dir, maxBytes: maxBytes, maxAge: maxAge}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("rejoin log: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), segmentSuffix)
		if !ok || e.IsDir() {
			continue
		}
		first, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("rejoin log: %w", err)
		}
		l.segs = append(l.segs, logSegment{first: first, path: filepath.Join(dir, e.Name()), size: info.Size(), firstAt: info.ModTime()})
	}
	slices.SortFunc(l.segs, func(a, b logSegment) int { return cmp.Compare(a.first, b.first) })
	for i := range l.segs {
		l.total += l.segs[i].size
	}
	if n := len(l.segs); n > 0 {
		if err := l.openTail(&l.segs[n-1]); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// openTail reads the newest segment to its last whole record, cuts what
// follows and opens it for appending.
func (l *rejoinLog) openTail(s *logSegment) error {
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("rejoin log: %w", err)
	}
	var good int64
	first := true
	err = readRecords(bufio.NewReader(f), func(rec logRecord, end int64) bool {
		good = end
		l.last = max(l.last, rec.seq)
		if first {
			s.firstAt, first = time.Unix(0, rec.at), false
		}
		return true
	})
	if err != nil && !errors.Is(err, errTorn) {
		f.Close()
		return fmt.Errorf("rejoin log %s: %w", s.path, err)
	}
	if good < s.size {
		if err := f.Truncate(good); err != nil {
			f.Close()
			return fmt.Errorf("rejoin log %s: cut torn tail: %w", s.path, err)
		}
		l.total -= s.size - good
		s.size = good
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("rejoin log %s: %w", s.path, err)
	}
	l.cur = f
	return nil
}

// floor is the largest sequence logged.
func (l *rejoinLog) floor() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// append logs rec, starting a new segment and trimming old ones as the
// bounds say.
func (l *rejoinLog) append(rec logRecord) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Unix(0, rec.at)
	n := len(l.segs)
	if l.cur == nil || (l.segs[n-1].size > 0 && (l.segs[n-1].size >= max(l.maxBytes/8, 1) || now.Sub(l.segs[n-1].firstAt) >= l.maxAge/8)) {
		if err := l.rotate(rec.seq, now); err != nil {
			return err
		}
		n = len(l.segs)
	}
	l.buf = encodeRecord(l.buf[:0], rec)
	if _, err := l.cur.Write(l.buf); err != nil {
		return fmt.Errorf("rejoin log %s: %w", l.segs[n-1].path, err)
	}
	l.segs[n-1].size += int64(len(l.buf))
	l.total += int64(len(l.buf))
	l.last = max(l.last, rec.seq)
	return nil
}

// rotate starts a segment at seq and removes the segments past the bounds
// (never the newest).
func (l *rejoinLog) rotate(seq uint64, now time.Time) error {
	path := filepath.Join(l.dir, fmt.Sprintf("%020d%s", seq, segmentSuffix))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("rejoin log: %w", err)
	}
	if l.cur != nil {
		l.cur.Close()
	}
	l.cur = f
	l.segs = append(l.segs, logSegment{first: seq, path: path, firstAt: now})
	for len(l.segs) > 1 {
		// A segment's records are all older than the next one's first.
		old := l.total > l.maxBytes || now.Sub(l.segs[1].firstAt) > l.maxAge
		if !old {
			break
		}
		if err := os.Remove(l.segs[0].path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rejoin log: trim: %w", err)
		}
		l.total -= l.segs[0].size
		l.segs = l.segs[1:]
	}
	return nil
}

// reach is the oldest sequence the log holds and when it was applied (zero
// without records).
func (l *rejoinLog) reach() (uint64, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.segs) == 0 || l.total == 0 {
		return 0, time.Time{}
	}
	return l.segs[0].first, l.segs[0].firstAt
}

// replaySet is what a replay re-purges: the logged messages from..upto.
type replaySet struct {
	keys, patterns []string
	flush          bool
	// wm is the watermark after the last of them.
	wm invalidate.Watermark
	// missing is the first sequence of from..upto the log does not hold
	// (0: it holds them all).
	missing uint64
}

// since collects the records with sequences from..upto (from >= 1: the
// script's sequences start at 1), and tells the first one missing.
func (l *rejoinLog) since(from, upto uint64) (replaySet, error) {
	l.mu.Lock()
	segs := slices.Clone(l.segs)
	l.mu.Unlock()
	var set replaySet
	keys := map[string]struct{}{}
	next := from
	var wmSeq uint64
	for i, s := range segs {
		if i+1 < len(segs) && segs[i+1].first <= from {
			continue // every record of it is before from
		}
		if s.first > upto {
			break
		}
		f, err := os.Open(s.path)
		if errors.Is(err, os.ErrNotExist) {
			continue // trimmed meanwhile
		}
		if err != nil {
			return set, fmt.Errorf("rejoin log: %w", err)
		}
		var seqs []uint64
		err = readRecords(bufio.NewReader(f), func(rec logRecord, _ int64) bool {
			if rec.seq < from || rec.seq > upto {
				return true
			}
			seqs = append(seqs, rec.seq)
			for _, k := range rec.keys {
				keys[k] = struct{}{}
			}
			set.patterns = append(set.patterns, rec.patterns...)
			set.flush = set.flush || rec.flush
			if rec.seq >= wmSeq {
				wmSeq, set.wm = rec.seq, rec.wm
			}
			return true
		})
		f.Close()
		if err != nil && !errors.Is(err, errTorn) {
			return set, fmt.Errorf("rejoin log %s: %w", s.path, err)
		}
		slices.Sort(seqs)
		for _, q := range slices.Compact(seqs) {
			if q != next {
				set.missing = next
				return set, nil
			}
			next++
		}
	}
	if next <= upto {
		set.missing = next
	}
	for k := range keys {
		set.keys = append(set.keys, k)
	}
	slices.Sort(set.keys)
	set.patterns = slices.Compact(set.patterns)
	return set, nil
}

// Close closes the segment being appended to; it is idempotent.
func (l *rejoinLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil {
		return nil
	}
	err := l.cur.Close()
	l.cur = nil
	return err
}

// errTorn is a record cut short or damaged: the end of what can be read.
var errTorn = errors.New("torn record")

// readRecords decodes records from r until EOF, a torn record (errTorn)
// or yield returns false; end is the offset just past each record.
func readRecords(r *bufio.Reader, yield func(rec logRecord, end int64) bool) error {
	var head [8]byte
	var off int64
	var payload []byte
	for {
		if _, err := io.ReadFull(r, head[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return errTorn
		}
		n := binary.LittleEndian.Uint32(head[:4])
		if n > maxRecordBytes {
			return errTorn
		}
		payload = slices.Grow(payload[:0], int(n))[:n]
		if _, err := io.ReadFull(r, payload); err != nil {
			return errTorn
		}
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(head[4:]) {
			return errTorn
		}
		rec, err := decodeRecord(payload)
		if err != nil {
			return errTorn
		}
		off += 8 + int64(n)
		if !yield(rec, off) {
			return nil
		}
	}
}

// encodeRecord appends rec, framed, to b.
func encodeRecord(b []byte, rec logRecord) []byte {
	start := len(b)
	b = append(b, make([]byte, 8)...)
	b = binary.AppendUvarint(b, rec.seq)
	b = binary.AppendVarint(b, rec.at)
	b = binary.AppendUvarint(b, rec.wm.To)
	var cu int64
	if !rec.wm.CaughtUp.IsZero() {
		cu = rec.wm.CaughtUp.UnixNano()
	}
	b = binary.AppendVarint(b, cu)
	flags := byte(0)
	if rec.flush {
		flags = 1
	}
	b = append(b, flags)
	for _, list := range [][]string{rec.keys, rec.patterns} {
		b = binary.AppendUvarint(b, uint64(len(list)))
		for _, s := range list {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	payload := b[start+8:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(payload, castagnoli))
	return b
}

var errBadRecord = errors.New("bad rejoin log record")

// decodeRecord decodes one record's payload.
func decodeRecord(p []byte) (logRecord, error) {
	var rec logRecord
	uv := func() uint64 {
		v, n := binary.Uvarint(p)
		if n <= 0 {
			p = nil
			return 0
		}
		p = p[n:]
		return v
	}
	ok := true
	sv := func() int64 {
		v, n := binary.Varint(p)
		if n <= 0 {
			ok = false
			return 0
		}
		p = p[n:]
		return v
	}
	var n int
	if rec.seq, n = binary.Uvarint(p); n <= 0 {
		return rec, errBadRecord
	}
	p = p[n:]
	rec.at = sv()
	if !ok {
		return rec, errBadRecord
	}
	if rec.wm.To, n = binary.Uvarint(p); n <= 0 {
		return rec, errBadRecord
	}
	p = p[n:]
	cu := sv()
	if !ok || len(p) < 1 || p[0] > 1 {
		return rec, errBadRecord
	}
	if cu != 0 {
		rec.wm.CaughtUp = time.Unix(0, cu)
	}
	rec.flush = p[0] == 1
	p = p[1:]
	for _, list := range []*[]string{&rec.keys, &rec.patterns} {
		count := uv()
		if p == nil || count > uint64(len(p)) {
			return rec, errBadRecord
		}
		for range count {
			l := uv()
			if p == nil || l > uint64(len(p)) {
				return rec, errBadRecord
			}
			*list = append(*list, string(p[:l]))
			p = p[l:]
		}
	}
	if len(p) != 0 {
		return rec, errBadRecord
	}
	return rec, nil
}

// rejoinLogName is the directory of a replica's log under RejoinLogDir:
// readable, and unique by a hash of the group and address.
func rejoinLogName(group, addr string) string {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
				return r
			}
			return '_'
		}, s)
	}
	return fmt.Sprintf("%s_%s_%08x", clean(group), clean(addr), crc32.Checksum([]byte(group+"\x00"+addr), castagnoli))
}
