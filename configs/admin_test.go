package configs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/configs"
)

const adminBase = valid + `
[admin]
`

func TestAdminDefaultsAndOptions(t *testing.T) {
	cfg, err := configs.Parse([]byte(adminBase + `
[[admin.user]]
name = "alice"
role = "operator"
token_sha256 = "` + admin.HashToken("t0ken") + `"
`))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.AdminConfigured() {
		t.Fatal("[admin] not configured")
	}
	o := cfg.AdminOptions()
	if o.Addr != admin.DefaultAddr || o.AuditDatabase != canal.DefaultHADatabase || o.MaxBodyBytes != admin.DefaultMaxBodyBytes ||
		o.FlushNeedsApproval || o.ApprovalTTL != admin.DefaultApprovalTTL || o.TLSCertFile != "" || o.TLSKeyFile != "" {
		t.Errorf("defaults: %+v", o)
	}
	if fmt.Sprint(o.Health.RedisPasswords) != "map[hot-a:]" || len(o.Health.CDNConsoles) != 0 {
		t.Errorf("health options: %+v", o.Health)
	}
	if len(o.Users) != 1 || o.Users[0] != (admin.User{Name: "alice", Role: "operator", TokenSHA256: admin.HashToken("t0ken")}) {
		t.Errorf("users: %+v", o.Users)
	}
	// Replays read [mysql]'s binlog with their own server id.
	wantBinlog := cfg.MySQL.Source()
	wantBinlog.ServerID = admin.DefaultReplayServerID
	if o.Binlog != wantBinlog || o.ResyncRowsPerSecond != admin.DefaultResyncRowsPerSecond || o.ResyncChunkRows != admin.DefaultResyncChunkRows ||
		o.TaskLease != admin.DefaultTaskLease {
		t.Errorf("task defaults: binlog %+v, resync %d rows/s in chunks of %d, lease %v", o.Binlog, o.ResyncRowsPerSecond, o.ResyncChunkRows, o.TaskLease)
	}
	plain, err := configs.Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if plain.AdminConfigured() {
		t.Error("a file without [admin] runs the admin role")
	}
}

// The approval, TLS and health settings reach admin.Options.
func TestAdminOptionsApprovalTLSHealth(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for _, f := range []string{cert, key} {
		if err := os.WriteFile(f, []byte("pem"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := configs.Parse([]byte(strings.Replace(valid, `replicas = [`, `password = "s3cret"
replicas = [`, 1) + `
[[cdn_node]]
name = "edge1"
console_url = "https://edge1.example:16100"
key = "0123456789abcdef"
ca_file = "/etc/edge-ca.pem"

[admin]
flush_needs_approval = true
approval_ttl = "10m"
tls_cert_file = "` + cert + `"
tls_key_file = "` + key + `"

[[admin.user]]
name = "alice"
role = "admin"
token_sha256 = "` + admin.HashToken("t") + `"
`))
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.AdminOptions()
	if !o.FlushNeedsApproval || o.ApprovalTTL != 10*time.Minute || o.TLSCertFile != cert || o.TLSKeyFile != key {
		t.Errorf("options %+v", o)
	}
	want := []admin.CDNConsole{{Name: "edge1", URL: "https://edge1.example:16100", CAFile: "/etc/edge-ca.pem"}}
	if o.Health.RedisPasswords["hot-a"] != "s3cret" || !slices.Equal(o.Health.CDNConsoles, want) {
		t.Errorf("health options %+v", o.Health)
	}
}

func TestAdminValidation(t *testing.T) {
	hash := admin.HashToken("x")
	user := func(name, role, h string) string {
		return "\n[[admin.user]]\nname = \"" + name + "\"\nrole = \"" + role + "\"\ntoken_sha256 = \"" + h + "\"\n"
	}
	for _, tt := range []struct{ name, file, want string }{
		{"no user", adminBase, "admin.user: missing"},
		{"unknown role", adminBase + user("a", "root", hash), `admin.user[0].role: unknown role "root" (viewer, operator, admin)`},
		{"duplicate name", adminBase + user("a", "viewer", hash) + user("a", "admin", hash), `admin.user[1].name: "a" is used twice`},
		{"bad hex", adminBase + user("a", "viewer", "xyz"), "admin.user[0].token_sha256: must be 64 hex digits"},
		{"short hash", adminBase + user("a", "viewer", hash[:62]), "admin.user[0].token_sha256: must be 64 hex digits"},
		{"bad name", adminBase + user("a b", "viewer", hash), `admin.user[0].name: "a b"`},
		{"bad database", valid + "[admin]\naudit_database = \"a-b\"\n" + user("a", "viewer", hash), "admin.audit_database"},
		{"small body", valid + "[admin]\nmax_body_bytes = 10\n" + user("a", "viewer", hash), "admin.max_body_bytes: must be at least 1024"},
		{"bad addr", valid + "[admin]\naddr = \"nope\"\n" + user("a", "viewer", hash), "admin.addr"},
		{"unknown key", adminBase + "token = \"plain\"\n" + user("a", "viewer", hash), `unknown key "admin.token"`},
		{"replay id is the canal's", valid + "[admin]\nreplay_server_id = 7\n" + user("a", "viewer", hash),
			"admin.replay_server_id: 7 is mysql.server_id, the canal's"},
		{"replay id 0", valid + "[admin]\nreplay_server_id = 0\n" + user("a", "viewer", hash), "admin.replay_server_id: must not be 0"},
		{"resync rate 0", valid + "[admin]\nresync_rows_per_second = 0\n" + user("a", "viewer", hash), "admin.resync_rows_per_second: must be 1 to 100000"},
		{"resync rate too high", valid + "[admin]\nresync_rows_per_second = 100001\n" + user("a", "viewer", hash), "admin.resync_rows_per_second: must be 1 to 100000"},
		{"resync chunk", valid + "[admin]\nresync_chunk_rows = 10001\n" + user("a", "viewer", hash), "admin.resync_chunk_rows: must be 1 to 10000"},
		{"task lease", valid + "[admin]\ntask_lease = \"100ms\"\n" + user("a", "viewer", hash), "admin.task_lease: must be at least 1s"},
		{"cert without key", adminBase + "tls_cert_file = \"/nonexistent/cert.pem\"\n" + user("a", "viewer", hash), "admin.tls_cert_file: tls_cert_file and tls_key_file go together"},
		{"missing key file", adminBase + "tls_cert_file = \"/nonexistent/cert.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n" + user("a", "viewer", hash), "admin.tls_key_file: stat /nonexistent/key.pem"},
		{"short approval ttl", adminBase + "approval_ttl = \"30s\"\n" + user("a", "viewer", hash), "admin.approval_ttl: must be at least 1m"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := configs.Parse([]byte(tt.file))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
