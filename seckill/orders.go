package seckill

import (
	"context"
	"database/sql"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"time"
)

//go:embed schema.sql
var schemaSQL string

// Migrate creates the flash-sale tables in db's database if they are
// missing. Every statement is idempotent.
func Migrate(ctx context.Context, db *sql.DB) error {
	for _, stmt := range strings.Split(schemaSQL, ";\n") {
		if strings.TrimSpace(stripComments(stmt)) == "" {
			continue
		}
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	return nil
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "--") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// Activity is a flash sale of one item.
type Activity struct {
	ID           int64     `json:"id"`
	ItemID       int64     `json:"item_id"`
	Title        string    `json:"title"`
	Price        string    `json:"price"`
	StartAt      time.Time `json:"start_at"`
	EndAt        time.Time `json:"end_at"`
	TotalStock   int       `json:"total_stock"`
	PerUserLimit int       `json:"per_user_limit"`
	// Available and Sold are MySQL's stock row: display data, cached and
	// purged through the binlog path, never what the buy path decides on.
	Available int `json:"available"`
	Sold      int `json:"sold"`
}

// LoadActivity reads an activity and its stock row.
func LoadActivity(ctx context.Context, db *sql.DB, id int64) (*Activity, error) {
	a := &Activity{ID: id}
	err := db.QueryRowContext(ctx, `SELECT a.item_id, a.title, a.price, a.start_at, a.end_at, a.total_stock, a.per_user_limit,
		COALESCE(s.available, 0), COALESCE(s.sold, 0)
		FROM activity a LEFT JOIN activity_stock s ON s.activity_id = a.id WHERE a.id = ?`, id).
		Scan(&a.ItemID, &a.Title, &a.Price, &a.StartAt, &a.EndAt, &a.TotalStock, &a.PerUserLimit, &a.Available, &a.Sold)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("activity %d: %w", id, err)
	}
	return a, nil
}

var errNotFound = errors.New("not found")

// CreateActivity inserts an activity and its stock row (available = total).
func CreateActivity(ctx context.Context, db *sql.DB, a Activity) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO activity (id, item_id, title, price, start_at, end_at, total_stock, per_user_limit)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, a.ID, a.ItemID, a.Title, a.Price, a.StartAt.UTC(), a.EndAt.UTC(), a.TotalStock, a.PerUserLimit); err != nil {
		return fmt.Errorf("insert activity %d: %w", a.ID, err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO activity_stock (activity_id, available, sold) VALUES (?, ?, 0)", a.ID, a.TotalStock); err != nil {
		return fmt.Errorf("insert stock of activity %d: %w", a.ID, err)
	}
	return tx.Commit()
}

