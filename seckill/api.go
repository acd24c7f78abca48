package seckill

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/internal/httpapi"
)

// refuse is a refusal with its HTTP status and a stable code: clients
// switch on the code, and the request metrics count by it.
func refuse(status int, code, format string, args ...any) *httpapi.Error {
	e := httpapi.Errorf(status, format, args...)
	e.Code = code
	return e
}

// handle serves h through the project's API adapter and counts each
// request by route name and answer code: "ok", a refusal's code, or
// "internal" for an unexpected error.
func (s *Service) handle(name string, h httpapi.HandlerFunc) http.Handler {
	return httpapi.Handler(s.opts.Logger, func(w http.ResponseWriter, r *http.Request) error {
		err := h(w, r)
		code := "ok"
		if err != nil {
			code = httpapi.Answer(err).Code
		}
		s.requests.WithLabelValues(name, code).Inc()
		return err
	})
}

func (s *Service) mux() *http.ServeMux {
	m := http.NewServeMux()
	m.Handle("GET /items/{id}", s.handle("item", s.getItem))
	m.Handle("GET /activities/{id}", s.handle("activity", s.getActivity))
	m.Handle("GET /activities/{id}/buy.js", s.handle("script", s.buyScript))
	m.Handle("POST /activities/{id}/buy", s.handle("buy", s.buy))
	m.Handle("GET /orders/{rid}", s.handle("order", s.getOrder))
	m.Handle("POST /orders/{rid}/pay", s.handle("pay", s.pay))
	return m
}

func pathID(r *http.Request, name string) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue(name), 10, 64)
	if err != nil || id <= 0 {
		return 0, refuse(http.StatusBadRequest, "bad_request", "%s %q: want a positive integer", name, r.PathValue(name))
	}
	return id, nil
}

func queryActivity(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("activity")
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, refuse(http.StatusBadRequest, "bad_request", "query activity %q: want the activity id", v)
	}
	return id, nil
}

// getItem serves an item's detail cache-aside (key item:{id}).
func (s *Service) getItem(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	key := "item:" + strconv.FormatInt(id, 10)
	v, res, err := s.cached(r.Context(), key, strconv.FormatInt(id, 10), func(ctx context.Context) ([]byte, error) {
		return s.loadItem(ctx, id)
	})
	if err != nil {
		return err
	}
	w.Header().Set("X-Cache", res)
	w.Header().Set("Content-Type", "application/json")
	w.Write(v) // a failed write: the client is gone, nothing to answer
	return nil
}

func (s *Service) cached(ctx context.Context, key, route string, load func(context.Context) ([]byte, error)) ([]byte, string, error) {
	if s.opts.Cache == nil {
		v, err := load(ctx)
		return v, "off", err
	}
	v, res, err := s.opts.Cache.Get(ctx, key, route, load)
	if err != nil {
		return nil, "", err
	}
	s.cacheReads.WithLabelValues(res.String()).Inc()
	if res == cacheaside.Hit {
		return v, "hit", nil
	}
	return v, "miss", nil
}

var errItemNotFound = refuse(http.StatusNotFound, "not_found", "no such item")

func (s *Service) loadItem(ctx context.Context, id int64) ([]byte, error) {
	rows, err := s.opts.DB.QueryContext(ctx, "SELECT * FROM "+s.opts.ItemTable+" WHERE id = ?", id)
	if err != nil {
		return nil, fmt.Errorf("item %d: %w", id, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, err
		}
		return nil, errItemNotFound
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, err
	}
	out := make(map[string]any, len(cols))
	for i, c := range cols {
		if vals[i] == nil {
			out[c] = nil
		} else {
			out[c] = string(vals[i])
		}
	}
	return json.Marshal(out)
}

// activityView is an activity as the API shows it.
type activityView struct {
	*Activity
	Status   string `json:"status"` // upcoming, open, ended
	OpensInS int    `json:"opens_in_s,omitempty"`
}

// getActivity serves an activity and its stock row cache-aside (key
// activity:{id}); the binlog path purges it on any change of either row.
func (s *Service) getActivity(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	v, res, err := s.cached(r.Context(), "activity:"+strconv.FormatInt(id, 10), strconv.FormatInt(id, 10), func(ctx context.Context) ([]byte, error) {
		a, err := LoadActivity(ctx, s.opts.DB, id)
		if errors.Is(err, errNotFound) {
			return nil, refuse(http.StatusNotFound, "not_found", "no activity %d", id)
		}
		if err != nil {
			return nil, err
		}
		return json.Marshal(a)
	})
	if err != nil {
		return err
	}
	var a Activity
	if err := json.Unmarshal(v, &a); err != nil {
		return fmt.Errorf("cached activity %d: %w", id, err)
	}
	view := activityView{Activity: &a, Status: "open"}
	now := s.opts.Now()
	switch {
	case now.Before(a.StartAt):
		view.Status, view.OpensInS = "upcoming", secondsUntil(now, a.StartAt)
	case !now.Before(a.EndAt):
		view.Status = "ended"
	}
	w.Header().Set("X-Cache", res)
	return httpapi.WriteJSON(w, http.StatusOK, view)
}

