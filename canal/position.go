package canal

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Position is a binlog position whose invalidations, and those of everything
// before it, NSQ has acknowledged.
type Position struct {
	File string `json:"file"`
	Pos  uint32 `json:"pos"`
	// GTID is the executed GTID set at the position; resuming by GTID
	// survives a failover to another server of the same replication set.
	GTID    string    `json:"gtid,omitempty"`
	Flavor  string    `json:"flavor"`
	SavedAt time.Time `json:"saved_at"`
	// Schema is the included tables' columns at this position, the start of
	// the schema history replayed when the binlog has no column names.
	Schema *Schema `json:"schema,omitempty"`
	// Covered is the binlog offset (invalidate.BinlogOffset) every Redis
	// group's messages had reached when this position was acknowledged: at
	// or before the position, as commits without targets move the position
	// and send nothing. The next session's coverage starts there, so the
	// replicas' watermarks see no hole across a restart or a takeover.
	Covered uint64 `json:"covered,omitempty"`
	// Epoch is the first field of every sync write's version
	// (invalidate.SyncVersion): the unix second of the start that chose
	// this position afresh (a first start, --reset-to-current), kept by
	// every start that resumes from it. Offsets are comparable only within
	// one epoch; a reset may move to a server whose offsets are smaller,
	// and its writes must still win over every earlier one.
	Epoch uint32 `json:"epoch,omitempty"`
	// ServerID is the @@server_id of the server whose binlog File is: a
	// restart on that server resumes from File:Pos, which it finds at once,
	// rather than from GTID, which MariaDB finds by reading the binlog file
	// from its start (the longer the file, the slower the restart). On
	// another server (a failover, a restore elsewhere) the GTID is used.
	ServerID uint32 `json:"server_id,omitempty"`
}

// newEpoch is the epoch of a start that chose its position afresh: later
// than prev (the epoch of the position it replaces, 0 if none), and than
// every earlier start as far as the clock goes.
func newEpoch(now time.Time, prev uint32) uint32 {
	return max(uint32(now.Unix()), prev+1)
}

// samePlace reports whether p and q name the same binlog position.
func (p Position) samePlace(q Position) bool {
	return p.File == q.File && p.Pos == q.Pos && p.GTID == q.GTID
}

func (p Position) String() string {
	s := fmt.Sprintf("%s:%d", p.File, p.Pos)
	if p.GTID != "" {
		s += " gtid " + p.GTID
	}
	return s
}

// PositionFile stores a Position so that a crash at any instant leaves
// either the old or the new one on disk, never a torn file.
type PositionFile struct {
	path string
}

// NewPositionFile returns the store at path.
func NewPositionFile(path string) *PositionFile { return &PositionFile{path: path} }

// Load returns the saved position; ok is false when none was saved yet.
func (f *PositionFile) Load() (pos Position, ok bool, err error) {
	data, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return Position{}, false, nil
	}
	if err != nil {
		return Position{}, false, err
	}
	if err := json.Unmarshal(data, &pos); err != nil {
		return Position{}, false, fmt.Errorf("position file %s: %w", f.path, err)
	}
	if pos.File == "" && pos.GTID == "" {
		return Position{}, false, fmt.Errorf("position file %s: neither file nor gtid set", f.path)
	}
	return pos, true, nil
}

// Save writes pos to a temp file, fsyncs it, renames it over the old file and
// fsyncs the directory, so the rename itself survives a power cut.
func (f *PositionFile) Save(pos Position) error {
	data, err := json.MarshalIndent(pos, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save position: %w", err)
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(f.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("save position: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("save position: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save position: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save position: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("save position: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("save position: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("save position: sync dir: %w", err)
	}
	return nil
}