// Order is a row of orders.
type Order struct {
	ID         int64      `json:"order_id"`
	Activity   int64      `json:"activity_id"`
	User       string     `json:"user"`
	Qty        int        `json:"qty"`
	Status     string     `json:"status"`
	RequestID  string     `json:"request_id"`
	AcceptedAt time.Time  `json:"accepted_at"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	PaidAt     *time.Time `json:"paid_at,omitempty"`
}

const orderColumns = "id, activity_id, user_id, qty, status, request_id, accepted_at, created_at, expires_at, paid_at"

func scanOrder(s interface{ Scan(...any) error }) (*Order, error) {
	o := &Order{}
	var paid sql.NullTime
	if err := s.Scan(&o.ID, &o.Activity, &o.User, &o.Qty, &o.Status, &o.RequestID, &o.AcceptedAt, &o.CreatedAt, &o.ExpiresAt, &paid); err != nil {
		return nil, err
	}
	if paid.Valid {
		o.PaidAt = &paid.Time
	}
	return o, nil
}

// FindOrder reads the order of a request, errNotFound if there is none.
func FindOrder(ctx context.Context, db *sql.DB, activity int64, rid string) (*Order, error) {
	o, err := scanOrder(db.QueryRowContext(ctx, "SELECT "+orderColumns+" FROM orders WHERE activity_id = ? AND request_id = ?", activity, rid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("order %d/%s: %w", activity, rid, err)
	}
	return o, nil
}

// Payment errors.
var (
	ErrOrderExpired = errors.New("order expired: its stock was given back")
	ErrNoOrder      = errors.New("no order for this request (still being written, rejected or unknown)")
)

// Pay moves a reserved, unexpired order to paid (compare-and-set on the
// status and the expiry time). Paying a paid order again succeeds
// (idempotent); an expired one, or one past its expiry time, is refused.
func Pay(ctx context.Context, db *sql.DB, activity int64, rid string, now time.Time) (*Order, error) {
	res, err := db.ExecContext(ctx, `UPDATE orders SET status = 'paid', paid_at = ?
		WHERE activity_id = ? AND request_id = ? AND status = 'reserved' AND expires_at > ?`, now.UTC(), activity, rid, now.UTC())
	if err != nil {
		return nil, fmt.Errorf("pay %d/%s: %w", activity, rid, err)
	}
	o, err := FindOrder(ctx, db, activity, rid)
	if errors.Is(err, errNotFound) {
		return nil, ErrNoOrder
	}
	if err != nil {
		return nil, err
	}
	if n, _ := res.RowsAffected(); n == 1 || o.Status == "paid" {
		return o, nil
	}
	return o, ErrOrderExpired
}

// ExpireDue expires up to limit reserved orders whose time is past, each in
// its own transaction: status reserved → expired (compare-and-set) and its
// units back to the stock row, so a unit is given back exactly once however
// many expirers run. Redis gets them back after the commit (and the
// reconciler repairs a give-back lost there). It returns the orders expired.
func ExpireDue(ctx context.Context, db *sql.DB, r *Reserver, now time.Time, limit int) ([]*Order, error) {
	rows, err := db.QueryContext(ctx, "SELECT "+orderColumns+" FROM orders WHERE status = 'reserved' AND expires_at <= ? ORDER BY expires_at LIMIT ?", now.UTC(), limit)
	if err != nil {
		return nil, fmt.Errorf("due orders: %w", err)
	}
	var due []*Order
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		due = append(due, o)
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	var expired []*Order
	var errs []error
	for _, o := range due {
		ok, err := expireOne(ctx, db, o, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue // paid or expired meanwhile
		}
		o.Status = "expired"
		expired = append(expired, o)
		if err := r.Expire(ctx, Reservation{Activity: o.Activity, RequestID: o.RequestID, User: o.User, Qty: o.Qty, AcceptedMS: o.AcceptedAt.UnixMilli()}); err != nil {
			errs = append(errs, err)
		}
	}
	return expired, errors.Join(errs...)
}

func expireOne(ctx context.Context, db *sql.DB, o *Order, now time.Time) (bool, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	// Lock order as the writer's: stock row first.
	var avail int
	if err := tx.QueryRowContext(ctx, "SELECT available FROM activity_stock WHERE activity_id = ? FOR UPDATE", o.Activity).Scan(&avail); err != nil {
		return false, fmt.Errorf("lock stock of activity %d: %w", o.Activity, err)
	}
	res, err := tx.ExecContext(ctx, "UPDATE orders SET status = 'expired' WHERE id = ? AND status = 'reserved' AND expires_at <= ?", o.ID, now.UTC())
	if err != nil {
		return false, fmt.Errorf("expire order %d: %w", o.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, "UPDATE activity_stock SET available = available + ?, sold = sold - ? WHERE activity_id = ?", o.Qty, o.Qty, o.Activity); err != nil {
		return false, fmt.Errorf("give back order %d: %w", o.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("expire order %d: %w", o.ID, err)
	}
	return true, nil
}

// LoadCounters sets an activity's Redis counters from MySQL when they are
// missing (first use, or Redis restarted empty): reservable = available;
// units held per user = their orders not expired; a record per order, so
// its request id stays taken. Reservations still queued
// then are not counted; the writers settle them as they come and the
// reconciler repairs what is left.
func LoadCounters(ctx context.Context, db *sql.DB, r *Reserver, activity int64) (bool, error) {
	var avail int
	err := db.QueryRowContext(ctx, "SELECT available FROM activity_stock WHERE activity_id = ?", activity).Scan(&avail)
	if errors.Is(err, sql.ErrNoRows) {
		return false, errNotFound
	}
	if err != nil {
		return false, fmt.Errorf("stock of activity %d: %w", activity, err)
	}
	held := map[string]int{}
	var orders []Reservation
	expired := map[string]bool{}
	rows, err := db.QueryContext(ctx, "SELECT request_id, user_id, qty, status, accepted_at FROM orders WHERE activity_id = ?", activity)
	if err != nil {
		return false, fmt.Errorf("orders of activity %d: %w", activity, err)
	}
	for rows.Next() {
		var o Reservation
		var status string
		var acc time.Time
		if err := rows.Scan(&o.RequestID, &o.User, &o.Qty, &status, &acc); err != nil {
			rows.Close()
			return false, err
		}
		o.Activity, o.AcceptedMS = activity, acc.UnixMilli()
		if status == "expired" {
			expired[o.RequestID] = true
		} else {
			held[o.User] += o.Qty
		}
		orders = append(orders, o)
	}
	if err := rows.Close(); err != nil {
		return false, err
	}
	return r.Load(ctx, activity, avail, held, orders, expired)
}