func secondsUntil(now, t time.Time) int {
	d := t.Sub(now)
	return int((d + time.Second - 1) / time.Second)
}

// Token returns the order token of user for an activity: an HMAC of the
// user, the activity and its sale window, so it is valid for that sale only
// and cannot be made without the key.
func Token(key []byte, user string, a *Activity) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%s|%d|%d|%d", user, a.ID, a.StartAt.UnixMilli(), a.EndAt.UnixMilli())
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:18])
}

// buyScript is the small dynamic script the item page loads: before the
// start it says how long to wait; from the start it lights the button with
// the order URL, which carries the user's token. The token is only ever
// handed out once the sale is open.
func (s *Service) buyScript(w http.ResponseWriter, r *http.Request) error {
	id, user, err := activityAndUser(r)
	if err != nil {
		return err
	}
	a, err := s.activity(r.Context(), id)
	if err != nil {
		return err
	}
	now := s.opts.Now()
	state := map[string]any{"activity": id, "now_ms": now.UnixMilli(), "start_ms": a.StartAt.UnixMilli(), "end_ms": a.EndAt.UnixMilli()}
	switch {
	case now.Before(a.StartAt):
		state["open"], state["opens_in_s"] = false, secondsUntil(now, a.StartAt)
	case !now.Before(a.EndAt):
		state["open"], state["ended"] = false, true
	default:
		state["open"] = true
		state["buy_url"] = fmt.Sprintf("/activities/%d/buy?user=%s&token=%s", id, url.QueryEscape(user), Token(s.opts.TokenKey, user, a))
	}
	var buf strings.Builder
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.Encode(state)
	b := strings.TrimSpace(buf.String())
	w.Header().Set("Content-Type", "application/javascript")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprintf(w, "window.flashsale = %s;\n(function (s) {\n  var b = document.getElementById('buy');\n  if (!b) return;\n  b.disabled = !s.open;\n  if (s.open) b.dataset.url = s.buy_url;\n  else if (s.opens_in_s) setTimeout(function () { location.reload(); }, s.opens_in_s * 1000);\n})(window.flashsale);\n", b)
	return nil
}

func urlEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "&", "%26"), " ", "%20")
}

// activityAndUser reads the activity id of the path and the user of the
// query.
func activityAndUser(r *http.Request) (int64, string, error) {
	id, err := pathID(r, "id")
	if err != nil {
		return 0, "", err
	}
	user, err := userOf(r)
	return id, user, err
}

func userOf(r *http.Request) (string, error) {
	u := r.URL.Query().Get("user")
	if u == "" || len(u) > 64 || strings.ContainsAny(u, "|\x00") {
		return "", refuse(http.StatusBadRequest, "bad_request", "query user: want 1 to 64 characters, no '|'")
	}
	return u, nil
}

// buyRequest is the body of POST /activities/{id}/buy.
type buyRequest struct {
	RequestID string `json:"request_id"`
	Qty       int    `json:"qty"`
}

