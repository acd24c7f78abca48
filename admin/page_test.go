package admin_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/admin/admintest"
	"github.com/flashsync/flashsync/daemon"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// pageFixture is newFixture's daemon with one Redis group of two replicas
// (ga) and one HTTP group of two Varnish instances, so that a row reaches
// two of each; adminLines are added to [admin].
type pageFixture struct {
	*fixture
	varnish2 *stacktest.Varnish
}

func newPageFixture(t *testing.T, adminLines ...string) *pageFixture {
	t.Helper()
	f := &fixture{db: stacktest.NewDatabase(t)}
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, "CREATE TABLE "+f.db+".item (id BIGINT PRIMARY KEY, name VARCHAR(100), price DECIMAL(10,2), view_count INT NOT NULL DEFAULT 0)")
	stacktest.Exec(t, conn, "INSERT INTO "+f.db+".item VALUES (1, 'pen', 9.99, 0), (2, 'ink', 3.50, 0)")
	f.auditDB, f.keyPre = f.db, f.db+":"
	f.nsqd = stacktest.StartNSQD(t)
	f.ga = []*stacktest.RedisServer{stacktest.StartRedis(t), stacktest.StartRedis(t)}
	backend := strings.TrimPrefix(pageBackend(t).URL, "http://")
	f.varnish = stacktest.StartVarnish(t, flashsyncVCL, backend)
	v2 := stacktest.StartVarnish(t, flashsyncVCL, backend)
	config := admintest.Prelude(f.nsqd.TCPAddr(), f.nsqd.HTTPAddr(), "") + fmt.Sprintf(`
[[redis_group]]
name = "ga"
replicas = [%q, %q]

[[http_group]]
name = "varnish"
instances = [%q, %q]

[[rule]]
table = "%s.item"
keys = ["%sitem:{id}", "%sitem:page:{id}"]
urls = ["/item/{id}.html"]
tags = ["item-{id}"]
route_by = "id"

[admin]
addr = "127.0.0.1:0"
audit_database = %q
%s
`, f.ga[0].Addr(), f.ga[1].Addr(), f.varnish.Addr(), v2.Addr(),
		f.db, f.keyPre, f.keyPre, f.db, strings.Join(adminLines, "")) + admintest.DemoUsers(t)
	f.daemon, _, f.stop = admintest.Start(t, config, daemon.RoleRedisPurger, daemon.RoleHTTPPurger, daemon.RoleAdmin)
	f.url = "http://" + f.daemon.AdminAddr()
	return &pageFixture{fixture: f, varnish2: v2}
}

// noRedirect is a client that shows redirections instead of following them.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// login posts the login form and returns the answer and its session cookie
// (nil without one).
func (f *fixture) login(t *testing.T, token string) (*http.Response, *http.Cookie) {
	t.Helper()
	resp, err := noRedirect.PostForm(f.url+"/login", map[string][]string{"token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == admin.SessionCookie {
			return resp, c
		}
	}
	return resp, nil
}

