package admin

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/flashsync/flashsync/internal/httpapi"
)

// DefaultAdminActionsPerMinute is the default of Options.AdminActionsPerMinute.
const DefaultAdminActionsPerMinute = 6

// limiters pace each user's admin-only purges (patterns, bans, flush_groups),
// replays and re-syncs together: perMinute a minute, in bursts of as many.
// The zero value is ready.
type limiters struct {
	mu    sync.Mutex
	users map[string]*rate.Limiter
}

// allow takes one action of user now, or answers how long until one is
// allowed (a refused action takes nothing).
func (l *limiters) allow(user string, perMinute int, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	lim, ok := l.users[user]
	if !ok {
		if l.users == nil {
			l.users = map[string]*rate.Limiter{}
		}
		lim = rate.NewLimiter(rate.Limit(float64(perMinute)/60), perMinute)
		l.users[user] = lim
	}
	l.mu.Unlock()
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// rateLimit refuses what, an admin-only purge, a replay or a re-sync of u,
// over the limit with 429 and Retry-After (whole seconds, rounded up): the
// three share each user's budget.
func (s *Server) rateLimit(u *user, what string) error {
	ok, wait := s.limits.allow(u.name, s.opts.AdminActionsPerMinute, time.Now())
	if ok {
		return nil
	}
	secs := int(math.Ceil(wait.Seconds()))
	return &httpapi.Error{Status: http.StatusTooManyRequests, Code: "rate_limited", RetryAfter: secs,
		Message: what + ": " + u.name + " may run " + strconv.Itoa(s.opts.AdminActionsPerMinute) +
			" admin-only purges (patterns, bans, flush_groups), replays and re-syncs a minute (admin.admin_actions_per_minute); retry in " + strconv.Itoa(secs) + " s"}
}
