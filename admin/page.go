package admin

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/flashsync/flashsync/internal/httpapi"
)

// assets are the page: plain HTML, CSS and JavaScript, nothing fetched at
// run time.
//
//go:embed assets
var assets embed.FS

// pageCSP keeps the page to its own scripts and styles, and out of frames.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// mountPage adds the page's routes to the API's mux: the page at /, its
// assets, the login form's POST /login, POST /logout and GET
// /api/v1/session (who is logged in, and the session's CSRF token).
func (s *Server) mountPage(mux *http.ServeMux) {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded directory is there
	}
	files := http.FileServerFS(sub)
	mux.Handle("GET /{$}", pageHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, sub, "index.html")
	})))
	mux.Handle("GET /assets/", pageHeaders(http.StripPrefix("/assets/", files)))
	mux.Handle("POST /login", httpapi.Handler(s.opts.Logger, s.login))
	mux.Handle("POST /logout", httpapi.Handler(s.opts.Logger, s.logout))
	mux.Handle("GET /api/v1/session", httpapi.Handler(s.opts.Logger, s.getSession))
}

func pageHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", pageCSP)
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "same-origin") // no-referrer would make the form's Origin "null"
		w.Header().Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// login answers the login form (POST /login, field token): the token is
// checked as a bearer token is, and a known one gets a session cookie and
// a redirection to the page; an unknown one is sent back to the form.
func (s *Server) login(w http.ResponseWriter, r *http.Request) error {
	if err := sameOrigin(r); err != nil {
		return err
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "login form: %w", err)
	}
	tok := strings.TrimSpace(r.PostForm.Get("token"))
	u := s.userOfToken(tok)
	if tok == "" || u == nil {
		s.opts.Logger.Warn("admin: refused login", "client", r.RemoteAddr)
		http.Redirect(w, r, "/?login=failed", http.StatusSeeOther)
		return nil
	}
	id, _ := s.sessions.create(u)
	http.SetCookie(w, sessionCookie(r, id, s.sessions.lifetime))
	s.opts.Logger.Info("admin: login", "user", u.name, "role", u.role, "client", r.RemoteAddr)
	http.Redirect(w, r, "/", http.StatusSeeOther)
	return nil
}

// logout ends the cookie's session (POST /logout, with the CSRF token)
// and deletes the cookie.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) error {
	if _, ok, err := s.cookieSession(r); !ok || err != nil {
		if err == nil {
			err = errNoSession
		}
		return err
	}
	c, _ := r.Cookie(SessionCookie)
	s.sessions.delete(c.Value)
	http.SetCookie(w, sessionCookie(r, "", -1))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

var errCrossSite = &httpapi.Error{Status: http.StatusForbidden, Code: "csrf", Message: "cross-site request refused"}

// sameOrigin refuses a login posted from another site (login CSRF: it
// would log the browser in as someone else), by the Sec-Fetch-Site header
// browsers send with a form's POST, or, from an older browser, Origin.
func sameOrigin(r *http.Request) error {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		return nil
	case "":
	default: // same-site, cross-site
		return errCrossSite
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return nil // not a browser's cross-site POST: those carry an Origin
	}
	scheme := "http://"
	if r.TLS != nil {
		scheme = "https://"
	}
	if o != scheme+r.Host {
		return errCrossSite
	}
	return nil
}

// SessionInfo answers GET /api/v1/session.
type SessionInfo struct {
	User string `json:"user"`
	Role string `json:"role"`
	// CSRFToken, of a cookie's session, goes in the X-CSRF-Token header
	// of every state-changing request; a bearer token needs none.
	CSRFToken string     `json:"csrf_token,omitempty"`
	Expires   *time.Time `json:"expires,omitempty"`
	// CanPurge is whether the role may purge (not only preview).
	CanPurge bool `json:"can_purge"`
	// FlushNeedsApproval: an admin's flush waits for a second admin.
	FlushNeedsApproval bool `json:"flush_needs_approval"`
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) error {
	info := SessionInfo{}
	if r.Header.Get("Authorization") == "" {
		se, ok, err := s.cookieSession(r)
		if !ok {
			err = errNoSession
		}
		if err != nil {
			return err
		}
		exp := se.expires
		info = SessionInfo{User: se.user.name, Role: se.user.role, CSRFToken: se.csrf, Expires: &exp}
	} else {
		u, err := s.authenticate(w, r)
		if err != nil {
			return err
		}
		info = SessionInfo{User: u.name, Role: u.role}
	}
	info.CanPurge = rankOf(info.Role) >= rankOf(RoleOperator)
	info.FlushNeedsApproval = s.opts.FlushNeedsApproval
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, info)
}
