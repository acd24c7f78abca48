package seckill_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/seckill"
)

// clock is the service's time in these tests: it stands still until the
// test moves it.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *clock) now() time.Time           { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) set(t time.Time)          { c.ns.Store(t.UnixNano()) }
func (c *clock) advance(d time.Duration)  { c.ns.Add(int64(d)) }
func (c *clock) since(t time.Time) string { return c.now().Sub(t).String() }

// reply is a raw HTTP answer.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) String() string {
	return fmt.Sprintf("%d %s", r.status, strings.TrimSpace(string(r.body)))
}

// call sends body as is (nothing when empty) and reads the whole answer.
func (w *world) call(method, path, body string) (reply, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, w.base+path, rd)
	if err != nil {
		return reply{}, err
	}
	resp, err := w.http.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

func (w *world) mustCall(method, path, body string) reply {
	w.t.Helper()
	r, err := w.call(method, path, body)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// mustJSON decodes a JSON answer of the expected status into v.
func (w *world) mustJSON(r reply, status int, v any) {
	w.t.Helper()
	if r.status != status {
		w.t.Fatalf("answer %s, want status %d", r, status)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		w.t.Fatalf("answer %s: Content-Type %q, want application/json", r, ct)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		w.t.Fatalf("answer %s: %v", r, err)
	}
}

// apiError is the body of a refusal.
type apiError struct {
	Code       string `json:"code"`
	Error      string `json:"error"`
	RetryAfter int    `json:"retry_after_s"`
}

// refused checks that r is a JSON refusal with status and code and a
// message, and returns it.
func (w *world) refused(r reply, status int, code string) apiError {
	w.t.Helper()
	var e apiError
	w.mustJSON(r, status, &e)
	if e.Code != code {
		w.t.Fatalf("answer %s: code %q, want %q", r, e.Code, code)
	}
	if e.Error == "" {
		w.t.Fatalf("answer %s: no error message", r)
	}
	return e
}

func buyBody(rid string, qty int) string {
	b, _ := json.Marshal(map[string]any{"request_id": rid, "qty": qty})
	return string(b)
}

// mustBuyURL is the order URL buy.js gives user.
func (w *world) mustBuyURL(activity int64, user string) string {
	w.t.Helper()
	u, err := w.buyURL(activity, user)
	if err != nil {
		w.t.Fatal(err)
	}
	return u
}

// mustBuy buys and checks the answer is 202 reserved.
func (w *world) mustBuy(buyURL, rid string, qty int) {
	w.t.Helper()
	r := w.mustCall("POST", buyURL, buyBody(rid, qty))
	var a struct {
		RequestID string `json:"request_id"`
		State     string `json:"state"`
		Poll      string `json:"poll"`
	}
	w.mustJSON(r, http.StatusAccepted, &a)
	if a.RequestID != rid || a.State != "reserved" || a.Poll == "" {
		w.t.Fatalf("buy %s: %s, want request %s reserved with a poll URL", rid, r, rid)
	}
}

// orderState is GET /orders/{rid}.
type orderState struct {
	RequestID string         `json:"request_id"`
	Activity  int64          `json:"activity"`
	State     string         `json:"state"`
	Order     *seckill.Order `json:"order"`
}

func (w *world) orderState(activity int64, rid string) (orderState, error) {
	r, err := w.call("GET", fmt.Sprintf("/orders/%s?activity=%d", rid, activity), "")
	if err != nil {
		return orderState{}, err
	}
	var o orderState
	if r.status != http.StatusOK {
		return o, fmt.Errorf("GET /orders/%s: %s", rid, r)
	}
	if err := json.Unmarshal(r.body, &o); err != nil {
		return o, fmt.Errorf("GET /orders/%s: %s: %w", rid, r, err)
	}
	return o, nil
}

// waitState polls GET /orders/{rid} until the request is in state and, for
// ordered and expired, carries its order (with that order status when
// status is not empty).
func (w *world) waitState(activity int64, rid, state, status string) orderState {
	w.t.Helper()
	var o orderState
	stacktest.Eventually(w.t, 10*time.Second, func() error {
		var err error
		if o, err = w.orderState(activity, rid); err != nil {
			return err
		}
		if o.State != state {
			return fmt.Errorf("%s: state %q, want %q", rid, o.State, state)
		}
		if state == "ordered" || state == "expired" {
			if o.Order == nil {
				return fmt.Errorf("%s: %s without its order", rid, state)
			}
			if status != "" && o.Order.Status != status {
				return fmt.Errorf("%s: order status %q, want %q", rid, o.Order.Status, status)
			}
		}
		return nil
	})
	return o
}

// pay is POST /orders/{rid}/pay.
func (w *world) pay(activity int64, rid string) reply {
	w.t.Helper()
	return w.mustCall("POST", fmt.Sprintf("/orders/%s/pay?activity=%d", rid, activity), "")
}

// redisStock is the reservable stock in Redis (sk:{A}:stock).
// loseCounters deletes an activity's reservation counters, as a Redis
// restarted empty has lost them.
func (w *world) loseCounters(activity int64) {
	w.t.Helper()
	key := func(k string) string { return fmt.Sprintf("sk:{%d}:%s", activity, k) }
	if err := w.rdb.Del(context.Background(), key("stock"), key("users"), key("req"), key("ver")).Err(); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) redisStock(activity int64) int {
	w.t.Helper()
	n, err := w.rdb.Get(context.Background(), fmt.Sprintf("sk:{%d}:stock", activity)).Int()
	if err != nil {
		w.t.Fatalf("redis stock of activity %d: %v", activity, err)
	}
	return n
}

// redisHeld is the units user holds in Redis (sk:{A}:users; 0 if absent).
func (w *world) redisHeld(activity int64, user string) int {
	w.t.Helper()
	n, err := w.rdb.HGet(context.Background(), fmt.Sprintf("sk:{%d}:users", activity), user).Int()
	if errors.Is(err, redis.Nil) {
		return 0
	}
	if err != nil {
		w.t.Fatalf("redis units of %s in activity %d: %v", user, activity, err)
	}
	return n
}

func (w *world) checkStock(activity int64, available, sold int) {
	w.t.Helper()
	if a, s := w.stockRow(activity); a != available || s != sold {
		w.t.Fatalf("MySQL stock of activity %d: available %d sold %d, want %d and %d", activity, a, s, available, sold)
	}
}

// withQuery returns u with query parameter k set to v (removed when v is
// empty).
func withQuery(t *testing.T, u, k, v string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	q := p.Query()
	if v == "" {
		q.Del(k)
	} else {
		q.Set(k, v)
	}
	p.RawQuery = q.Encode()
	return p.String()
}

func queryOf(t *testing.T, u, k string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return p.Query().Get(k)
}

// activityStatus is GET /activities/{id}.
type activityStatus struct {
	ID       int64     `json:"id"`
	StartAt  time.Time `json:"start_at"`
	EndAt    time.Time `json:"end_at"`
	Status   string    `json:"status"`
	OpensInS int       `json:"opens_in_s"`
}

func (w *world) activityStatus(id int64) activityStatus {
	w.t.Helper()
	var a activityStatus
	w.mustJSON(w.mustCall("GET", fmt.Sprintf("/activities/%d", id), ""), http.StatusOK, &a)
	return a
}

// TestSaleWindowAndToken: before the start there is no order URL and a buy
// is told how long to wait; from the start buy.js hands out a token that is
// valid for that user, that activity and that sale window only; after the
// end buying is refused.
func TestSaleWindowAndToken(t *testing.T) {
	t0 := time.Now().UTC().Truncate(time.Second)
	start, end := t0.Add(30*time.Second), t0.Add(time.Hour)
	clk := newClock(t0)
	const a, other = 11, 12
	w := newWorld(t, worldOpts{now: clk.now, activities: []seckill.Activity{
		{ID: a, ItemID: 1, Title: "window", Price: "9.90", StartAt: start, EndAt: end, TotalStock: 10, PerUserLimit: 2},
		{ID: other, ItemID: 2, Title: "other", Price: "9.90", StartAt: start, EndAt: end, TotalStock: 10, PerUserLimit: 2},
	}})

	// Before the start: no URL, no token, the wait in seconds.
	js := w.mustCall("GET", fmt.Sprintf("/activities/%d/buy.js?user=alice", a), "")
	if js.status != http.StatusOK || !strings.HasPrefix(js.header.Get("Content-Type"), "application/javascript") {
		t.Fatalf("buy.js before the start: %s (%s)", js, js.header.Get("Content-Type"))
	}
	state, _, ok := strings.Cut(strings.TrimPrefix(string(js.body), "window.flashsale = "), ";\n")
	if !ok || strings.Contains(state, "token") || strings.Contains(state, "buy_url") {
		t.Fatalf("buy.js hands out an order URL before the start: %s", js)
	}
	s, err := w.do("GET", fmt.Sprintf("/activities/%d/buy.js?user=alice", a), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Open || s.BuyURL != "" || s.OpensIn != 30 {
		t.Fatalf("buy.js 30 s before the start: %+v, want closed, no buy_url, opens_in_s 30", s)
	}
	st := w.activityStatus(a)
	if st.Status != "upcoming" || st.OpensInS != 30 || !st.StartAt.Equal(start) {
		t.Fatalf("GET /activities/%d 30 s before the start: %+v, want upcoming, opens_in_s 30", a, st)
	}
	// Even a correctly made token cannot buy early.
	act, err := seckill.LoadActivity(context.Background(), w.db, a)
	if err != nil {
		t.Fatal(err)
	}
	early := fmt.Sprintf("/activities/%d/buy?user=alice&token=%s", a, seckill.Token(w.key, "alice", act))
	for _, path := range []string{early, withQuery(t, early, "token", "")} {
		r := w.mustCall("POST", path, buyBody("early-1", 1))
		e := w.refused(r, http.StatusTooEarly, "not_started")
		if e.RetryAfter != 30 || r.header.Get("Retry-After") != "30" {
			t.Fatalf("buy 30 s early: retry_after_s %d, Retry-After %q, want 30", e.RetryAfter, r.header.Get("Retry-After"))
		}
	}
	clk.advance(10*time.Second + 400*time.Millisecond)
	r := w.mustCall("POST", early, buyBody("early-2", 1))
	if e := w.refused(r, http.StatusTooEarly, "not_started"); e.RetryAfter != 20 || r.header.Get("Retry-After") != "20" {
		t.Fatalf("buy 19.6 s early: retry_after_s %d, Retry-After %q, want 20 (rounded up)", e.RetryAfter, r.header.Get("Retry-After"))
	}
	if st := w.activityStatus(a); st.Status != "upcoming" || st.OpensInS != 20 {
		t.Fatalf("GET /activities/%d 19.6 s before the start: %+v, want upcoming, opens_in_s 20", a, st)
	}
	if n, err := w.rdb.Exists(context.Background(), fmt.Sprintf("sk:{%d}:req", a)).Result(); err != nil || n != 0 {
		t.Fatalf("refused early buys left reservations in Redis (%d, %v)", n, err)
	}

	// Open: buy.js hands out the URL with the token; it buys.
	clk.set(start)
	if st := w.activityStatus(a); st.Status != "open" || st.OpensInS != 0 {
		t.Fatalf("GET /activities/%d at the start: %+v, want open", a, st)
	}
	aliceURL := w.mustBuyURL(a, "alice")
	if got, want := queryOf(t, aliceURL, "token"), seckill.Token(w.key, "alice", act); got != want {
		t.Fatalf("buy.js token %q, want %q", got, want)
	}
	if queryOf(t, aliceURL, "user") != "alice" || !strings.HasPrefix(aliceURL, fmt.Sprintf("/activities/%d/buy?", a)) {
		t.Fatalf("buy_url %q: want /activities/%d/buy for alice", aliceURL, a)
	}
	w.mustBuy(aliceURL, "alice-1", 1)
	bobURL := w.mustBuyURL(a, "bob")
	otherURL := w.mustBuyURL(other, "alice")

	// Tokens that are not alice's for this sale.
	for name, path := range map[string]string{
		"wrong token":           withQuery(t, aliceURL, "token", "AAAAAAAAAAAAAAAAAAAAAAAA"),
		"truncated token":       withQuery(t, aliceURL, "token", queryOf(t, aliceURL, "token")[1:]),
		"bob's token":           withQuery(t, bobURL, "user", "alice"),
		"alice's token for bob": withQuery(t, aliceURL, "user", "bob"),
		"another activity's":    withQuery(t, aliceURL, "token", queryOf(t, otherURL, "token")),
		"missing token":         withQuery(t, aliceURL, "token", ""),
		"made with another key": withQuery(t, aliceURL, "token", seckill.Token([]byte("another-key-0123456789"), "alice", act)),
	} {
		r := w.mustCall("POST", path, buyBody("bad-"+strings.NewReplacer(" ", "-", "'", "").Replace(name), 1))
		if r.status != http.StatusForbidden {
			t.Errorf("%s: %s, want 403 bad_token", name, r)
			continue
		}
		w.refused(r, http.StatusForbidden, "bad_token")
	}
	if got := w.redisStock(a); got != 9 {
		t.Fatalf("Redis stock %d after one accepted unit and refused tokens, want 9", got)
	}
	w.mustBuy(bobURL, "bob-1", 1)

	// The sale window moves: tokens issued for the old one stop working
	// once the service has re-read the activity.
	newStart := start.Add(-10 * time.Second)
	w.exec("UPDATE activity SET start_at = ? WHERE id = ?", newStart, a)
	var newURL string
	stacktest.Eventually(t, 5*time.Second, func() error {
		u, err := w.buyURL(a, "alice")
		if err != nil {
			return err
		}
		if u == aliceURL {
			return errors.New("buy.js still hands out the token of the old window")
		}
		newURL = u
		return nil
	})
	moved := *act
	moved.StartAt = newStart
	if got, want := queryOf(t, newURL, "token"), seckill.Token(w.key, "alice", &moved); got != want {
		t.Fatalf("token after the move %q, want %q", got, want)
	}
	w.refused(w.mustCall("POST", aliceURL, buyBody("alice-old-window", 1)), http.StatusForbidden, "bad_token")
	w.refused(w.mustCall("POST", bobURL, buyBody("bob-old-window", 1)), http.StatusForbidden, "bad_token")
	w.mustBuy(newURL, "alice-2", 1)

	// After the end.
	clk.set(end)
	w.refused(w.mustCall("POST", newURL, buyBody("alice-late", 1)), http.StatusGone, "ended")
	s, err = w.do("GET", fmt.Sprintf("/activities/%d/buy.js?user=alice", a), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Open || s.BuyURL != "" {
		t.Fatalf("buy.js after the end: %+v, want closed without buy_url", s)
	}
	if st := w.activityStatus(a); st.Status != "ended" {
		t.Fatalf("GET /activities/%d after the end: %+v, want ended", a, st)
	}
	if got := w.redisStock(a); got != 7 {
		t.Fatalf("Redis stock %d after 3 accepted units, want 7", got)
	}
}

// TestExpiryAndLatePayment: an unpaid order expires after OrderTTL; its
// unit goes back to MySQL and Redis exactly once and can be sold again;
// paying it then is refused. A paid order is paid once, can be paid again
// (same answer) and never expires.
func TestExpiryAndLatePayment(t *testing.T) {
	const a, ttl = 21, 300 * time.Millisecond
	// Milliseconds: the service clock is stored in DATETIME(6) columns.
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	clk := newClock(t0)
	w := newWorld(t, worldOpts{writer: true, expirer: true, orderTTL: ttl, grace: time.Hour, now: clk.now,
		activities: []seckill.Activity{{ID: a, ItemID: 1, Title: "expiry", Price: "1.00",
			StartAt: t0.Add(-time.Minute), EndAt: t0.Add(time.Hour), TotalStock: 2, PerUserLimit: 1}}})
	ctx := context.Background()
	res := seckill.NewReserver(w.rdb)

	// An order left unpaid.
	w.mustBuy(w.mustBuyURL(a, "u1"), "r1", 1)
	o1 := w.waitState(a, "r1", "ordered", "reserved").Order
	if want := time.UnixMilli(t0.UnixMilli()).Add(ttl); !o1.ExpiresAt.Equal(want) {
		t.Fatalf("r1 expires at %v, want accepted + TTL = %v", o1.ExpiresAt, want)
	}
	w.checkStock(a, 1, 1)
	if s, h := w.redisStock(a), w.redisHeld(a, "u1"); s != 1 || h != 1 {
		t.Fatalf("Redis after r1: stock %d, u1 holds %d; want 1 and 1", s, h)
	}
	// Not due yet: the expirer leaves it (it runs every 50 ms on the
	// service clock, which stands still).
	if exp, err := seckill.ExpireDue(ctx, w.db, res, clk.now().Add(ttl-time.Millisecond), 100); err != nil || len(exp) != 0 {
		t.Fatalf("ExpireDue before the TTL: %d expired, %v", len(exp), err)
	}

	clk.advance(ttl + time.Millisecond)
	o1 = w.waitState(a, "r1", "expired", "expired").Order
	if o1.User != "u1" || o1.Qty != 1 || o1.PaidAt != nil {
		t.Fatalf("expired r1: %+v", o1)
	}
	w.checkStock(a, 2, 0)
	if s, h := w.redisStock(a), w.redisHeld(a, "u1"); s != 2 || h != 0 {
		t.Fatalf("Redis after r1 expired: stock %d, u1 holds %d; want 2 and 0", s, h)
	}
	// The expirer path again (later, and the Redis give-back repeated):
	// nothing moves a second time.
	for range 2 {
		exp, err := seckill.ExpireDue(ctx, w.db, res, clk.now().Add(time.Hour), 100)
		if err != nil || len(exp) != 0 {
			t.Fatalf("ExpireDue again: %d expired, %v; want none", len(exp), err)
		}
		if err := res.Expire(ctx, seckill.Reservation{Activity: a, RequestID: "r1", User: "u1", Qty: 1, AcceptedMS: o1.AcceptedAt.UnixMilli()}); err != nil {
			t.Fatal(err)
		}
	}
	w.checkStock(a, 2, 0)
	if s, h := w.redisStock(a), w.redisHeld(a, "u1"); s != 2 || h != 0 {
		t.Fatalf("Redis after expiring r1 again: stock %d, u1 holds %d; want 2 and 0", s, h)
	}
	// Paying it now is refused.
	w.refused(w.pay(a, "r1"), http.StatusConflict, "expired")
	w.checkStock(a, 2, 0)
	if o := w.waitState(a, "r1", "expired", "expired"); o.Order.PaidAt != nil {
		t.Fatalf("r1 after a refused payment: %+v", o.Order)
	}
	// Paying an order nobody made.
	w.refused(w.pay(a, "nobody"), http.StatusNotFound, "no_order")

	// An order paid in time, and another left unpaid: both units sold.
	t1 := clk.now()
	w.mustBuy(w.mustBuyURL(a, "u2"), "r2", 1)
	w.mustBuy(w.mustBuyURL(a, "u3"), "r3", 1)
	w.waitState(a, "r2", "ordered", "reserved")
	w.waitState(a, "r3", "ordered", "reserved")
	w.refused(w.mustCall("POST", w.mustBuyURL(a, "u4"), buyBody("r4", 1)), http.StatusConflict, "sold_out")
	var paid, again seckill.Order
	w.mustJSON(w.pay(a, "r2"), http.StatusOK, &paid)
	if paid.Status != "paid" || paid.PaidAt == nil || !paid.PaidAt.Equal(t1) || paid.RequestID != "r2" || paid.User != "u2" {
		t.Fatalf("pay r2: %+v, want paid at %v", paid, t1)
	}
	clk.advance(100 * time.Millisecond) // still before r2's expiry
	w.mustJSON(w.pay(a, "r2"), http.StatusOK, &again)
	if again.Status != "paid" || again.PaidAt == nil || !again.PaidAt.Equal(*paid.PaidAt) || again.ID != paid.ID {
		t.Fatalf("pay r2 again: %+v, want the same payment %+v", again, paid)
	}
	w.checkStock(a, 0, 2)

	// Past both orders' expiry: r3 expires, r2 stays paid and sold.
	clk.set(t1.Add(ttl + time.Millisecond))
	w.waitState(a, "r3", "expired", "expired")
	w.checkStock(a, 1, 1)
	if s, h2, h3 := w.redisStock(a), w.redisHeld(a, "u2"), w.redisHeld(a, "u3"); s != 1 || h2 != 1 || h3 != 0 {
		t.Fatalf("Redis after r3 expired: stock %d, u2 holds %d, u3 holds %d; want 1, 1, 0", s, h2, h3)
	}
	// Paying r2 after its expiry time still answers the payment.
	w.mustJSON(w.pay(a, "r2"), http.StatusOK, &again)
	if again.Status != "paid" || !again.PaidAt.Equal(*paid.PaidAt) {
		t.Fatalf("pay r2 after its expiry time: %+v", again)
	}
	if exp, err := seckill.ExpireDue(ctx, w.db, res, clk.now().Add(time.Hour), 100); err != nil || len(exp) != 0 {
		t.Fatalf("ExpireDue an hour later: %d expired, %v; want none", len(exp), err)
	}

	// The unit r3 gave back is sold to u4, who found it sold out before.
	w.mustBuy(w.mustBuyURL(a, "u4"), "r4", 1)
	w.waitState(a, "r4", "ordered", "reserved")
	w.checkStock(a, 0, 2)
	if s := w.redisStock(a); s != 0 {
		t.Fatalf("Redis stock %d after r4, want 0", s)
	}
	if o := w.waitState(a, "r2", "ordered", "paid"); o.Order.PaidAt == nil || !o.Order.PaidAt.Equal(*paid.PaidAt) {
		t.Fatalf("r2 at the end: %+v, want still paid at %v", o.Order, paid.PaidAt)
	}
	if n := w.queryInt("SELECT COUNT(*) FROM orders WHERE activity_id = ? AND status <> 'expired'", a); n != 2 {
		t.Fatalf("%d live orders, want 2 (r2 paid, r4)", n)
	}
	// Redis and MySQL agree after the expiries.
	if rep, err := seckill.Reconcile(ctx, w.db, res, a, time.Hour, clk.now()); err != nil || !rep.Applied || rep.Drift() || rep.StockAfter != 0 {
		t.Fatalf("reconcile after the expiries: %+v %v, want applied, no drift, stock 0", rep, err)
	}
	t.Logf("service clock moved %s", clk.since(t0))
}

// TestBuyRefusals: every refusal is a JSON body with a stable code, and
// none of them takes stock.
func TestBuyRefusals(t *testing.T) {
	const a = 31
	w := newWorld(t, worldOpts{activities: []seckill.Activity{openActivity(a, "refusals", 10, 2)}})
	u1 := w.mustBuyURL(a, "u1")
	u2 := w.mustBuyURL(a, "u2")

	w.mustBuy(u1, "shared", 1)
	for name, body := range map[string]string{
		"bad JSON":               `{"request_id": "x1", "qty": `,
		"not an object":          `"x1"`,
		"empty body":             ``,
		"unknown field":          `{"request_id": "x2", "qty": 1, "coupon": "FREE"}`,
		"qty as a string":        `{"request_id": "x3", "qty": "1"}`,
		"missing request_id":     `{"qty": 1}`,
		"empty request_id":       `{"request_id": "", "qty": 1}`,
		"request_id with a '|'":  `{"request_id": "x|4", "qty": 1}`,
		"request_id of 65 chars": buyBody(strings.Repeat("r", 65), 1),
		"negative qty":           buyBody("x5", -1),
		"qty over 100":           buyBody("x6", 101),
	} {
		r := w.mustCall("POST", u2, body)
		if r.status != http.StatusBadRequest {
			t.Errorf("%s: %s, want 400 bad_request", name, r)
			continue
		}
		e := w.refused(r, http.StatusBadRequest, "bad_request")
		if name == "unknown field" && !strings.Contains(e.Error, "coupon") {
			t.Errorf("unknown field: %q does not name the field", e.Error)
		}
	}
	w.refused(w.mustCall("POST", u2, `{"request_id": "big", "pad": "`+strings.Repeat("x", 5000)+`"}`), http.StatusRequestEntityTooLarge, "bad_request")
	w.refused(w.mustCall("POST", withQuery(t, u2, "user", ""), buyBody("x7", 1)), http.StatusBadRequest, "bad_request")
	w.refused(w.mustCall("POST", withQuery(t, u2, "user", "u|2"), buyBody("x8", 1)), http.StatusBadRequest, "bad_request")
	w.refused(w.mustCall("POST", "/activities/abc/buy?user=u2", buyBody("x9", 1)), http.StatusBadRequest, "bad_request")

	// Over the per-user limit in one request, then across requests.
	w.refused(w.mustCall("POST", u2, buyBody("x10", 3)), http.StatusForbidden, "over_quota")
	w.mustBuy(u2, "u2-a", 2)
	w.refused(w.mustCall("POST", u2, buyBody("u2-b", 1)), http.StatusForbidden, "over_quota")

	// Unknown activity.
	w.refused(w.mustCall("POST", fmt.Sprintf("/activities/999/buy?user=u2&token=%s", queryOf(t, u2, "token")), buyBody("x11", 1)), http.StatusNotFound, "not_found")
	w.refused(w.mustCall("GET", "/activities/999/buy.js?user=u2", ""), http.StatusNotFound, "not_found")
	w.refused(w.mustCall("GET", "/activities/999", ""), http.StatusNotFound, "not_found")
	w.refused(w.mustCall("GET", fmt.Sprintf("/orders/nope?activity=%d", a), ""), http.StatusNotFound, "not_found")
	w.refused(w.mustCall("GET", "/orders/shared", ""), http.StatusBadRequest, "bad_request")

	// A request id is one request: another user cannot take it, its own
	// user gets its state again.
	w.refused(w.mustCall("POST", u2, buyBody("shared", 1)), http.StatusConflict, "request_id_taken")
	w.refused(w.mustCall("POST", u2, buyBody("shared", 1)), http.StatusConflict, "request_id_taken")
	var dup struct {
		RequestID string `json:"request_id"`
		State     string `json:"state"`
		Duplicate bool   `json:"duplicate"`
	}
	w.mustJSON(w.mustCall("POST", u1, buyBody("shared", 1)), http.StatusOK, &dup)
	if dup.RequestID != "shared" || dup.State != "reserved" || !dup.Duplicate {
		t.Fatalf("retry of u1's request: %+v, want its state (reserved, duplicate)", dup)
	}
	if o, err := w.orderState(a, "shared"); err != nil || o.State != "reserved" {
		t.Fatalf("GET /orders/shared: %+v %v", o, err)
	}

	// Only the three accepted units left the stock.
	if s, h1, h2 := w.redisStock(a), w.redisHeld(a, "u1"), w.redisHeld(a, "u2"); s != 7 || h1 != 1 || h2 != 2 {
		t.Fatalf("Redis: stock %d, u1 holds %d, u2 holds %d; want 7, 1, 2", s, h1, h2)
	}
	if n, err := w.rdb.HLen(context.Background(), fmt.Sprintf("sk:{%d}:req", a)).Result(); err != nil || n != 2 {
		t.Fatalf("Redis holds %d requests (%v), want 2 (shared, u2-a)", n, err)
	}
}

// TestBuyRateLimited: a user's requests beyond the burst are refused with
// 429 and Retry-After before anything is reserved; other users are not
// affected; the user gets through again once the bucket refills.
func TestBuyRateLimited(t *testing.T) {
	const a = 41
	w := newWorld(t, worldOpts{rateUser: 2, burstUser: 2, activities: []seckill.Activity{openActivity(a, "rate", 10, 5)}})
	u1 := w.mustBuyURL(a, "u1")
	u2 := w.mustBuyURL(a, "u2")

	w.mustBuy(u1, "u1-1", 1)
	w.mustBuy(u1, "u1-2", 1)
	r := w.mustCall("POST", u1, buyBody("u1-3", 1))
	if e := w.refused(r, http.StatusTooManyRequests, "rate_limited"); e.RetryAfter < 1 {
		t.Fatalf("429 with retry_after_s %d", e.RetryAfter)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("429 with Retry-After %q", r.header.Get("Retry-After"))
	}
	w.mustBuy(u2, "u2-1", 1)
	if _, err := w.orderState(a, "u1-3"); err == nil {
		t.Fatal("the rate-limited request u1-3 was recorded")
	}
	if s := w.redisStock(a); s != 7 {
		t.Fatalf("Redis stock %d, want 7 (3 accepted)", s)
	}
	// The bucket refills (2/s): the same request goes through.
	stacktest.Eventually(t, 5*time.Second, func() error {
		r, err := w.call("POST", u1, buyBody("u1-3", 1))
		if err != nil {
			return err
		}
		if r.status != http.StatusAccepted {
			return fmt.Errorf("u1-3: %s", r)
		}
		return nil
	})
	if s := w.redisStock(a); s != 6 {
		t.Fatalf("Redis stock %d, want 6 (4 accepted)", s)
	}
}

// TestReconcileRepairsDrift: a reservation that never reached MySQL (its
// message lost) past the grace time is given back by the reconciler, which
// reports it; a second pass finds nothing. Then Redis loses the activity's
// counters: the next buy reloads them from MySQL, with the units users
// already hold.
func TestReconcileRepairsDrift(t *testing.T) {
	const a = 51
	w := newWorld(t, worldOpts{writer: true, orderTTL: time.Hour, activities: []seckill.Activity{openActivity(a, "drift", 10, 2)}})
	ctx := context.Background()
	res := seckill.NewReserver(w.rdb)
	key := func(k string) string { return fmt.Sprintf("sk:{%d}:%s", a, k) }

	w.mustBuy(w.mustBuyURL(a, "u1"), "u1-1", 2)
	w.waitState(a, "u1-1", "ordered", "reserved")
	w.checkStock(a, 8, 2)
	if rep, err := seckill.Reconcile(ctx, w.db, res, a, time.Minute, time.Now()); err != nil || !rep.Applied || rep.Drift() {
		t.Fatalf("reconcile before the drift: %+v %v, want applied without drift", rep, err)
	}

	// A reservation taken in Redis ten minutes ago whose message was lost.
	old := time.Now().Add(-10 * time.Minute).UnixMilli()
	if err := w.rdb.HSet(ctx, key("req"), "ghost-1", fmt.Sprintf("R|ghost|1|%d", old)).Err(); err != nil {
		t.Fatal(err)
	}
	w.rdb.HIncrBy(ctx, key("users"), "ghost", 1)
	w.rdb.DecrBy(ctx, key("stock"), 1)
	if s := w.redisStock(a); s != 7 {
		t.Fatalf("Redis stock %d after the drift, want 7", s)
	}
	if o, err := w.orderState(a, "ghost-1"); err != nil || o.State != "reserved" {
		t.Fatalf("ghost-1 before the reconcile: %+v %v, want reserved", o, err)
	}

	rep, err := seckill.Reconcile(ctx, w.db, res, a, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reconcile: %+v", rep)
	avail, _ := w.stockRow(a)
	if !rep.Applied || rep.GivenBack != 1 || rep.StockBefore != 7 || rep.StockAfter != avail || rep.UsersFixed != 1 ||
		rep.Pending != 0 || rep.Ordered != 0 || rep.Expired != 0 || !rep.Drift() {
		t.Fatalf("reconcile report %+v, want applied, given_back 1, stock 7 → %d (MySQL available), users_fixed 1", rep, avail)
	}
	if s, g, u := w.redisStock(a), w.redisHeld(a, "ghost"), w.redisHeld(a, "u1"); s != avail || g != 0 || u != 2 {
		t.Fatalf("Redis after the reconcile: stock %d, ghost holds %d, u1 holds %d; want %d, 0, 2", s, g, u, avail)
	}
	if o, err := w.orderState(a, "ghost-1"); err != nil || o.State != "given_back" {
		t.Fatalf("ghost-1 after the reconcile: %+v %v, want given_back", o, err)
	}
	rep, err = seckill.Reconcile(ctx, w.db, res, a, time.Minute, time.Now())
	if err != nil || !rep.Applied || rep.Drift() || rep.StockBefore != avail || rep.StockAfter != avail {
		t.Fatalf("second reconcile: %+v %v, want applied, no drift, stock %d", rep, err, avail)
	}

	// Redis loses the activity (restarted empty).
	w.loseCounters(a)
	// u1 holds its quota in MySQL: refused, the counters loaded on the way.
	u1 := w.mustBuyURL(a, "u1")
	w.refused(w.mustCall("POST", u1, buyBody("u1-2", 1)), http.StatusForbidden, "over_quota")
	if s, u := w.redisStock(a), w.redisHeld(a, "u1"); s != 8 || u != 2 {
		t.Fatalf("Redis reloaded from MySQL: stock %d, u1 holds %d; want 8 and 2", s, u)
	}
	// u1's order is still shown.
	if o := w.waitState(a, "u1-1", "ordered", "reserved"); o.Order.User != "u1" || o.Order.Qty != 2 {
		t.Fatalf("u1-1 after the reload: %+v", o.Order)
	}
	w.mustBuy(w.mustBuyURL(a, "u2"), "u2-1", 2)
	w.waitState(a, "u2-1", "ordered", "reserved")
	w.refused(w.mustCall("POST", w.mustBuyURL(a, "u2"), buyBody("u2-2", 1)), http.StatusForbidden, "over_quota")
	w.checkStock(a, 6, 4)
	if s, u1h, u2h := w.redisStock(a), w.redisHeld(a, "u1"), w.redisHeld(a, "u2"); s != 6 || u1h != 2 || u2h != 2 {
		t.Fatalf("Redis after u2's order: stock %d, u1 holds %d, u2 holds %d; want 6, 2, 2", s, u1h, u2h)
	}
	rep, err = seckill.Reconcile(ctx, w.db, res, a, time.Minute, time.Now())
	if err != nil || !rep.Applied || rep.StockBefore != 6 || rep.StockAfter != 6 || rep.GivenBack+rep.UsersFixed+rep.Expired != 0 {
		t.Fatalf("reconcile after the reload: %+v %v, want applied, stock 6, nothing given back or fixed", rep, err)
	}
}

// TestBuyURLEscapesUser: the order URL buy.js hands out must name the same
// user it was asked for, whatever characters the user id has (it may hold
// anything but '|' and NUL): a user id like an e-mail address with '+'
// must be able to buy.
func TestBuyURLEscapesUser(t *testing.T) {
	const a = 61
	w := newWorld(t, worldOpts{activities: []seckill.Activity{openActivity(a, "users", 10, 1)}})
	for i, user := range []string{"plain", "a+b@example.com", "100%", "x#y", "p;q", "sp ace&amp"} {
		u := w.mustBuyURL(a, url.QueryEscape(user))
		if got := queryOf(t, u, "user"); got != user {
			t.Errorf("buy.js for %q: buy_url %q names user %q", user, u, got)
			continue
		}
		r := w.mustCall("POST", u, buyBody(fmt.Sprintf("r%d", i), 1))
		if r.status != http.StatusAccepted {
			t.Errorf("user %q buying with the buy_url of buy.js (%s): %s", user, u, r)
		}
	}
}

// TestRequestIDReusedAfterReload: after Redis lost an activity's counters,
// a request id that already has an order in MySQL is sent again by another
// user. It must not be reported to that user as their order, nor take
// units from the reloaded counters for good.
func TestRequestIDReusedAfterReload(t *testing.T) {
	const a = 71
	w := newWorld(t, worldOpts{writer: true, orderTTL: time.Hour, activities: []seckill.Activity{openActivity(a, "reuse", 10, 2)}})
	w.mustBuy(w.mustBuyURL(a, "u1"), "shared", 1)
	w.waitState(a, "shared", "ordered", "reserved")
	w.loseCounters(a)
	r := w.mustCall("POST", w.mustBuyURL(a, "u2"), buyBody("shared", 1))
	t.Logf("u2 sends u1's request id after the reload: %s", r)
	if r.status == http.StatusAccepted {
		w.waitDecided(a, 10*time.Second)
		o, err := w.orderState(a, "shared")
		if err != nil {
			t.Fatal(err)
		}
		if o.State == "ordered" && o.Order != nil && o.Order.User != "u2" {
			t.Errorf("u2 was answered 202 for request id \"shared\", then its poll says %q with u1's order %+v", o.State, o.Order)
		}
	} else {
		w.refused(r, http.StatusConflict, "request_id_taken")
	}
	avail, _ := w.stockRow(a)
	if s, h := w.redisStock(a), w.redisHeld(a, "u2"); s != avail || h != 0 {
		t.Errorf("Redis: stock %d, u2 holds %d; want MySQL available %d and 0 (u2 has no order)", s, h, avail)
	}
}

// TestRequestRetriedAfterReload: after Redis lost an activity's counters,
// a client retries its own request that MySQL already ordered. Its units
// are counted once: the reloaded counters already hold them.
func TestRequestRetriedAfterReload(t *testing.T) {
	const a = 72
	w := newWorld(t, worldOpts{writer: true, orderTTL: time.Hour, activities: []seckill.Activity{openActivity(a, "retry", 10, 2)}})
	u1 := w.mustBuyURL(a, "u1")
	w.mustBuy(u1, "u1-1", 1)
	w.waitState(a, "u1-1", "ordered", "reserved")
	w.loseCounters(a)
	r := w.mustCall("POST", u1, buyBody("u1-1", 1))
	t.Logf("u1 retries u1-1 after the reload: %s", r)
	w.waitDecided(a, 10*time.Second)
	w.checkStock(a, 9, 1)
	if s, h := w.redisStock(a), w.redisHeld(a, "u1"); s != 9 || h != 1 {
		t.Errorf("Redis: stock %d, u1 holds %d; want 9 and 1 (one order of one unit)", s, h)
	}
	// u1 may still buy its second unit.
	w.mustBuy(u1, "u1-2", 1)
}