// session sends a request with the cookie and, if csrf is not "", the CSRF
// header, and decodes the JSON answer (nil for none).
func (f *fixture) session(t *testing.T, method, path string, c *http.Cookie, csrf, contentType, body string) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	if csrf != "" {
		req.Header.Set(admin.CSRFHeader, csrf)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(data) > 0 {
		if err := json.Unmarshal(data, &out); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp, out
}

func TestPageSessions(t *testing.T) {
	f := newPageFixture(t)
	key := f.keyPre + "csrf"
	ga := []*redis.Client{setKeys(t, f.ga[0].Addr(), key), setKeys(t, f.ga[1].Addr(), key)}

	t.Run("page", func(t *testing.T) {
		for _, path := range []string{"/", "/assets/app.js", "/assets/app.css"} {
			resp, err := http.Get(f.url + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || len(body) == 0 || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
				t.Errorf("GET %s: %d, %d bytes, CSP %q", path, resp.StatusCode, len(body), resp.Header.Get("Content-Security-Policy"))
			}
		}
	})

	t.Run("cookie flags", func(t *testing.T) {
		resp, c := f.login(t, operatorToken)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" || c == nil {
			t.Fatalf("login: %d to %q, cookie %v", resp.StatusCode, resp.Header.Get("Location"), c)
		}
		if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Secure ||
			c.MaxAge != int(admin.DefaultSessionLifetime/time.Second) || c.Expires.IsZero() || len(c.Value) < 32 {
			t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/, not Secure on plain HTTP, Max-Age %v, Expires, a long random id", c, admin.DefaultSessionLifetime)
		}
		if d := time.Until(c.Expires); d < admin.DefaultSessionLifetime-time.Minute || d > admin.DefaultSessionLifetime+time.Minute {
			t.Errorf("cookie expires in %v, want %v", d, admin.DefaultSessionLifetime)
		}
		r, out := f.session(t, "GET", "/api/v1/session", c, "", "", "")
		if r.StatusCode != http.StatusOK || out["user"] != "operator" || out["role"] != "operator" || out["can_purge"] != true || out["csrf_token"] == "" {
			t.Errorf("session: %d %v", r.StatusCode, out)
		}
		_, c2 := f.login(t, operatorToken)
		if c2 == nil || c2.Value == c.Value {
			t.Errorf("a second login got the same session id")
		}
	})

	t.Run("bad token", func(t *testing.T) {
		for _, tok := range []string{"", "nope", " "} {
			resp, c := f.login(t, tok)
			if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/?login=failed" || c != nil {
				t.Errorf("login %q: %d to %q, cookie %v", tok, resp.StatusCode, resp.Header.Get("Location"), c)
			}
		}
		// A login posted from another site (login CSRF).
		for _, h := range [][2]string{{"Origin", "http://evil.example"}, {"Origin", "null"}, {"Sec-Fetch-Site", "cross-site"}, {"Sec-Fetch-Site", "same-site"}} {
			req, err := http.NewRequest("POST", f.url+"/login", strings.NewReader("token="+operatorToken))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set(h[0], h[1])
			resp, err := noRedirect.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
				t.Errorf("login with %s: %s: %d, cookies %v; want 403 and none", h[0], h[1], resp.StatusCode, resp.Cookies())
			}
		}
		resp, _ := f.session(t, "GET", "/api/v1/audit", &http.Cookie{Name: admin.SessionCookie, Value: "forged"}, "", "", "")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("forged session: %d, want 401", resp.StatusCode)
		}
	})

	t.Run("csrf", func(t *testing.T) {
		_, c := f.login(t, operatorToken)
		_, info := f.session(t, "GET", "/api/v1/session", c, "", "", "")
		csrf, _ := info["csrf_token"].(string)
		body := `{"reason":"csrf","keys":["` + key + `"]}`
		before := f.published(t)
		for _, tc := range []struct{ name, csrf, contentType, body string }{
			{"no token", "", "application/json", body},
			{"wrong token", strings.Repeat("0", len(csrf)), "application/json", body},
			{"other session's token", otherCSRF(t, f.fixture), "application/json", body},
			// What a cross-site <form enctype="text/plain"> can send.
			{"cross-site form", "", "text/plain", body},
			{"cross-site urlencoded form", "", "application/x-www-form-urlencoded", "reason=csrf&keys=" + key},
		} {
			resp, out := f.session(t, "POST", "/api/v1/purges", c, tc.csrf, tc.contentType, tc.body)
			if resp.StatusCode != http.StatusForbidden || out["code"] != "csrf" {
				t.Errorf("%s: %d %v, want 403 csrf", tc.name, resp.StatusCode, out)
			}
		}
		if after := f.published(t); after != before {
			t.Errorf("refused requests published %d messages", after-before)
		}
		for i, g := range ga {
			if exists(t, g, key) != 1 {
				t.Errorf("replica %d lost %s to a refused request", i, key)
			}
		}
		// With the token, the cookie purges; a bearer token needs none.
		resp, out := f.session(t, "POST", "/api/v1/purges", c, csrf, "application/json", body)
		if resp.StatusCode != http.StatusAccepted || out["job"] == nil {
			t.Fatalf("purge with the CSRF token: %d %v", resp.StatusCode, out)
		}
		if job := f.waitJob(t, out["job"].(string)); job["started_by"] != "operator" {
			t.Errorf("job %v: want started_by operator", job)
		}
		for i, g := range ga {
			if exists(t, g, key) != 0 {
				t.Errorf("replica %d still has %s", i, key)
			}
		}
		if status, out := f.call(t, "POST", "/api/v1/purges", operatorToken, body); status != http.StatusAccepted {
			t.Errorf("bearer purge without CSRF token: %d %v", status, out)
		}
	})

	t.Run("viewer session may not purge", func(t *testing.T) {
		_, c := f.login(t, viewerToken)
		_, info := f.session(t, "GET", "/api/v1/session", c, "", "", "")
		if info["can_purge"] != false || info["role"] != "viewer" {
			t.Errorf("viewer session %v", info)
		}
		resp, out := f.session(t, "POST", "/api/v1/purges", c, info["csrf_token"].(string), "application/json", `{"reason":"v","keys":["x"]}`)
		if resp.StatusCode != http.StatusForbidden || out["code"] != "forbidden" {
			t.Errorf("viewer purge: %d %v", resp.StatusCode, out)
		}
		resp, out = f.session(t, "POST", "/api/v1/purges", c, info["csrf_token"].(string), "application/json", `{"reason":"v","dry_run":true,"keys":["x"]}`)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("viewer dry run: %d %v", resp.StatusCode, out)
		}
	})

	t.Run("expiry", func(t *testing.T) {
		_, c := f.login(t, viewerToken)
		if resp, _ := f.session(t, "GET", "/api/v1/audit", c, "", "", ""); resp.StatusCode != http.StatusOK {
			t.Fatalf("fresh session: %d", resp.StatusCode)
		}
		restore := admin.AdvanceClock(admin.DefaultSessionLifetime - time.Minute)
		resp, _ := f.session(t, "GET", "/api/v1/audit", c, "", "", "")
		restore()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("session a minute before its end: %d", resp.StatusCode)
		}
		restore = admin.AdvanceClock(admin.DefaultSessionLifetime)
		resp, out := f.session(t, "GET", "/api/v1/audit", c, "", "", "")
		restore()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("expired session: %d %v, want 401", resp.StatusCode, out)
		}
		// Expired sessions are forgotten, not revived by the clock.
		if resp, _ := f.session(t, "GET", "/api/v1/audit", c, "", "", ""); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("expired session, clock back: %d, want 401", resp.StatusCode)
		}
	})

	t.Run("logout", func(t *testing.T) {
		_, c := f.login(t, operatorToken)
		_, info := f.session(t, "GET", "/api/v1/session", c, "", "", "")
		if resp, out := f.session(t, "POST", "/logout", c, "", "", ""); resp.StatusCode != http.StatusForbidden {
			t.Errorf("logout without CSRF token: %d %v, want 403", resp.StatusCode, out)
		}
		resp, _ := f.session(t, "POST", "/logout", c, info["csrf_token"].(string), "", "")
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("logout: %d", resp.StatusCode)
		}
		var cleared bool
		for _, k := range resp.Cookies() {
			cleared = cleared || (k.Name == admin.SessionCookie && k.MaxAge < 0 && k.Value == "")
		}
		if !cleared {
			t.Errorf("logout did not delete the cookie: %v", resp.Header["Set-Cookie"])
		}
		if resp, _ := f.session(t, "GET", "/api/v1/session", c, "", "", ""); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("session after logout: %d, want 401", resp.StatusCode)
		}
	})
}

// otherCSRF is the CSRF token of another session.
func otherCSRF(t *testing.T, f *fixture) string {
	t.Helper()
	_, c := f.login(t, adminToken)
	_, info := f.session(t, "GET", "/api/v1/session", c, "", "", "")
	return info["csrf_token"].(string)
}
