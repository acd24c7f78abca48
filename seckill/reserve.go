package seckill

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The reservation counters live in a Redis of their own (Options.Redis),
// never in a [[redis_group]] the binlog path purges: invalidations delete
// display data only and can never rewrite the counter the buy path decides
// on. Per activity A (one hash tag, so a cluster keeps them on one slot):
//
//	sk:{A}:stock  units still reservable (absent: not loaded from MySQL)
//	sk:{A}:users  hash user → units held (reserved, being written or ordered)
//	sk:{A}:req    hash request id → "state|user|qty|accepted_unix_ms"
//	sk:{A}:ver    bumped by every change, for the reconciler's compare-and-set
//
// States: R reserved (queued for a writer, or being written), O ordered (in
// MySQL), X rejected by MySQL (given back), G given back by the reconciler,
// E expired unpaid (given back). W (being written) is read as R: records of
// earlier versions may hold it.
const (
	StateReserved  = "R"
	StateWriting   = "W"
	StateOrdered   = "O"
	StateRejected  = "X"
	StateGivenBack = "G"
	StateExpired   = "E"
)

func keyStock(a int64) string { return "sk:{" + strconv.FormatInt(a, 10) + "}:stock" }
func keyUsers(a int64) string { return "sk:{" + strconv.FormatInt(a, 10) + "}:users" }
func keyReq(a int64) string   { return "sk:{" + strconv.FormatInt(a, 10) + "}:req" }
func keyVer(a int64) string   { return "sk:{" + strconv.FormatInt(a, 10) + "}:ver" }

func activityKeys(a int64) []string { return []string{keyStock(a), keyUsers(a), keyReq(a), keyVer(a)} }

// reserveScript is the whole buy decision, atomic in Redis: an existing
// request id answers its state (idempotent retry); then the user's quota,
// then stock; then the units are taken and the request recorded.
// Returns {1, stock left} | {2, state record} | {-1} sold out |
// {-2, units held} over quota | {-3} not loaded.
var reserveScript = redis.NewScript(`
local s = redis.call('HGET', KEYS[3], ARGV[1])
if s then return {2, s} end
local stock = redis.call('GET', KEYS[1])
if not stock then return {-3} end
local q = tonumber(ARGV[3])
stock = tonumber(stock)
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
if held + q > tonumber(ARGV[4]) then return {-2, held} end
if stock < q then return {-1} end
redis.call('DECRBY', KEYS[1], q)
redis.call('HINCRBY', KEYS[2], ARGV[2], q)
redis.call('HSET', KEYS[3], ARGV[1], 'R|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[5])
redis.call('INCR', KEYS[4])
return {1, stock - q}
`)

// reserveManyScript is reserveScript for a batch of one activity's
// requests, applied in order: ARGV[1] the quota, then (request id, user,
// qty, accepted ms) quadruples. It returns a (code, value) pair per request,
// with reserveScript's codes; value is the stock left, the units held or the
// existing record.
var reserveManyScript = redis.NewScript(`
local stock = redis.call('GET', KEYS[1])
local out = {}
if not stock then
  for i = 2, #ARGV, 4 do out[#out+1] = -3; out[#out+1] = 0 end
  return out
end
stock = tonumber(stock)
local quota = tonumber(ARGV[1])
local taken = 0
for i = 2, #ARGV, 4 do
  local rid, user, q = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2])
  local s = redis.call('HGET', KEYS[3], rid)
  if s then
    out[#out+1] = 2; out[#out+1] = s
  else
    local held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
    if held + q > quota then
      out[#out+1] = -2; out[#out+1] = held
    elseif stock < q then
      out[#out+1] = -1; out[#out+1] = 0
    else
      stock = stock - q
      taken = taken + q
      redis.call('HINCRBY', KEYS[2], user, q)
      redis.call('HSET', KEYS[3], rid, 'R|' .. user .. '|' .. ARGV[i+2] .. '|' .. ARGV[i+3])
      out[#out+1] = 1; out[#out+1] = stock
    end
  end
end
if taken > 0 then
  redis.call('DECRBY', KEYS[1], taken)
  redis.call('INCR', KEYS[4])
end
return out
`)

