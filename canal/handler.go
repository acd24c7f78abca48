package canal

import (
	"time"

	gocanal "github.com/go-mysql-org/go-mysql/canal"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/go-mysql-org/go-mysql/schema"

	"context"

	"github.com/flashsync/flashsync/invalidate"
)

// handler receives binlog events on go-mysql's single run goroutine: the
// batch needs no lock. It collects a transaction's keys and publishes them on
// XID; the position moves only after that publish succeeded.
type handler struct {
	gocanal.DummyEventHandler
	c     *Canal
	ctx   context.Context // publishing; outlives shutdown by DrainTimeout
	batch *invalidate.Batch
	bound map[string]boundTable
	gtid  string // GTID of the transaction being read
}

type boundTable struct {
	schema *schema.Table // canal replaces it after DDL
	rules  *invalidate.Bound
}

func (h *handler) String() string { return "flashsync" }

func (h *handler) OnRow(e *gocanal.RowsEvent) error {
	b, err := h.bind(e.Table)
	if err != nil {
		return err
	}
	n := len(e.Rows)
	if e.Action == gocanal.UpdateAction {
		n /= 2
	}
	h.c.rowEvents.WithLabelValues(e.Action).Add(float64(n))
	if b == nil {
		return nil
	}
	// Rows are before/after pairs for UPDATE and single images otherwise;
	// Apply on every image covers both: a changed key purges old and new.
	for _, row := range e.Rows {
		b.Apply(row, h.batch)
	}
	if h.batch.Len() >= h.c.opts.Canal.MaxBatchKeys {
		// A huge transaction: send what we have so memory stays bounded. The
		// position still moves only at its commit, so a crash replays it.
		return h.flush(invalidate.Meta{Pos: "in-transaction", GTID: h.gtid, CommitUnix: int64(e.Header.Timestamp), Seen: time.Now()})
	}
	return nil
}

func (h *handler) bind(t *schema.Table) (*invalidate.Bound, error) {
	name := t.Schema + "." + t.Name
	if bt, ok := h.bound[name]; ok && bt.schema == t {
		return bt.rules, nil
	}
	rules, err := h.c.opts.Rules.Bind(name, columnNames(t))
	if err != nil {
		return nil, err
	}
	h.bound[name] = boundTable{schema: t, rules: rules}
	return rules, nil
}

func (h *handler) OnTableChanged(_ *replication.EventHeader, db, table string) error {
	delete(h.bound, db+"."+table)
	return nil
}

func (h *handler) OnGTID(_ *replication.EventHeader, e mysql.BinlogGTIDEvent) error {
	if next, err := e.GTIDNext(); err == nil && next != nil {
		h.gtid = next.String()
	}
	return nil
}

func (h *handler) OnXID(header *replication.EventHeader, next mysql.Position) error {
	h.c.transactions.Inc()
	if d := time.Now().Unix() - int64(header.Timestamp); d >= 0 {
		h.c.delay.Set(float64(d))
	}
	return h.flush(invalidate.Meta{Pos: next.String(), GTID: h.gtid, CommitUnix: int64(header.Timestamp), Seen: time.Now()})
}

// OnPosSynced follows every XID, DDL and rotation. It flushes too, because a
// transaction on a non-transactional table ends with a COMMIT query event,
// not an XID. A nil header is go-mysql's Close: save what was acknowledged.
func (h *handler) OnPosSynced(header *replication.EventHeader, pos mysql.Position, set mysql.GTIDSet, force bool) error {
	if header == nil {
		return h.c.saveAcked()
	}
	if header.EventType == replication.ROTATE_EVENT && header.Timestamp == 0 {
		// A fake rotate sent when the stream starts carries no data; after a
		// GTID start it would restate the position as file:4, behind the
		// saved one. Keep the saved one.
		return nil
	}
	if h.batch.Len() > 0 {
		if err := h.flush(invalidate.Meta{Pos: pos.String(), GTID: h.gtid, CommitUnix: int64(header.Timestamp), Seen: time.Now()}); err != nil {
			return err
		}
	}
	return h.c.ack(pos, set, force)
}

func (h *handler) flush(meta invalidate.Meta) error {
	if h.batch.Len() == 0 {
		return nil
	}
	if err := h.c.opts.Publisher.Publish(h.ctx, h.batch, meta); err != nil {
		return err
	}
	h.batch.Reset()
	return nil
}
