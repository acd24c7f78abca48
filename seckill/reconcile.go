package seckill

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// snapshotScript reads an activity's counters and records at one instant.
var snapshotScript = redis.NewScript(`
return {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[4]) or '0',
  redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[2])}
`)

// repairScript writes the reconciled counters and records only if nothing
// changed since the snapshot (same version). ARGV: version, stock, number of
// user pairs, then (user, units) pairs, then (request id, record) pairs.
var repairScript = redis.NewScript(`
if (redis.call('GET', KEYS[4]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
local nu = tonumber(ARGV[3])
local i = 4
for _ = 1, nu do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i+1])
  i = i + 2
end
redis.call('INCR', KEYS[4])
return 1
`)

// ReconcileReport says what one reconciliation of an activity found and
// fixed.
type ReconcileReport struct {
	Activity int64 `json:"activity"`
	// Applied is false when Redis changed during the pass (reservations
	// still arriving): nothing was written; try again later.
	Applied bool `json:"applied"`
	// StockBefore is -1 when the counters were not loaded.
	StockBefore int `json:"stock_before"`
	StockAfter  int `json:"stock_after"`
	// Pending counts reservations still queued or being written (not yet
	// past the grace time); their units stay taken.
	Pending int `json:"pending"`
	// Ordered: records set to ordered because MySQL has the order.
	Ordered int `json:"ordered"`
	// Expired: records set to expired because MySQL expired the order.
	Expired int `json:"expired"`
	// GivenBack: reservations past the grace time that MySQL never
	// ordered (a lost message, a writer that died with them): given back.
	GivenBack int `json:"given_back"`
	// UsersFixed: users whose units held differed from MySQL + pending.
	UsersFixed int `json:"users_fixed"`
}

// Drift reports whether the pass repaired anything. Loading counters that
// were not there (StockBefore -1) is not a repair.
func (r ReconcileReport) Drift() bool {
	return (r.StockBefore >= 0 && r.StockBefore != r.StockAfter) || r.Ordered+r.Expired+r.GivenBack+r.UsersFixed > 0
}

type mysqlOrder struct {
	user   string
	qty    int
	status string
}

// Reconcile compares an activity's Redis counters and records with MySQL
// and repairs Redis: MySQL's orders are the truth; a reservation MySQL has
// no order for is still pending while younger than grace, else given back.
// The reservable stock becomes MySQL's available minus the pending units.
// Redis is read first, MySQL second (one consistent snapshot), so an order
// committed in between is seen as an order, never as pending.
func Reconcile(ctx context.Context, db *sql.DB, r *Reserver, activity int64, grace time.Duration, now time.Time) (ReconcileReport, error) {
	rep := ReconcileReport{Activity: activity, StockBefore: -1}
	v, err := snapshotScript.Run(ctx, r.rdb, activityKeys(activity)).Slice()
	if err != nil {
		return rep, fmt.Errorf("reconcile %d: redis snapshot: %w", activity, err)
	}
	if s, _ := v[0].(string); s != "" {
		fmt.Sscan(s, &rep.StockBefore)
	}
	version, _ := v[1].(string)
	records := map[string]record{}
	reqs, _ := v[2].([]any)
	for i := 0; i+1 < len(reqs); i += 2 {
		rid, _ := reqs[i].(string)
		s, _ := reqs[i+1].(string)
		rec, err := parseRecord(s)
		if err != nil {
			return rep, fmt.Errorf("reconcile %d: %w", activity, err)
		}
		records[rid] = rec
	}
	heldRedis := map[string]string{}
	us, _ := v[3].([]any)
	for i := 0; i+1 < len(us); i += 2 {
		u, _ := us[i].(string)
		n, _ := us[i+1].(string)
		heldRedis[u] = n
	}

	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return rep, fmt.Errorf("reconcile %d: begin: %w", activity, err)
	}
	defer tx.Rollback()
	var available int
	if err := tx.QueryRowContext(ctx, "SELECT available FROM activity_stock WHERE activity_id = ?", activity).Scan(&available); err != nil {
		return rep, fmt.Errorf("reconcile %d: stock: %w", activity, err)
	}
	orders := map[string]mysqlOrder{}
	rows, err := tx.QueryContext(ctx, "SELECT request_id, user_id, qty, status FROM orders WHERE activity_id = ?", activity)
	if err != nil {
		return rep, fmt.Errorf("reconcile %d: orders: %w", activity, err)
	}
	for rows.Next() {
		var rid string
		var o mysqlOrder
		if err := rows.Scan(&rid, &o.user, &o.qty, &o.status); err != nil {
			rows.Close()
			return rep, err
		}
		orders[rid] = o
	}
	if err := rows.Close(); err != nil {
		return rep, err
	}
	tx.Rollback()

	held := map[string]int{}
	var updates []any
	setState := func(rid string, rec record, st string) {
		updates = append(updates, rid, fmt.Sprintf("%s|%s|%d|%d", st, rec.User, rec.Qty, rec.AcceptedMS))
	}
	pendingUnits := 0
	for rid, rec := range records {
		if o, ok := orders[rid]; ok {
			want := StateOrdered
			if o.status == "expired" {
				want = StateExpired
			}
			if rec.State != want {
				setState(rid, rec, want)
				if want == StateOrdered {
					rep.Ordered++
				} else {
					rep.Expired++
				}
			}
			continue
		}
		switch rec.State {
		case StateReserved, StateWriting:
			if now.Sub(time.UnixMilli(rec.AcceptedMS)) < grace {
				rep.Pending++
				pendingUnits += rec.Qty
				held[rec.User] += rec.Qty
				continue
			}
			setState(rid, rec, StateGivenBack)
			rep.GivenBack++
		case StateOrdered, StateExpired:
			// Redis says ordered but MySQL has no such order.
			setState(rid, rec, StateGivenBack)
			rep.GivenBack++
		}
	}
	for rid, o := range orders {
		if o.status != "expired" {
			held[o.user] += o.qty
		}
		if _, ok := records[rid]; !ok {
			st := StateOrdered
			if o.status == "expired" {
				st = StateExpired
			}
			setState(rid, record{User: o.user, Qty: o.qty}, st)
		}
	}
	rep.StockAfter = available - pendingUnits
	for u, n := range held {
		if heldRedis[u] != fmt.Sprint(n) {
			rep.UsersFixed++
		}
	}
	for u, n := range heldRedis {
		if _, ok := held[u]; !ok && n != "0" {
			rep.UsersFixed++
		}
	}
	args := []any{version, rep.StockAfter, len(held)}
	for u, n := range held {
		args = append(args, u, n)
	}
	args = append(args, updates...)
	ok, err := repairScript.Run(ctx, r.rdb, activityKeys(activity), args...).Int()
	if err != nil {
		return rep, fmt.Errorf("reconcile %d: redis repair: %w", activity, err)
	}
	rep.Applied = ok == 1
	return rep, nil
}