// settleScript records the outcome of written reservations. ARGV is a list
// of (outcome, request id, user, qty, accepted ms) quintuples; outcome O
// (ordered) or X (rejected by MySQL). It is idempotent and gives units back
// exactly once:
//   - ordered: state O. Units were taken at reservation; if the reconciler
//     had given them back (G) or the record is gone (Redis restarted and was
//     reloaded from MySQL before this order existed), they are taken again.
//   - rejected: from R/W the units are given back; from X/G/E nothing
//     happens; with no record (reloaded from MySQL, which never had these
//     units taken) only the state is written.
//
// While the activity is not loaded (no stock key) counters are left alone:
// loading reads them from MySQL.
var settleScript = redis.NewScript(`
local loaded = redis.call('EXISTS', KEYS[1]) == 1
for i = 1, #ARGV, 5 do
  local outcome, rid, user, q = ARGV[i], ARGV[i+1], ARGV[i+2], tonumber(ARGV[i+3])
  local s = redis.call('HGET', KEYS[3], rid)
  local st = s and string.sub(s, 1, 1) or ''
  local rec = outcome .. '|' .. user .. '|' .. q .. '|' .. ARGV[i+4]
  if outcome == 'O' then
    if st ~= 'O' and st ~= 'E' then
      if (st == 'G' or st == 'X' or st == '') and loaded then
        redis.call('DECRBY', KEYS[1], q)
        redis.call('HINCRBY', KEYS[2], user, q)
      end
      redis.call('HSET', KEYS[3], rid, rec)
    end
  else
    if st == 'R' or st == 'W' then
      if loaded then
        redis.call('INCRBY', KEYS[1], q)
        redis.call('HINCRBY', KEYS[2], user, -q)
      end
      redis.call('HSET', KEYS[3], rid, rec)
    elseif st == '' then
      redis.call('HSET', KEYS[3], rid, rec)
    end
  end
end
redis.call('INCR', KEYS[4])
return 1
`)

// expireScript gives an expired order's units back once: from O (or no
// record: a reload counted the order as sold) to E.
var expireScript = redis.NewScript(`
local s = redis.call('HGET', KEYS[3], ARGV[1])
local st = s and string.sub(s, 1, 1) or ''
if st == 'E' then return 0 end
if st == 'O' or st == '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('INCRBY', KEYS[1], tonumber(ARGV[3]))
    redis.call('HINCRBY', KEYS[2], ARGV[2], -tonumber(ARGV[3]))
  end
end
redis.call('HSET', KEYS[3], ARGV[1], 'E|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
redis.call('INCR', KEYS[4])
return 1
`)

// loadScript sets an activity's counters from MySQL unless they exist:
// ARGV[1] stock, ARGV[2] the number of (user, units) pairs that follow,
// then (request id, record) pairs of the orders MySQL has, so a request id
// already ordered is answered as such after a reload, never sold again.
var loadScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+1])
  i = i + 2
end
while i <= #ARGV do
  if not redis.call('HGET', KEYS[3], ARGV[i]) then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i+1])
  end
  i = i + 2
