package configs

import (
	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/consistency"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

// This file maps the file's sections onto the options of the packages that
// run them, so that no library package depends on the file's types. Where a
// section has the same fields as the package's type, a conversion does it,
// and the compiler keeps the two in step.

// Source is the canal's view of [mysql].
func (m MySQL) Source() canal.Source { return canal.Source(m) }

// CanalOptions are the canal settings of [mysql] and [canal]; the caller
// adds the rules, the publisher, the checkpoint and the observers.
func (c *Config) CanalOptions() canal.Options {
	k := c.Canal
	return canal.Options{
		MySQL: c.MySQL.Source(), PositionFile: k.PositionFile,
		IncludeTables: k.IncludeTables, ExcludeTables: k.ExcludeTables,
		SaveInterval: k.SaveInterval, MaxBatchKeys: k.MaxBatchKeys, MaxBatchBytes: k.MaxBatchBytes,
		CoalesceWindow: k.CoalesceWindow, HeartbeatInterval: k.HeartbeatInterval,
	}
}

// LeaseOptions are the HA lease settings of [mysql] and [canal].
func (c *Config) LeaseOptions() canal.LeaseOptions {
	return canal.LeaseOptions{MySQL: c.MySQL.Source(), Database: c.Canal.HADatabase, Name: c.Canal.HAName, TTL: c.Canal.LeaseTTL}
}

// RuleSpecs are the [[rule]]s as the rules engine takes them.
func (c *Config) RuleSpecs() []invalidate.Rule {
	specs := make([]invalidate.Rule, len(c.Rules))
	for i, r := range c.Rules {
		specs[i] = invalidate.Rule{Table: r.Table, Keys: r.Keys, URLs: r.URLs, Tags: r.Tags, RouteBy: r.RouteBy,
			Actions: r.Actions, Changed: r.Changed, IgnoreChanges: r.IgnoreChanges}
		for _, st := range r.Sync {
			specs[i].Sync = append(specs[i].Sync, invalidate.SyncTarget(st))
		}
	}
	return specs
}

// Groups lists the Redis groups with their replicas and the HTTP groups
// with their instances, each in routing order.
func (c *Config) Groups() (redis, http []invalidate.Group) {
	for _, g := range c.RedisGroups {
		redis = append(redis, invalidate.Group{Name: g.Name, Addrs: g.Replicas})
	}
	for _, g := range c.HTTPGroups {
		http = append(http, invalidate.Group{Name: g.Name, Addrs: g.Instances})
	}
	return redis, http
}

// BuildRules parses the rules for the file's Redis and HTTP groups.
func (c *Config) BuildRules() (*invalidate.Rules, error) {
	redis, http := c.Groups()
	return invalidate.NewRulesWithGroups(c.RuleSpecs(), redis, http)
}

// PurgerRedisGroups are the [[redis_group]]s as the Redis purger takes them.
func (c *Config) PurgerRedisGroups() []purge.RedisGroup {
	groups := make([]purge.RedisGroup, len(c.RedisGroups))
	for i, g := range c.RedisGroups {
		groups[i] = purge.RedisGroup(g)
	}
	return groups
}

// RedisPurgerOptions are the Redis purger's settings of [purger] and its
// [[redis_group]]s; the caller adds the consumer options and the registry.
func (c *Config) RedisPurgerOptions() purge.RedisPurgerOptions {
	p := c.Purger
	return purge.RedisPurgerOptions{
		Groups: c.PurgerRedisGroups(), PipelineKeys: p.PipelineKeys, PatternKeysPerSecond: p.PatternKeysPerSecond,
		GapTimeout: p.GapTimeout, CheckInterval: p.CheckInterval, Rejoin: p.Rejoin,
		RejoinLogDir: p.RejoinLogDir, RejoinLogMaxBytes: p.RejoinLogMaxBytes, RejoinLogMaxAge: p.RejoinLogMaxAge,
		SyncTombstoneTTL: p.SyncTombstoneTTL,
	}
}

// PurgerHTTPGroups are the [[http_group]]s as the HTTP purger takes them.
func (c *Config) PurgerHTTPGroups() []purge.HTTPGroup {
	groups := make([]purge.HTTPGroup, len(c.HTTPGroups))
	for i, g := range c.HTTPGroups {
		groups[i] = purge.HTTPGroup(g)
	}
	return groups
}

// AdminOptions are the admin API settings of [admin], and [mysql] as the
// replays' binlog server (with admin.replay_server_id); the caller adds the
// database, the rules, the publisher, the job store and the observers.
func (c *Config) AdminOptions() admin.Options {
	a := c.Admin
	users := make([]admin.User, len(a.Users))
	for i, u := range a.Users {
		users[i] = admin.User(u)
	}
	binlog := c.MySQL.Source()
	binlog.ServerID = a.ReplayServerID
	return admin.Options{
		Addr: a.Addr, Users: users, AuditDatabase: a.AuditDatabase, MaxBodyBytes: a.MaxBodyBytes,
		AdminActionsPerMinute: a.AdminActionsPerMinute, TopicPrefix: c.NSQ.TopicPrefix,
		Binlog: binlog, ResyncRowsPerSecond: a.ResyncRowsPerSecond, ResyncChunkRows: a.ResyncChunkRows, TaskLease: a.TaskLease,
		TLSCertFile: a.TLSCertFile, TLSKeyFile: a.TLSKeyFile, FlushNeedsApproval: a.FlushNeedsApproval, ApprovalTTL: a.ApprovalTTL,
		Health: c.adminHealth(),
	}
}

// adminHealth is what the admin API's health checks need of the file: the
// Redis groups' passwords and the CDN nodes' consoles; the caller adds
// the nsqd HTTP addresses (an embedded nsqd's are known at build).
func (c *Config) adminHealth() admin.HealthOptions {
	h := admin.HealthOptions{RedisPasswords: map[string]string{}}
	for _, g := range c.RedisGroups {
		h.RedisPasswords[g.Name] = g.Password
	}
	for _, n := range c.CDNNodes {
		h.CDNConsoles = append(h.CDNConsoles, admin.CDNConsole{Name: n.Name, URL: n.ConsoleURL, CAFile: n.CAFile})
	}
	return h
}

// CheckerOptions are the consistency checker's settings of [checker] and
// the [[redis_group]]s; the caller adds the NSQ addresses, the logger and
// the registry.
func (c *Config) CheckerOptions() consistency.Options {
	k := c.Checker
	groups := make([]consistency.Group, len(c.RedisGroups))
	for i, g := range c.RedisGroups {
		groups[i] = consistency.Group(g)
	}
	return consistency.Options{
		Groups: groups, LookupdHTTP: c.NSQ.LookupdHTTP, TopicPrefix: c.NSQ.TopicPrefix,
		SampleRate: k.SampleRate, Windows: k.Windows, MaxPending: k.MaxPending, Recent: k.Recent,
	}
}