// buy is the hot path: rate limits, token and time checks against the
// in-process activity copy, then one Redis Lua step; a reservation is
// answered 202 once it is queued in NSQ for the order writers.
func (s *Service) buy(w http.ResponseWriter, r *http.Request) error {
	id, user, err := activityAndUser(r)
	if err != nil {
		return err
	}
	if err := s.limits.allow(clientIP(r), user); err != nil {
		return err
	}
	var req buyRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, 4097))
	if err != nil {
		return refuse(http.StatusBadRequest, "bad_request", "body: %v", err)
	}
	if len(body) > 4096 {
		return refuse(http.StatusRequestEntityTooLarge, "bad_request", "body over 4096 bytes")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return refuse(http.StatusBadRequest, "bad_request", "body: %v (want {\"request_id\": \"...\", \"qty\": n})", err)
	}
	if req.Qty == 0 {
		req.Qty = 1
	}
	if !validRequestID(req.RequestID) || req.Qty < 0 || req.Qty > 100 {
		return refuse(http.StatusBadRequest, "bad_request", "request_id must be 1 to 64 of [A-Za-z0-9._:-], qty 1 to 100")
	}
	a, err := s.activity(r.Context(), id)
	if err != nil {
		return err
	}
	now := s.opts.Now()
	if now.Before(a.StartAt) {
		e := refuse(http.StatusTooEarly, "not_started", "the sale opens in %d s", secondsUntil(now, a.StartAt))
		e.RetryAfter = secondsUntil(now, a.StartAt)
		return e
	}
	if !now.Before(a.EndAt) {
		return refuse(http.StatusGone, "ended", "the sale has ended")
	}
	if tok := r.URL.Query().Get("token"); !hmac.Equal([]byte(tok), []byte(Token(s.opts.TokenKey, user, a))) {
		return refuse(http.StatusForbidden, "bad_token", "missing or invalid token: take the order URL from /activities/%d/buy.js", id)
	}
	if req.Qty > a.PerUserLimit {
		return refuse(http.StatusForbidden, "over_quota", "at most %d per user", a.PerUserLimit)
	}
	res := Reservation{Activity: id, RequestID: req.RequestID, User: user, Qty: req.Qty, AcceptedMS: now.UnixMilli()}
	out, err := s.batch.reserve(r.Context(), res, a.PerUserLimit)
	if err == nil && out.Result == NotLoaded {
		if _, err = LoadCounters(r.Context(), s.opts.DB, s.reserver, id); err == nil {
			out, err = s.batch.reserve(r.Context(), res, a.PerUserLimit)
		}
	}
	result, rec := out.Result, out.Record
	if err != nil {
		return refuse(http.StatusServiceUnavailable, "unavailable", "reservations unavailable: %v", err)
	}
	poll := fmt.Sprintf("/orders/%s?activity=%d", req.RequestID, id)
	switch result {
	case SoldOut:
		return refuse(http.StatusConflict, "sold_out", "sold out")
	case OverQuota:
		return refuse(http.StatusForbidden, "over_quota", "at most %d per user", a.PerUserLimit)
	case Duplicate:
		st, _ := parseRecord(rec)
		if st.User != user {
			return refuse(http.StatusConflict, "request_id_taken", "request_id %q belongs to another request", req.RequestID)
		}
		return httpapi.WriteJSON(w, http.StatusOK, map[string]any{"request_id": req.RequestID, "state": stateName(st.State), "poll": poll, "duplicate": true})
	case Reserved:
	default:
		return refuse(http.StatusServiceUnavailable, "unavailable", "reservations unavailable")
	}
	body, _ = json.Marshal(res)
	if err := s.pub.publish(r.Context(), body); err != nil {
		// Not queued: give the units back at once (the reconciler would
		// after its grace time otherwise).
		if serr := s.reserver.Settle(context.WithoutCancel(r.Context()), id, nil, []Reservation{res}); serr != nil {
			s.opts.Logger.Warn("seckill: give back after a failed publish", "err", serr)
		}
		return refuse(http.StatusServiceUnavailable, "unavailable", "order queue unavailable: %v", err)
	}
	s.accepted.Inc()
	// The hot answer, written by hand (request ids need no JSON escaping).
	b := make([]byte, 0, 128)
	b = append(b, `{"request_id":"`...)
	b = append(b, req.RequestID...)
	b = append(b, `","state":"reserved","poll":"`...)
	b = append(b, poll...)
	b = append(b, "\"}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	w.Write(b)
	return nil
}

// validRequestID: 1 to 64 of [A-Za-z0-9._:-] (safe in a URL, a JSON
// string and a Redis record without escaping).
func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

func stateName(st string) string {
	switch st {
	case StateReserved, StateWriting:
		return "reserved"
	case StateOrdered:
		return "ordered"
	case StateRejected:
		return "rejected"
	case StateGivenBack:
		return "given_back"
	case StateExpired:
		return "expired"
	}
	return "unknown"
}

// orderRequest reads the request id of an order's path and its ?activity=.
func orderRequest(r *http.Request) (rid string, activity int64, err error) {
	rid = r.PathValue("rid")
	if !validRequestID(rid) {
		return "", 0, refuse(http.StatusBadRequest, "bad_request", "request id %q: want 1 to 64 of [A-Za-z0-9._:-]", rid)
	}
	activity, err = queryActivity(r)
	return rid, activity, err
}

