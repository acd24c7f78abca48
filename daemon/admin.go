package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/configs"
)

// RoleAdmin is the admin API: purges by hand through the binlog's NSQ
// path, with roles, previews and an audit in MySQL.
const RoleAdmin = "admin"

// adminDSN is the go-sql-driver DSN of [mysql] for the admin API: no
// database (its queries name theirs), UTC, and values as text (no
// parseTime), which is how the rules render every column.
func adminDSN(m configs.MySQL) string {
	cred := url.PathEscape(m.User)
	if m.Password != "" {
		cred += ":" + url.PathEscape(m.Password)
	}
	return cred + "@tcp(" + m.Addr + ")/?loc=UTC&time_zone=%27%2B00%3A00%27&interpolateParams=true"
}

// buildAdmin builds the admin role on the publisher and job store build
// made for it. sql.Open connects lazily: nothing is dialled before Run.
func (n *Daemon) buildAdmin() error {
	cfg := n.cfg
	if !cfg.AdminConfigured() {
		return errors.New("admin role: config has no [admin]")
	}
	db, err := sql.Open("mysql", adminDSN(cfg.MySQL))
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	db.SetMaxOpenConns(8)
	n.own("admin database", db.Close)
	o := cfg.AdminOptions()
	o.DB, o.Rules, o.Publisher, o.Jobs = db, n.rules, n.publisher, n.jobs
	o.CDNNodes, o.Health.NSQDHTTP = cdnNodeNames(cfg), n.nsqdHTTP
	o.Logger, o.Registerer = n.log.With("role", RoleAdmin), n.registry
	n.admin, err = admin.New(o)
	if err != nil {
		return err
	}
	n.own(RoleAdmin, n.admin.Close)
	return nil
}

// AdminAddr is the bound address of the admin API ("" without the role).
func (n *Daemon) AdminAddr() string {
	if n.admin == nil {
		return ""
	}
	return n.admin.Addr()
}

// AdminURL is the admin API's base URL, https:// under TLS ("" without
// the role).
func (n *Daemon) AdminURL() string {
	if n.admin == nil {
		return ""
	}
	return n.admin.URL()
}

// runAdmin creates the channels (a manual purge must reach a replica that
// never connected, as the canal's do), then serves the API.
func (n *Daemon) runAdmin(ctx context.Context) error {
	if err := n.ensureChannels(ctx); err != nil {
		return err
	}
	return n.admin.Run(ctx)
}
