package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/admin/admintest"
	"github.com/flashsync/flashsync/daemon"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// purge against an HTTPS admin API holding flushes for a second admin:
// -ca verifies the server, -config finds it at https://, and a flush
// prints its pending approval.
func TestPurgeOverTLSWithApproval(t *testing.T) {
	db := stacktest.NewDatabase(t)
	nsqd := stacktest.StartNSQD(t)
	ga := stacktest.StartRedis(t)
	cert, key := admintest.SelfSignedCert(t)
	config := admintest.Prelude(nsqd.TCPAddr(), nsqd.HTTPAddr(), "") + fmt.Sprintf(`
[[redis_group]]
name = "ga"
replicas = [%q]

[admin]
addr = "127.0.0.1:%d"
audit_database = %q
tls_cert_file = %q
tls_key_file = %q
flush_needs_approval = true
`, ga.Addr(), stacktest.FreePort(t), db, cert, key) + admintest.DemoUsers(t)
	d, path, _ := admintest.Start(t, config, daemon.RoleRedisPurger, daemon.RoleAdmin)
	url := d.AdminURL()
	if !strings.HasPrefix(url, "https://") {
		t.Fatalf("AdminURL %q", url)
	}

	t.Run("-ca", func(t *testing.T) {
		rc, out, stderr := runCLI(t, "purge", "-admin", url, "-ca", cert, "-token", "dev-operator-token", "-reason", "tls", "-wait", "-key", "k")
		if rc != 0 || stderr != "" || !strings.Contains(out, " done: 1 done, 0 failed") {
			t.Errorf("rc %d, stderr %q, stdout %q", rc, stderr, out)
		}
	})

	t.Run("without -ca the server is not trusted", func(t *testing.T) {
		rc, out, stderr := runCLI(t, "purge", "-admin", url, "-token", "dev-operator-token", "-reason", "tls", "-key", "k")
		if rc != 1 || out != "" || !strings.Contains(stderr, "certificate") {
			t.Errorf("rc %d, stdout %q, stderr %q, want 1 with a certificate error", rc, out, stderr)
		}
	})

	t.Run("-config is https and a flush waits for approval", func(t *testing.T) {
		rc, out, stderr := runCLI(t, "purge", "-config", path, "-ca", cert, "-token", "dev-admin-token", "-reason", "poisoned", "-wait",
			"-flush-group", "ga", "-confirm", "ga")
		if rc != 0 || stderr != "" || !regexp.MustCompile(`^approval [0-9a-f]{16} pending: a second admin approves it \(POST /api/v1/approvals/[0-9a-f]{16}/approve, or on the page\) before .*; it then runs as job [0-9a-f]{16}\n$`).MatchString(out) {
			t.Errorf("rc %d, stderr %q, stdout %q", rc, stderr, out)
		}
		rc, out, _ = runCLI(t, "purge", "-config", path, "-ca", cert, "-token", "dev-admin-token", "-reason", "poisoned", "-json",
			"-flush-group", "ga", "-confirm", "ga")
		var answer struct {
			Approval struct{ ID, State string }
			Preview  struct{ Counts struct{ Flushes int } }
		}
		if err := json.Unmarshal([]byte(out), &answer); rc != 0 || err != nil || answer.Approval.State != "pending" || answer.Preview.Counts.Flushes != 1 {
			t.Errorf("-json: rc %d, %v: %s", rc, err, out)
		}
	})
}