// getOrder answers a request's state: reserved (queued or being written),
// ordered (with the order), rejected, given_back or expired.
func (s *Service) getOrder(w http.ResponseWriter, r *http.Request) error {
	rid, a, err := orderRequest(r)
	if err != nil {
		return err
	}
	rec, ok, err := s.reserver.State(r.Context(), a, rid)
	if err != nil {
		// Redis is down: MySQL still knows the orders.
		s.opts.Logger.Warn("seckill: order state from MySQL only", "err", err)
		ok = false
	}
	out := map[string]any{"request_id": rid, "activity": a}
	if ok {
		out["state"] = stateName(rec.State)
		if rec.State != StateOrdered && rec.State != StateExpired {
			return httpapi.WriteJSON(w, http.StatusOK, out)
		}
	}
	o, err := FindOrder(r.Context(), s.opts.DB, a, rid)
	if errors.Is(err, errNotFound) {
		if !ok {
			return refuse(http.StatusNotFound, "not_found", "no request %q in activity %d", rid, a)
		}
		return httpapi.WriteJSON(w, http.StatusOK, out)
	}
	if err != nil {
		return err
	}
	out["state"], out["order"] = "ordered", o
	if o.Status == "expired" {
		out["state"] = "expired"
	}
	return httpapi.WriteJSON(w, http.StatusOK, out)
}

func (s *Service) pay(w http.ResponseWriter, r *http.Request) error {
	rid, a, err := orderRequest(r)
	if err != nil {
		return err
	}
	o, err := Pay(r.Context(), s.opts.DB, a, rid, s.opts.Now())
	switch {
	case errors.Is(err, ErrNoOrder):
		return refuse(http.StatusNotFound, "no_order", "%v", err)
	case errors.Is(err, ErrOrderExpired):
		return refuse(http.StatusConflict, "expired", "%v", err)
	case err != nil:
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, o)
}

// ReconcileHandler answers POST .../{id}/reconcile with the report of one
// reconciliation of the activity. It is an operator endpoint: the node
// serves it on its metrics address, not on the public API.
func (s *Service) ReconcileHandler() http.Handler { return s.handle("reconcile", s.reconcileNow) }

func (s *Service) reconcileNow(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	rep, err := Reconcile(r.Context(), s.opts.DB, s.reserver, id, s.opts.ReconcileGrace, s.opts.Now())
	if err != nil {
		return err
	}
	s.observeReconcile(rep)
	return httpapi.WriteJSON(w, http.StatusOK, rep)
}

// clientIP is the connection's address: X-Forwarded-For is not trusted
// (a client could pick its own rate-limit bucket).
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limiters are the per-IP and per-user token buckets; idle ones are dropped
// by sweep.
type limiters struct {
	ipRate, userRate   rate.Limit
	ipBurst, userBurst int
	mu                 sync.Mutex
	ip, user           map[string]*limiter
}

type limiter struct {
	l    *rate.Limiter
	seen time.Time
}

func (l *limiters) allow(ip, user string) error {
	if l.ipRate > 0 && !l.get(l.ip, ip, l.ipRate, l.ipBurst).Allow() {
		e := refuse(http.StatusTooManyRequests, "rate_limited", "too many requests from %s", ip)
		e.RetryAfter = 1
		return e
	}
	if l.userRate > 0 && !l.get(l.user, user, l.userRate, l.userBurst).Allow() {
		e := refuse(http.StatusTooManyRequests, "rate_limited", "too many requests for user %s", user)
		e.RetryAfter = 1
		return e
	}
	return nil
}

func (l *limiters) get(m map[string]*limiter, k string, r rate.Limit, b int) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := m[k]
	if e == nil {
		e = &limiter{l: rate.NewLimiter(r, b)}
		m[k] = e
	}
	e.seen = time.Now()
	return e.l
}

// sweep drops buckets idle for longer than idle (they are full again).
func (l *limiters) sweep(idle time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range []map[string]*limiter{l.ip, l.user} {
		for k, e := range m {
			if time.Since(e.seen) > idle {
				delete(m, k)
			}
		}
	}
}

// observeReconcile counts what a reconciliation fixed.
func (s *Service) observeReconcile(rep ReconcileReport) {
	if !rep.Applied {
		s.reconciles.WithLabelValues("busy").Inc()
		return
	}
	s.reconciles.WithLabelValues("applied").Inc()
	s.fixed.WithLabelValues("ordered").Add(float64(rep.Ordered))
	s.fixed.WithLabelValues("expired").Add(float64(rep.Expired))
	s.fixed.WithLabelValues("given_back").Add(float64(rep.GivenBack))
	s.fixed.WithLabelValues("users").Add(float64(rep.UsersFixed))
	if rep.StockBefore >= 0 && rep.StockBefore != rep.StockAfter {
		s.fixed.WithLabelValues("stock").Inc()
	}
	if rep.Drift() {
		s.opts.Logger.Warn("seckill reconciler repaired drift", "report", rep)
	}
}
