package admin

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flashsync/flashsync/internal/httpapi"
)

// Sessions of the page. They live in the server's memory: a restart logs
// everybody out.
const (
	// DefaultSessionLifetime is how long a login lasts.
	DefaultSessionLifetime = 8 * time.Hour
	// SessionCookie names the session cookie.
	SessionCookie = "flashsync_admin_session"
	// CSRFHeader carries the session's CSRF token on every state-changing
	// request authenticated by the cookie.
	CSRFHeader = "X-CSRF-Token"
)

// clockSkew is added to the clock of sessions and approvals (tests move
// it forward).
var clockSkew atomic.Int64

// adminNow is the clock of sessions and approvals.
func adminNow() time.Time { return time.Now().Add(time.Duration(clockSkew.Load())) }

type session struct {
	user    *user
	csrf    string
	expires time.Time
}

// sessions is the server-side session map, keyed by the SHA-256 of the
// cookie's random id; it is safe for concurrent use.
type sessions struct {
	lifetime time.Duration
	mu       sync.Mutex
	m        map[[sha256.Size]byte]*session
}

func newSessions(lifetime time.Duration) *sessions {
	return &sessions{lifetime: lifetime, m: map[[sha256.Size]byte]*session{}}
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// create starts a session of u and returns its id and the session.
func (ss *sessions) create(u *user) (string, *session) {
	id := randomToken()
	now := adminNow()
	se := &session{user: u, csrf: randomToken(), expires: now.Add(ss.lifetime)}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for k, o := range ss.m { // drop the expired ones
		if !now.Before(o.expires) {
			delete(ss.m, k)
		}
	}
	ss.m[sha256.Sum256([]byte(id))] = se
	return id, se
}

// get is the live session of id, if any.
func (ss *sessions) get(id string) (*session, bool) {
	k := sha256.Sum256([]byte(id))
	ss.mu.Lock()
	defer ss.mu.Unlock()
	se, ok := ss.m[k]
	if ok && !adminNow().Before(se.expires) {
		delete(ss.m, k)
		return nil, false
	}
	return se, ok
}

func (ss *sessions) delete(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, sha256.Sum256([]byte(id)))
}

var (
	errNoSession = &httpapi.Error{Status: http.StatusUnauthorized, Code: "unauthorized",
		Message: "session expired or unknown: log in again"}
	errCSRF = &httpapi.Error{Status: http.StatusForbidden, Code: "csrf",
		Message: "missing or wrong " + CSRFHeader + " header: a request authenticated by the session cookie must carry the session's CSRF token"}
)

// safeMethod is a method that changes nothing, which needs no CSRF token.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// cookieSession is the request's session; ok is false without a session
// cookie. A state-changing request must carry the session's CSRF token.
func (s *Server) cookieSession(r *http.Request) (se *session, ok bool, err error) {
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" {
		return nil, false, nil
	}
	se, found := s.sessions.get(c.Value)
	if !found {
		return nil, true, errNoSession
	}
	if !safeMethod(r.Method) && subtle.ConstantTimeCompare([]byte(r.Header.Get(CSRFHeader)), []byte(se.csrf)) != 1 {
		return nil, true, errCSRF
	}
	return se, true, nil
}

// sessionCookie is the cookie of a session id; maxAge < 0 deletes it.
func sessionCookie(r *http.Request, id string, maxAge time.Duration) *http.Cookie {
	c := &http.Cookie{Name: SessionCookie, Value: id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
	if maxAge < 0 {
		c.MaxAge, c.Expires = -1, time.Unix(0, 0)
	} else {
		c.MaxAge, c.Expires = int(maxAge/time.Second), time.Now().Add(maxAge)
	}
	return c
}

// cookieUser is the user of the request's session cookie; ok is false
// without one.
func (s *Server) cookieUser(r *http.Request) (u *user, ok bool, err error) {
	se, ok, err := s.cookieSession(r)
	if err != nil || !ok {
		return nil, ok, err
	}
	return se.user, true, nil
}

// userOfToken is the user of a bearer token, or nil; every user's hash is
// compared, in constant time, whichever matches (as authenticate does).
func (s *Server) userOfToken(tok string) *user {
	sum := sha256.Sum256([]byte(tok))
	var found *user
	for i := range s.users {
		if subtle.ConstantTimeCompare(sum[:], s.users[i].hash[:]) == 1 {
			found = &s.users[i]
		}
	}
	return found
}
