package admin_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/admin/admintest"
)

// Under [admin] tls_cert_file and tls_key_file the API and the page are
// HTTPS only, and the session cookie is Secure.
func TestTLS(t *testing.T) {
	cert, key := admintest.SelfSignedCert(t)
	f := newFixtureWith(t, fixtureOptions{admin: fmt.Sprintf("tls_cert_file = %q\ntls_key_file = %q\n", cert, key)})
	base := f.daemon.AdminURL()
	if want := "https://" + f.daemon.AdminAddr(); base != want {
		t.Fatalf("AdminURL %q, want %q", base, want)
	}
	pem, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	client := &http.Client{
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	t.Cleanup(client.CloseIdleConnections)

	t.Run("login sets a Secure cookie", func(t *testing.T) {
		resp, err := client.PostForm(base+"/login", url.Values{"token": {adminToken}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		var c *http.Cookie
		for _, k := range resp.Cookies() {
			if k.Name == admin.SessionCookie {
				c = k
			}
		}
		if resp.StatusCode != http.StatusSeeOther || c == nil {
			t.Fatalf("login: %d, cookie %v", resp.StatusCode, c)
		}
		if !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
			t.Errorf("cookie %+v (Set-Cookie %q): want Secure, HttpOnly, SameSite=Strict", c, resp.Header.Get("Set-Cookie"))
		}
		req, _ := http.NewRequest("GET", base+"/api/v1/session", nil)
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
		resp, err = client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"user":"admin"`) {
			t.Errorf("session over HTTPS: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("bearer purge", func(t *testing.T) {
		req, _ := http.NewRequest("POST", base+"/api/v1/purges", strings.NewReader(`{"reason":"tls","keys":["k"],"groups":["gb"]}`))
		req.Header.Set("Authorization", "Bearer "+operatorToken)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(body), `"job":`) {
			t.Errorf("purge over HTTPS: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("plain HTTP is refused", func(t *testing.T) {
		// Go's TLS server answers a plain request with a bare 400.
		resp, err := http.Get("http://" + f.daemon.AdminAddr() + "/api/v1/audit")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "Client sent an HTTP request to an HTTPS server") {
			t.Errorf("plain HTTP to the TLS port: %d %q, want the TLS server's 400 and no API answer", resp.StatusCode, body)
		}
	})

	t.Run("an unknown CA is refused", func(t *testing.T) {
		_, err := http.Get(base + "/")
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Errorf("GET with the system roots: %v, want an unknown authority", err)
		}
	})
}