end
redis.call('INCR', KEYS[4])
return 1
`)

// ReserveResult is the answer of one reservation attempt.
type ReserveResult int

const (
	Reserved ReserveResult = iota + 1
	Duplicate
	SoldOut
	OverQuota
	NotLoaded
)

// Reservation is one accepted request, as queued for the order writers.
type Reservation struct {
	Activity   int64  `json:"a"`
	RequestID  string `json:"r"`
	User       string `json:"u"`
	Qty        int    `json:"q"`
	AcceptedMS int64  `json:"t"`
}

// record is a decoded sk:{A}:req entry.
type record struct {
	State      string
	User       string
	Qty        int
	AcceptedMS int64
}

func parseRecord(s string) (record, error) {
	f := strings.Split(s, "|")
	if len(f) != 4 {
		return record{}, fmt.Errorf("reservation record %q: want 4 fields", s)
	}
	q, err1 := strconv.Atoi(f[2])
	ms, err2 := strconv.ParseInt(f[3], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return record{}, fmt.Errorf("reservation record %q: %w", s, err)
	}
	return record{State: f[0], User: f[1], Qty: q, AcceptedMS: ms}, nil
}

// Reserver runs the Lua steps against the reservation Redis.
type Reserver struct {
	rdb redis.UniversalClient
}

// NewReserver wraps a client of the reservation Redis.
func NewReserver(rdb redis.UniversalClient) *Reserver { return &Reserver{rdb: rdb} }

// Reserve takes qty units for user under the activity's quota, recording
// the request id. For Duplicate the existing record's state is returned.
func (r *Reserver) Reserve(ctx context.Context, res Reservation, quota int) (ReserveResult, string, error) {
	v, err := reserveScript.Run(ctx, r.rdb, activityKeys(res.Activity),
		res.RequestID, res.User, res.Qty, quota, res.AcceptedMS).Slice()
	if err != nil {
		return 0, "", fmt.Errorf("reserve: %w", err)
	}
	code, _ := v[0].(int64)
	switch code {
	case 1:
		return Reserved, "", nil
	case 2:
		s, _ := v[1].(string)
		return Duplicate, s, nil
	case -1:
		return SoldOut, "", nil
	case -2:
		return OverQuota, "", nil
	case -3:
		return NotLoaded, "", nil
	}
	return 0, "", fmt.Errorf("reserve: unexpected answer %v", v)
}

// ReserveOutcome is the answer to one request of ReserveMany.
type ReserveOutcome struct {
	Result ReserveResult
	// Record is the existing record of a Duplicate.
	Record string
}

// ReserveMany is Reserve for a batch of one activity's requests in one Lua
// call, applied in order.
func (r *Reserver) ReserveMany(ctx context.Context, activity int64, quota int, rs []Reservation) ([]ReserveOutcome, error) {
	args := make([]any, 0, 1+4*len(rs))
	args = append(args, quota)
	for _, x := range rs {
		args = append(args, x.RequestID, x.User, x.Qty, x.AcceptedMS)
	}
	v, err := reserveManyScript.Run(ctx, r.rdb, activityKeys(activity), args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("reserve: %w", err)
	}
	if len(v) != 2*len(rs) {
		return nil, fmt.Errorf("reserve: %d answers for %d requests", len(v)/2, len(rs))
	}
	out := make([]ReserveOutcome, len(rs))
	for i := range out {
		code, _ := v[2*i].(int64)
		switch code {
		case 1:
			out[i].Result = Reserved
		case 2:
			out[i].Result = Duplicate
			out[i].Record, _ = v[2*i+1].(string)
		case -1:
			out[i].Result = SoldOut
		case -2:
			out[i].Result = OverQuota
		case -3:
			out[i].Result = NotLoaded
		default:
			return nil, fmt.Errorf("reserve: unexpected answer %v", v[2*i])
		}
	}
	return out, nil
}

// States returns each request's record ("" when Redis has none), so a
// writer skips those the reconciler gave back. It only reads: a give-back
// that races with the write is undone when the order is settled (Settle
// takes the units again).
func (r *Reserver) States(ctx context.Context, activity int64, rids []string) ([]string, error) {
	v, err := r.rdb.HMGet(ctx, keyReq(activity), rids...).Result()
	if err != nil {
		return nil, fmt.Errorf("reservation states: %w", err)
	}
	out := make([]string, len(v))
	for i, x := range v {
		out[i], _ = x.(string)
	}
	return out, nil
}

// Settle records which reservations were ordered and which MySQL rejected.
func (r *Reserver) Settle(ctx context.Context, activity int64, ordered, rejected []Reservation) error {
	if len(ordered)+len(rejected) == 0 {
		return nil
	}
	args := make([]any, 0, 5*(len(ordered)+len(rejected)))
	for _, o := range ordered {
		args = append(args, StateOrdered, o.RequestID, o.User, o.Qty, o.AcceptedMS)
	}
	for _, o := range rejected {
		args = append(args, StateRejected, o.RequestID, o.User, o.Qty, o.AcceptedMS)
	}
	if err := settleScript.Run(ctx, r.rdb, activityKeys(activity), args...).Err(); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	return nil
}

// Expire gives an expired order's units back (once).
func (r *Reserver) Expire(ctx context.Context, o Reservation) error {
	if err := expireScript.Run(ctx, r.rdb, activityKeys(o.Activity), o.RequestID, o.User, o.Qty, o.AcceptedMS).Err(); err != nil {
		return fmt.Errorf("expire: %w", err)
	}
	return nil
}

// Load sets an activity's counters (stock, units held per user, the
// records of the orders MySQL has) unless they exist; it reports whether it
// did.
func (r *Reserver) Load(ctx context.Context, activity int64, stock int, held map[string]int, orders []Reservation, expired map[string]bool) (bool, error) {
	args := make([]any, 0, 2+2*len(held)+2*len(orders))
	args = append(args, stock, len(held))
	for u, n := range held {
		args = append(args, u, n)
	}
	for _, o := range orders {
		st := StateOrdered
		if expired[o.RequestID] {
			st = StateExpired
		}
		args = append(args, o.RequestID, fmt.Sprintf("%s|%s|%d|%d", st, o.User, o.Qty, o.AcceptedMS))
	}
	n, err := loadScript.Run(ctx, r.rdb, activityKeys(activity), args...).Int()
	if err != nil {
		return false, fmt.Errorf("load activity %d: %w", activity, err)
	}
	return n == 1, nil
}

// State returns a request's record, ok false when Redis has none.
func (r *Reserver) State(ctx context.Context, activity int64, rid string) (record, bool, error) {
	s, err := r.rdb.HGet(ctx, keyReq(activity), rid).Result()
	if errors.Is(err, redis.Nil) {
		return record{}, false, nil
	}
	if err != nil {
		return record{}, false, err
	}
	rec, err := parseRecord(s)
	return rec, err == nil, err
}

// Stock returns the reservable units, ok false when not loaded.
func (r *Reserver) Stock(ctx context.Context, activity int64) (int, bool, error) {
	n, err := r.rdb.Get(ctx, keyStock(activity)).Int()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	return n, err == nil, err
}
