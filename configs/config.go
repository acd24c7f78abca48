// Package configs holds flashsync's TOML configuration: its types, defaults,
// strict loading and validation, and the shipped example files.
package configs

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/cdn"
	"github.com/flashsync/flashsync/consistency"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/nsqembed"
	"github.com/flashsync/flashsync/purge"
	"github.com/flashsync/flashsync/seckill"
)

// Config is one flashsync process's configuration. Every role reads the part
// it needs; `flashsync all` runs every role whose part is configured.
type Config struct {
	MySQL       MySQL        `toml:"mysql"`
	Canal       Canal        `toml:"canal"`
	NSQ         NSQ          `toml:"nsq"`
	HTTP        HTTP         `toml:"http"`
	Purger      Purger       `toml:"purger"`
	RedisGroups []RedisGroup `toml:"redis_group"`
	HTTPGroups  []HTTPGroup  `toml:"http_group"`
	Rules       []Rule       `toml:"rule"`
	// Console and CDNNodes configure the CDN cascade (package cdn).
	Console    Console    `toml:"console"`
	Dispatcher Dispatcher `toml:"dispatcher"`
	CDNNodes   []CDNNode  `toml:"cdn_node"`
	// Seckill is the flash-sale service (package seckill).
	Seckill Seckill `toml:"seckill"`
	// Admin is the manual-purge API (package admin, docs/admin.md).
	Admin Admin `toml:"admin"`
	// Checker is the consistency checker (package consistency,
	// docs/consistency.md).
	Checker Checker `toml:"checker"`

	// adminSection: the file has an [admin] section; checkerSection: a
	// [checker] one.
	adminSection   bool
	checkerSection bool
}

// Checker configures the consistency checker role: it samples the canal's
// invalidations of the [[redis_group]]s and, each window after the canal
// read a sampled commit, reads its keys from every replica of the group;
// a replica still holding a value filled before the change is reported
// (GET /consistency on http.addr, docs/consistency.md).
type Checker struct {
	// SampleRate is the share of the canal's key purges checked, above 0
	// and at most 1. A check reads up to 5 keys of the message from every
	// replica at each window.
	SampleRate float64 `toml:"sample_rate"`
	// Windows are the delays after the canal read a commit at which its
	// keys are read; each has its own counts and nines.
	Windows []time.Duration `toml:"windows"`
	// MaxPending bounds the checks scheduled at once (a sample is one per
	// window, pending until it is due); a sample over it is dropped and
	// counted in flashsync_consistency_samples_dropped_total. Size it at
	// least sample_rate × key purges per second × the sum of the windows:
	// at 500 purges/s and the default windows, 330 at 0.01, 33,000 at 1.
	MaxPending int `toml:"max_pending"`
	// Recent is how many of the last inconsistencies GET /consistency
	// lists.
	Recent int `toml:"recent"`
}

// CheckerConfigured tells whether the file has a [checker] to run.
func (c *Config) CheckerConfigured() bool { return c.checkerSection }

// Admin configures the admin role: the API an on-call engineer purges keys,
// URLs, tags and rows with by hand, through the binlog's NSQ path, audited
// in MySQL ([mysql] is the server). docs/admin.md.
type Admin struct {
	// Addr is the admin API's listen address.
	Addr string `toml:"addr"`
	// AuditDatabase holds the tables admin_audit and admin_tasks (created
	// on first use) on the [mysql] server; by default the canal's
	// ha_database default.
	AuditDatabase string `toml:"audit_database"`
	// MaxBodyBytes bounds a request body; a larger one is refused with 413.
	MaxBodyBytes int64 `toml:"max_body_bytes"`
	// AdminActionsPerMinute bounds each user's admin-only purges (patterns,
	// bans, flush_groups), replays and re-syncs that run, not dry runs: this
	// many a minute together, in bursts of as many; one more is refused with
	// 429 and Retry-After.
	AdminActionsPerMinute int `toml:"admin_actions_per_minute"`
	// ReplayServerID identifies the binlog reader of replays to the
	// [mysql] server; it must differ from mysql.server_id and from every
	// other reader's (each admin process that replays needs its own).
	ReplayServerID uint32 `toml:"replay_server_id"`
	// ResyncRowsPerSecond bounds the rows a re-sync reads and publishes a
	// second when its request sets no rows_per_second.
	ResyncRowsPerSecond int `toml:"resync_rows_per_second"`
	// ResyncChunkRows is the rows of one re-sync chunk (one job) when its
	// request sets no chunk_rows.
	ResyncChunkRows int `toml:"resync_chunk_rows"`
	// TaskLease is how long a running replay's or re-sync's heartbeat may
	// be silent before another admin process, or this one restarted,
	// resumes it from its cursor.
	TaskLease time.Duration `toml:"task_lease"`
	// TLSCertFile is a PEM certificate (chain): with TLSKeyFile, the API and
	// the page are served over HTTPS, and the session cookie is Secure.
	// Both are read at start: a renewed certificate takes a restart.
	TLSCertFile string `toml:"tls_cert_file"`
	// TLSKeyFile is TLSCertFile's PEM private key.
	TLSKeyFile string `toml:"tls_key_file"`
	// FlushNeedsApproval holds an admin's flush_groups until a second admin
	// approves it (POST /api/v1/approvals/{id}/approve, or on the page).
	FlushNeedsApproval bool `toml:"flush_needs_approval"`
	// ApprovalTTL is how long a held flush waits for its approval; later,
	// approving it is a 409.
	ApprovalTTL time.Duration `toml:"approval_ttl"`
	// Users are the API's users, each with a role and the SHA-256 of its
	// bearer token.
	Users []AdminUser `toml:"user"`
}

// AdminUser is one user of the admin API. The token itself is never
// stored: `flashsync admin hash-token` prints the hash of one.
type AdminUser struct {
	// Name names the user in the audit and in the jobs they start.
	Name string `toml:"name"`
	// Role is "viewer" (jobs, audit, dry runs), "operator" (also purges
	// keys, URLs, tags and rows) or "admin".
	Role string `toml:"role"`
	// TokenSHA256 is the hex SHA-256 of the user's bearer token.
	TokenSHA256 string `toml:"token_sha256"`
}

// AdminConfigured tells whether the file has an [admin] to run.
func (c *Config) AdminConfigured() bool { return c.adminSection || len(c.Admin.Users) > 0 }

// Seckill configures the flash-sale roles: the buy API, the order writers,
// the expirer and the reconciler.
type Seckill struct {
	// Addr is the buy API's listen address.
	Addr string `toml:"addr"`
	// Database holds the flash-sale tables (activity, activity_stock,
	// orders), apart from the ordinary item tables; [mysql] is the server.
	Database string `toml:"database"`
	// ItemTable is the db.table of the item details (GET /items/{id}).
	ItemTable string `toml:"item_table"`
	// Redis is the reservation counters' Redis: it must not be a replica of
	// any [[redis_group]], so the binlog path can never rewrite what the
	// buy path decides on.
	Redis string `toml:"redis"`
	// RedisPassword is the reservation Redis's password (AUTH).
	RedisPassword string `toml:"redis_password"`
	// Topic carries reservations to the order writers.
	Topic string `toml:"topic"`
	// TokenKey signs the order URL tokens (or TokenKeyFile).
	TokenKey     string `toml:"token_key"`
	TokenKeyFile string `toml:"token_key_file"`
	// Writers is the number of order transactions in flight.
	Writers int `toml:"writers"`
	// BatchMax bounds the reservations merged into one transaction.
	BatchMax int `toml:"batch_max"`
	// OrderTTL is how long an order may stay unpaid before it expires.
	OrderTTL time.Duration `toml:"order_ttl"`
	// ExpireInterval is how often unpaid orders past order_ttl are
	// expired and their stock given back.
	ExpireInterval time.Duration `toml:"expire_interval"`
	// ReconcileInterval is how often the reconciler compares the
	// reservation counters with MySQL and repairs drift.
	ReconcileInterval time.Duration `toml:"reconcile_interval"`
	// ReconcileGrace is how long a reservation may stay unwritten before the
	// reconciler gives it back; at least three NSQ message timeouts (30s),
	// so a reservation whose writer died is redelivered first.
	ReconcileGrace time.Duration `toml:"reconcile_grace"`
	// MaxStaleness bounds how far behind MySQL a cached item or activity
	// may be: a [[redis_group]] replica is read only while its applied
	// watermark (written by flashsync's Redis purger) is at most this old,
	// else another replica, else MySQL (docs/consistency.md). A negative
	// value ("-1s") reads replicas without their watermarks, for caches no
	// flashsync purger writes watermarks to.
	MaxStaleness time.Duration `toml:"max_staleness"`
	// Requests per second and bursts on the buy endpoint, per client IP and
	// per user (0: no limit).
	RateIP    float64 `toml:"rate_ip"`
	BurstIP   int     `toml:"burst_ip"`
	RateUser  float64 `toml:"rate_user"`
	BurstUser int     `toml:"burst_user"`
}

// SeckillConfigured tells whether the file has a [seckill] to run.
func (c *Config) SeckillConfigured() bool { return c.Seckill.Addr != "" || c.Seckill.Redis != "" }

// Console is the console role, run on each CDN node: it takes signed purge
// batches from the dispatcher and purges its cache machines.
type Console struct {
	// Addr is the console's listen address, which the dispatcher's
	// cdn_node.console_url points at.
	Addr string `toml:"addr"`
	// Key is the secret shared with the dispatcher (at least 16 bytes).
	Key string `toml:"key"`
	// KeyFile names a file holding Key instead (surrounding white space
	// is ignored).
	KeyFile string `toml:"key_file"`
	// TLSCert is a PEM certificate: with TLSKey, the console serves HTTPS.
	TLSCert string `toml:"tls_cert"`
	// TLSKey is TLSCert's private key.
	TLSKey string `toml:"tls_key"`
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes int64 `toml:"max_body_bytes"`
	// MaxSkew is the accepted clock distance of a request's timestamp;
	// nonces are remembered for twice as long.
	MaxSkew time.Duration `toml:"max_skew"`
	// Concurrency bounds the PURGE requests in flight to one machine.
	Concurrency int `toml:"concurrency"`
	// HostTimeout bounds one PURGE request.
	HostTimeout time.Duration `toml:"host_timeout"`
	// Machines are the node's Varnish-compatible caches, host:port.
	Machines []string `toml:"machines"`
}

// Dispatcher tunes the dispatcher role (attempts and in-flight messages are
// [purger]'s).
type Dispatcher struct {
	// Timeout bounds one POST to a console, its fan-out included.
	Timeout time.Duration `toml:"timeout"`
}

// CDNNode is one CDN node's console, which the dispatcher sends every
// batch's URLs and tags to.
type CDNNode struct {
	// Name names the node in its NSQ channel, metrics and job acks.
	Name string `toml:"name"`
	// ConsoleURL is the node's console, http:// or https://.
	ConsoleURL string `toml:"console_url"`
	// Key is the secret shared with that console (at least 16 bytes).
	Key string `toml:"key"`
	// KeyFile names a file holding Key instead.
	KeyFile string `toml:"key_file"`
	// CAFile is a PEM bundle to verify an https console_url with (default:
	// the system roots).
	CAFile string `toml:"ca_file"`
}

// MinKeyLen is the shortest console key accepted.
const MinKeyLen = 16

// LoadKey returns the secret given inline or in a file; keyName is the
// config key for errors ("console", "cdn_node[0]").
func LoadKey(keyName, key, keyFile string) ([]byte, error) {
	switch {
	case key != "" && keyFile != "":
		return nil, fmt.Errorf("%s.key: set key or key_file, not both", keyName)
	case key == "" && keyFile == "":
		return nil, fmt.Errorf("%s.key: missing (or set key_file)", keyName)
	}
	if keyFile != "" {
		data, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.key_file: %v", keyName, err)
		}
		key = strings.TrimSpace(string(data))
		if len(key) < MinKeyLen {
			return nil, fmt.Errorf("%s.key_file: key shorter than %d bytes", keyName, MinKeyLen)
		}
		return []byte(key), nil
	}
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("%s.key: shorter than %d bytes", keyName, MinKeyLen)
	}
	return []byte(key), nil
}

// ConsoleConfigured tells whether the file has a [console] to run.
func (c *Config) ConsoleConfigured() bool {
	return c.Console.Addr != "" || len(c.Console.Machines) > 0
}

// MySQL is the binlog source.
type MySQL struct {
	// Addr is the server's host:port.
	Addr string `toml:"addr"`
	// User needs REPLICATION SLAVE, REPLICATION CLIENT and SELECT on the
	// ruled tables (and, with canal.ha, rights on ha_database).
	User string `toml:"user"`
	// Password of User.
	Password string `toml:"password"`
	// Flavor is "mariadb" or "mysql".
	Flavor string `toml:"flavor"`
	// ServerID identifies this binlog reader to the server; two readers with
	// one ID kick each other off (error 4052), so every canal needs its own.
	ServerID uint32 `toml:"server_id"`
}

// Canal configures the binlog reader.
type Canal struct {
	// PositionFile stores the last binlog position whose invalidations NSQ
	// acknowledged.
	PositionFile string `toml:"position_file"`
	// IncludeTables and ExcludeTables are regular expressions matched against
	// "db.table".
	IncludeTables []string `toml:"include_tables"`
	ExcludeTables []string `toml:"exclude_tables"`
	// SaveInterval bounds how often the position file is rewritten; the
	// position is also saved on rotation, DDL and shutdown.
	SaveInterval time.Duration `toml:"save_interval"`
	// MaxBatchKeys flushes a large transaction's keys to NSQ before its
	// commit, so memory stays bounded; the position still moves only at commit.
	MaxBatchKeys int `toml:"max_batch_keys"`
	// MaxBatchBytes bounds the targets' bytes held per batch; with a few
	// batches in flight it bounds the canal's memory on any transaction.
	MaxBatchBytes int `toml:"max_batch_bytes"`
	// CoalesceWindow bounds how long the transactions committed while a
	// publish is in flight gather in one batch (a key changed by many of
	// them is purged once); with the publisher idle a commit goes out at
	// once. "0s" publishes every transaction on its own.
	CoalesceWindow time.Duration `toml:"coalesce_window"`
	// HeartbeatInterval is how often the canal reads the server's binlog
	// end and sends every Redis group a heartbeat, so each replica's applied
	// watermark moves while its rows do not change: the resolution of the
	// staleness bound readers enforce. Between 10ms and 10s.
	HeartbeatInterval time.Duration `toml:"heartbeat_interval"`
	// HA runs this canal as one of several for the source: the one holding
	// a lease (a row in HADatabase on the source server) streams, the
	// others wait, and the position is kept in that database too, so a
	// standby resumes where the leader stopped. HAName names the stream;
	// every canal of one source uses the same name and its own server_id.
	HA bool `toml:"ha"`
	// HAName names the stream: every canal of one source uses the same
	// name and its own mysql.server_id.
	HAName string `toml:"ha_name"`
	// HADatabase is the database on the source server that holds the
	// lease row and the shared position.
	HADatabase string `toml:"ha_database"`
	// LeaseTTL is how long a leader's lease lasts without renewal: a
	// standby takes over at most this long after the leader died (300ms
	// to 1m).
	LeaseTTL time.Duration `toml:"lease_ttl"`
}

// NSQ says where invalidations travel.
type NSQ struct {
	// NSQDTCP and NSQDHTTP list the nsqd daemons (same order). Empty: run one
	// nsqd embedded in this process.
	NSQDTCP  []string `toml:"nsqd_tcp"`
	NSQDHTTP []string `toml:"nsqd_http"`
	// LookupdHTTP lists nsqlookupd HTTP addresses. Set, purgers discover the
	// nsqd that carry their topics through them (polling every 5 s, so a new
	// nsqd is consumed without a restart); empty, purgers connect to every
	// nsqd_tcp. Publishers always use nsqd_tcp.
	LookupdHTTP []string `toml:"nsqlookupd_http"`
	// TopicPrefix starts every topic name flashsync uses.
	TopicPrefix string `toml:"topic_prefix"`
	// Embedded configures the in-process nsqd used when NSQDTCP is empty.
	EmbeddedTCP      string `toml:"embedded_tcp"`
	EmbeddedHTTP     string `toml:"embedded_http"`
	EmbeddedDataPath string `toml:"embedded_data_path"`
	// PublishTimeout bounds one publish attempt; failed publishes are retried
	// with backoff while the binlog reader waits.
	PublishTimeout time.Duration `toml:"publish_timeout"`
}

// HTTP serves /metrics and /healthz.
type HTTP struct {
	// Addr is the operator port's listen address: /metrics, /healthz,
	// /jobs, /rules/explain, /consistency (with the checker role).
	Addr string `toml:"addr"`
}

// Purger tunes the cache purgers.
type Purger struct {
	// MaxAttempts: a message that keeps failing for a reason other than the
	// cache being unreachable goes to the dead-letter topic after this many
	// attempts. An unreachable replica never dead-letters: its channel buffers.
	MaxAttempts uint16 `toml:"max_attempts"`
	// MaxInFlight is the number of messages one replica's consumer holds.
	MaxInFlight int `toml:"max_in_flight"`
	// Timeout bounds one Redis round trip or one HTTP purge request.
	Timeout time.Duration `toml:"timeout"`
	// PipelineKeys is the most keys sent in one Redis pipeline.
	PipelineKeys int `toml:"pipeline_keys"`
	// PatternKeysPerSecond bounds the keys an admin pattern purge unlinks
	// per second on each Redis replica (SCAN MATCH + UNLINK).
	PatternKeysPerSecond int `toml:"pattern_keys_per_second"`
	// HTTPHost is the Host header of the HTTP purger's URL purges whose
	// URL is a path ("/item/1.html"); empty means the instance's address.
	// An absolute URL's host always wins.
	HTTPHost string `toml:"http_host"`
	// HTTPSoftPurge sends tags as xkey-softpurge (objects stay stale for
	// their grace, refreshed in the background) instead of xkey-purge.
	HTTPSoftPurge bool `toml:"http_soft_purge"`
	// GapTimeout is how long a Redis replica's applied watermark may wait
	// on a missing range (a purge lost, or never retried) before the
	// replica is flushed to be trusted again. A requeued purge that may
	// fill the range does not count until it is due back.
	GapTimeout time.Duration `toml:"gap_timeout"`
	// CheckInterval is how often each Redis replica's watermark state and
	// run_id are read while no message arrives: a replica restarted while
	// the canal is down is flushed about this long after it answers.
	CheckInterval time.Duration `toml:"check_interval"`
	// Rejoin is how a Redis replica restarted from a snapshot (RDB, AOF)
	// is made consistent: "flush" (FLUSHDB) or "replay" (every message
	// applied to it since its snapshot purged again, from the rejoin log in
	// rejoin_log_dir; flushed where the log does not reach). A replica that
	// lost its watermark or missed a purge is always flushed.
	Rejoin string `toml:"rejoin"`
	// RejoinLogDir holds a log per Redis replica of the messages applied
	// to it, for rejoin = "replay" (required then).
	RejoinLogDir string `toml:"rejoin_log_dir"`
	// RejoinLogMaxBytes bounds each replica's rejoin log.
	RejoinLogMaxBytes int64 `toml:"rejoin_log_max_bytes"`
	// RejoinLogMaxAge bounds each replica's rejoin log: a replica whose
	// snapshot is older than this is flushed, not replayed.
	RejoinLogMaxAge time.Duration `toml:"rejoin_log_max_age"`
	// SyncTombstoneTTL is how long a deleted synced key ([[rule.sync]])
	// keeps its version in each replica, refusing older writes of it (a
	// redelivery, a canal replay from its checkpoint) for that long.
	SyncTombstoneTTL time.Duration `toml:"sync_tombstone_ttl"`
}

// RedisGroup is a set of Redis instances that all hold the same hot data;
// every replica gets every purge of the group.
type RedisGroup struct {
	// Name names the group in topics, metrics and logs; groups route in
	// the order of the file.
	Name string `toml:"name"`
	// Replicas are the group's Redis instances, host:port.
	Replicas []string `toml:"replicas"`
	// Password of every replica (AUTH).
	Password string `toml:"password"`
	// DB is the Redis database number the keys live in.
	DB int `toml:"db"`
}

// HTTPGroup is a set of HTTP caches (Varnish, CDN nodes) that all hold the
// same pages; every instance gets every URL and tag purge of the group.
type HTTPGroup struct {
	// Name names the group in topics, metrics and logs; groups route in
	// the order of the file.
	Name string `toml:"name"`
	// Instances are the group's HTTP caches, host:port.
	Instances []string `toml:"instances"`
}

// Rule maps the rows of one table to cache targets: Redis keys, HTTP URLs
// and surrogate-key tags.
type Rule struct {
	// Table is "db.table".
	Table string `toml:"table"`
	// Keys are Redis key templates over the row's columns, e.g. "item:{id}";
	// they go to the [[redis_group]] the route value picks.
	Keys []string `toml:"keys"`
	// URLs are HTTP URL or path templates, e.g. "/item/{id}.html", and Tags
	// surrogate-key (xkey) templates, e.g. "item-{id}"; both go to the
	// [[http_group]] the route value picks.
	URLs []string `toml:"urls"`
	Tags []string `toml:"tags"`
	// RouteBy is the column whose value picks the group in each tier.
	RouteBy string `toml:"route_by"`
	// Actions are the row actions the rule fires on: "insert", "update",
	// "delete". Empty means all three.
	Actions []string `toml:"actions"`
	// Changed: an UPDATE fires only if one of these columns changed.
	Changed []string `toml:"changed"`
	// IgnoreChanges: an UPDATE does not fire if every column that changed is
	// listed here. Exclusive with Changed.
	IgnoreChanges []string `toml:"ignore_changes"`
	// Sync ([[rule.sync]]) are Redis keys kept equal to the row (sync mode):
	// every replica of the row's group is written the new image instead of
	// having the key deleted, fenced by the row's binlog version.
	Sync []SyncTarget `toml:"sync"`
}

// SyncTarget is one key a rule keeps equal to the row. An insert or update
// writes the after image; a delete, or an update that changes the key,
// deletes the old key and leaves its version as a tombstone. Each write
// carries the row's version (canal epoch, binlog offset, row) and a replica
// applies it only if it is newer than the key's, so a redelivered or
// replayed older write never takes the value back in time. The version is
// kept in a companion key, "flashsync:v:" + the key; the value itself is
// what the format says, nothing added.
type SyncTarget struct {
	// Key is the Redis key template, e.g. "item:json:{id}".
	Key string `toml:"key"`
	// Format is the value: "json" (an object of the columns, named as in
	// the table), "hash" (a Redis hash, one field per non-NULL column) or
	// "text" (Value rendered like a key template).
	Format string `toml:"format"`
	// Columns are the json or hash columns, in this order; empty means
	// every column of the table, in table order.
	Columns []string `toml:"columns"`
	// Value is the text format's template, e.g. "{name}|{price}"; a NULL
	// column deletes the key instead.
	Value string `toml:"value"`
	// TTL expires the value (0: never); its version outlives it by the
	// purger's sync_tombstone_ttl.
	TTL time.Duration `toml:"ttl"`
	// RefreshHot writes the new row only to the replicas that hold the key,
	// the ones it was read from lately (cache-aside fills only what is read;
	// TTL and maxmemory evict the rest): hot keys are refreshed in place,
	// and the cold rows of a bulk change cost no write and no memory. A
	// replica that does not hold the key gets nothing; a delete deletes
	// everywhere, as without it.
	RefreshHot bool `toml:"refresh_hot"`
}

// RuleActions are the values Rule.Actions accepts.
var RuleActions = []string{"insert", "update", "delete"}

// DefaultHTTPAddr is http.addr when the file has none.
const DefaultHTTPAddr = "127.0.0.1:18080"

// Default is the configuration of an empty file: every default in one
// place, each taken from the package that uses it, so that the file, a
// package used on its own and the generated reference agree. Decoding a
// file over it keeps what the file does not set, so a zero that the file
// sets on purpose (canal.coalesce_window = "0s") stays zero.
func Default() Config {
	return Config{
		MySQL: MySQL{Flavor: canal.DefaultFlavor, User: "root"},
		Canal: Canal{
			SaveInterval: canal.DefaultSaveInterval, MaxBatchKeys: canal.DefaultMaxBatchKeys,
			MaxBatchBytes: canal.DefaultMaxBatchBytes, CoalesceWindow: canal.DefaultCoalesceWindow,
			HeartbeatInterval: canal.DefaultHeartbeatInterval,
			HAName:            canal.DefaultHAName, HADatabase: canal.DefaultHADatabase, LeaseTTL: canal.DefaultLeaseTTL,
		},
		NSQ: NSQ{
			TopicPrefix: invalidate.DefaultTopicPrefix, PublishTimeout: invalidate.DefaultPublishTimeout,
		},
		HTTP: HTTP{Addr: DefaultHTTPAddr},
		Purger: Purger{
			MaxAttempts: purge.DefaultMaxAttempts, MaxInFlight: purge.DefaultMaxInFlight,
			Timeout: purge.DefaultTimeout, PipelineKeys: purge.DefaultPipelineKeys,
			PatternKeysPerSecond: purge.DefaultPatternKeysPerSecond,
			GapTimeout:           purge.DefaultGapTimeout, CheckInterval: purge.DefaultCheckInterval, Rejoin: purge.RejoinFlush,
			RejoinLogMaxBytes: purge.DefaultRejoinLogMaxBytes, RejoinLogMaxAge: purge.DefaultRejoinLogMaxAge,
			SyncTombstoneTTL: purge.DefaultSyncTombstoneTTL,
		},
		Console: Console{
			MaxBodyBytes: cdn.DefaultMaxBodyBytes, MaxSkew: cdn.DefaultMaxSkew,
			Concurrency: cdn.DefaultConcurrency, HostTimeout: cdn.DefaultHostTimeout,
		},
		Dispatcher: Dispatcher{Timeout: cdn.DefaultDispatchTimeout},
		Seckill: Seckill{
			Database: "seckill", ItemTable: seckill.DefaultItemTable,
			Writers: seckill.DefaultWriters, BatchMax: seckill.DefaultBatchMax, OrderTTL: seckill.DefaultOrderTTL,
			ExpireInterval: seckill.DefaultExpireInterval, ReconcileInterval: seckill.DefaultReconcileInterval,
			ReconcileGrace: seckill.DefaultReconcileGrace,
			MaxStaleness:   cacheaside.DefaultMaxStaleness,
		},
		Admin: Admin{Addr: admin.DefaultAddr, AuditDatabase: canal.DefaultHADatabase, MaxBodyBytes: admin.DefaultMaxBodyBytes,
			AdminActionsPerMinute: admin.DefaultAdminActionsPerMinute, ReplayServerID: admin.DefaultReplayServerID,
			ResyncRowsPerSecond: admin.DefaultResyncRowsPerSecond, ResyncChunkRows: admin.DefaultResyncChunkRows,
			TaskLease: admin.DefaultTaskLease, ApprovalTTL: admin.DefaultApprovalTTL},
		Checker: Checker{SampleRate: consistency.DefaultSampleRate, Windows: consistency.DefaultWindows(),
			MaxPending: consistency.DefaultMaxPending, Recent: consistency.DefaultRecent},
	}
}

// derivedDefaults describe, for the reference, the defaults that depend on
// other keys; derive sets them.
var derivedDefaults = map[string]string{
	"nsq.embedded_tcp":       fmt.Sprintf("`%q` when nsqd_tcp is empty", nsqembed.DefaultTCPAddress),
	"nsq.embedded_http":      fmt.Sprintf("`%q` when nsqd_tcp is empty", nsqembed.DefaultHTTPAddress),
	"nsq.embedded_data_path": fmt.Sprintf("`%q` when nsqd_tcp is empty", nsqembed.DefaultDataPath),
	"seckill.topic":          "`\"<nsq.topic_prefix>.seckill\"`",
}

// derive fills, after decoding, the defaults that depend on other keys.
func (c *Config) derive() {
	if len(c.NSQ.NSQDTCP) == 0 {
		n := &c.NSQ
		n.EmbeddedTCP = cmp.Or(n.EmbeddedTCP, nsqembed.DefaultTCPAddress)
		n.EmbeddedHTTP = cmp.Or(n.EmbeddedHTTP, nsqembed.DefaultHTTPAddress)
		n.EmbeddedDataPath = cmp.Or(n.EmbeddedDataPath, nsqembed.DefaultDataPath)
	}
	if c.Seckill.Topic == "" {
		c.Seckill.Topic = c.NSQ.TopicPrefix + ".seckill"
	}
}

var (
	nameRe  = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,32}$`)
	tableRe = regexp.MustCompile(`^[^.\s]+\.[^.\s]+$`)
	identRe = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)
	topicRe = regexp.MustCompile(`^[.a-zA-Z0-9_-]{1,32}$`)
	// columnRe matches the column names rules may use (as in templates).
	columnRe = regexp.MustCompile(`^[a-zA-Z_$][a-zA-Z0-9_$]{0,63}$`)
)

// Validate checks the whole configuration and reports every problem, each
// naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(key, addr string) {
		if addr == "" {
			bad(key, "missing address")
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "%q is not host:port", addr)
		}
	}
	if c.canalConfigured() {
		checkAddr("mysql.addr", c.MySQL.Addr)
		if c.MySQL.Flavor != "mariadb" && c.MySQL.Flavor != "mysql" {
			bad("mysql.flavor", "%q is neither \"mariadb\" nor \"mysql\"", c.MySQL.Flavor)
		}
		if c.MySQL.ServerID == 0 {
			bad("mysql.server_id", "missing; give every binlog reader its own non-zero id")
		}
		if c.Canal.PositionFile == "" && !c.Canal.HA {
			bad("canal.position_file", "missing (or set canal.ha = true to keep the position in MySQL)")
		}
		if c.Canal.HA && (c.Canal.LeaseTTL < 300*time.Millisecond || c.Canal.LeaseTTL > time.Minute) {
			bad("canal.lease_ttl", "must be between 300ms and 1m")
		}
		if c.Canal.HA && (!identRe.MatchString(c.Canal.HAName) || !identRe.MatchString(c.Canal.HADatabase)) {
			bad("canal.ha_name", "ha_name %q and ha_database %q must be 1-64 of [A-Za-z0-9_]", c.Canal.HAName, c.Canal.HADatabase)
		}
		for i, expr := range append(append([]string(nil), c.Canal.IncludeTables...), c.Canal.ExcludeTables...) {
			key := fmt.Sprintf("canal.include_tables[%d]", i)
			if i >= len(c.Canal.IncludeTables) {
				key = fmt.Sprintf("canal.exclude_tables[%d]", i-len(c.Canal.IncludeTables))
			}
			if _, err := regexp.Compile(expr); err != nil {
				bad(key, "%v", err)
			}
		}
		if c.Canal.SaveInterval < 0 {
			bad("canal.save_interval", "negative")
		}
		if c.Canal.MaxBatchKeys < 1 {
			bad("canal.max_batch_keys", "must be at least 1")
		}
		if c.Canal.MaxBatchBytes < 1024 {
			bad("canal.max_batch_bytes", "must be at least 1024")
		}
		if c.Canal.CoalesceWindow < 0 || c.Canal.CoalesceWindow > time.Second {
			bad("canal.coalesce_window", "must be between 0 and 1s")
		}
		if c.Canal.HeartbeatInterval < 10*time.Millisecond || c.Canal.HeartbeatInterval > 10*time.Second {
			bad("canal.heartbeat_interval", "must be between 10ms and 10s")
		}
	}
	if len(c.NSQ.NSQDTCP) == 0 {
		checkAddr("nsq.embedded_tcp", c.NSQ.EmbeddedTCP)
		checkAddr("nsq.embedded_http", c.NSQ.EmbeddedHTTP)
	} else {
		for i, a := range c.NSQ.NSQDTCP {
			checkAddr(fmt.Sprintf("nsq.nsqd_tcp[%d]", i), a)
		}
		if len(c.NSQ.NSQDHTTP) != len(c.NSQ.NSQDTCP) {
			bad("nsq.nsqd_http", "needs one HTTP address per nsqd_tcp address (%d), has %d", len(c.NSQ.NSQDTCP), len(c.NSQ.NSQDHTTP))
		}
		for i, a := range c.NSQ.NSQDHTTP {
			checkAddr(fmt.Sprintf("nsq.nsqd_http[%d]", i), a)
		}
	}
	for i, a := range c.NSQ.LookupdHTTP {
		checkAddr(fmt.Sprintf("nsq.nsqlookupd_http[%d]", i), a)
	}
	if len(c.NSQ.LookupdHTTP) > 0 && len(c.NSQ.NSQDTCP) == 0 {
		bad("nsq.nsqlookupd_http", "needs nsqd_tcp: the embedded nsqd does not register with nsqlookupd")
	}
	if !topicRe.MatchString(c.NSQ.TopicPrefix) {
		bad("nsq.topic_prefix", "%q must be 1-32 of [.a-zA-Z0-9_-]", c.NSQ.TopicPrefix)
	}
	checkAddr("http.addr", c.HTTP.Addr)
	if c.Purger.MaxInFlight < 1 {
		bad("purger.max_in_flight", "must be at least 1")
	}
	if c.Purger.Timeout <= 0 {
		bad("purger.timeout", "must be positive")
	}
	if c.Purger.PipelineKeys < 1 {
		bad("purger.pipeline_keys", "must be at least 1")
	}
	if c.Purger.PatternKeysPerSecond < 1 {
		bad("purger.pattern_keys_per_second", "must be at least 1")
	}
	if c.Purger.CheckInterval <= 0 {
		bad("purger.check_interval", "must be positive")
	}
	if c.Purger.GapTimeout <= c.Purger.CheckInterval {
		bad("purger.gap_timeout", "must be longer than check_interval (%v)", c.Purger.CheckInterval)
	}
	switch {
	case c.Purger.Rejoin != purge.RejoinFlush && c.Purger.Rejoin != purge.RejoinReplay:
		bad("purger.rejoin", "%q: want %q or %q", c.Purger.Rejoin, purge.RejoinFlush, purge.RejoinReplay)
	case c.Purger.Rejoin == purge.RejoinReplay && c.Purger.RejoinLogDir == "":
		bad("purger.rejoin_log_dir", "required with rejoin = %q", purge.RejoinReplay)
	}
	if c.Purger.RejoinLogMaxBytes < 1<<10 {
		bad("purger.rejoin_log_max_bytes", "must be at least 1024")
	}
	if c.Purger.RejoinLogMaxAge <= 0 {
		bad("purger.rejoin_log_max_age", "must be positive")
	}
	if c.Purger.SyncTombstoneTTL < time.Second {
		bad("purger.sync_tombstone_ttl", "must be at least 1s")
	}
	// checkGroup validates one [[redis_group]] or [[http_group]]: a unique
	// name and a non-empty list of distinct addresses.
	checkGroup := func(key, name string, names map[string]bool, memberKey string, members []string) {
		if !nameRe.MatchString(name) {
			bad(key+".name", "%q must be 1-32 of [a-zA-Z0-9_-]", name)
		}
		if names[name] {
			bad(key+".name", "%q is used twice", name)
		}
		names[name] = true
		if len(members) == 0 {
			bad(key+"."+memberKey, "missing address")
		}
		seen := map[string]bool{}
		for j, a := range members {
			mk := fmt.Sprintf("%s.%s[%d]", key, memberKey, j)
			checkAddr(mk, a)
			if seen[a] {
				bad(mk, "%q is listed twice", a)
			}
			seen[a] = true
		}
	}
	groups, httpGroups := map[string]bool{}, map[string]bool{}
	for i, g := range c.RedisGroups {
		checkGroup(fmt.Sprintf("redis_group[%d]", i), g.Name, groups, "replicas", g.Replicas)
	}
	for i, g := range c.HTTPGroups {
		checkGroup(fmt.Sprintf("http_group[%d]", i), g.Name, httpGroups, "instances", g.Instances)
	}
	c.validateCDN(bad, checkAddr)
	c.validateSeckill(bad, checkAddr)
	c.validateAdmin(bad, checkAddr)
	c.validateChecker(bad)
	for i, r := range c.Rules {
		key := fmt.Sprintf("rule[%d]", i)
		if !tableRe.MatchString(r.Table) {
			bad(key+".table", "%q is not db.table", r.Table)
		}
		if len(r.Keys)+len(r.URLs)+len(r.Tags)+len(r.Sync) == 0 {
			bad(key, "no target; a rule needs at least one of keys, urls, tags, sync")
		}
		if len(r.Sync) > 0 && len(c.RedisGroups) == 0 {
			bad(key+".sync", "needs at least one [[redis_group]] to write them in")
		}
		for j, st := range r.Sync {
			skey := fmt.Sprintf("%s.sync[%d]", key, j)
			if st.Key == "" {
				bad(skey+".key", "missing; name the key template, e.g. \"item:json:{id}\"")
			}
			if st.Format != "" && !slices.Contains(invalidate.SyncFormats, st.Format) {
				bad(skey+".format", "unknown format %q (%s)", st.Format, strings.Join(invalidate.SyncFormats, ", "))
			}
			if st.Format == invalidate.SyncFormatText && st.Value == "" {
				bad(skey+".value", "missing; format text writes this template")
			}
			if st.Format != invalidate.SyncFormatText && st.Value != "" {
				bad(skey+".value", "is the text format's template; set format = \"text\"")
			}
			if st.TTL < 0 {
				bad(skey+".ttl", "%v is negative", st.TTL)
			}
			for k, col := range st.Columns {
				if !columnRe.MatchString(col) {
					bad(fmt.Sprintf("%s.columns[%d]", skey, k), "%q is not a column name", col)
				}
			}
		}
		if len(r.Keys) > 0 && len(c.RedisGroups) == 0 {
			bad(key+".keys", "needs at least one [[redis_group]] to purge them in")
		}
		if len(r.URLs) > 0 && len(c.HTTPGroups) == 0 {
			bad(key+".urls", "needs at least one [[http_group]] to purge them in")
		}
		if len(r.Tags) > 0 && len(c.HTTPGroups) == 0 {
			bad(key+".tags", "needs at least one [[http_group]] to purge them in")
		}
		if r.RouteBy == "" {
			bad(key+".route_by", "missing; name the column whose value picks the group")
		}
		for j, a := range r.Actions {
			if !slices.Contains(RuleActions, a) {
				bad(fmt.Sprintf("%s.actions[%d]", key, j), "unknown action %q (%s)", a, strings.Join(RuleActions, ", "))
			}
		}
		if len(r.Changed) > 0 && len(r.IgnoreChanges) > 0 {
			bad(key, "changed and ignore_changes are mutually exclusive")
		}
		for _, cond := range []struct {
			name string
			cols []string
		}{{"changed", r.Changed}, {"ignore_changes", r.IgnoreChanges}} {
			for j, col := range cond.cols {
				if !columnRe.MatchString(col) {
					bad(fmt.Sprintf("%s.%s[%d]", key, cond.name, j), "%q is not a column name", col)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// validateCDN checks [console], [dispatcher] and [[cdn_node]].
func (c *Config) validateCDN(bad func(key, format string, args ...any), checkAddr func(key, addr string)) {
	if c.ConsoleConfigured() {
		con := c.Console
		checkAddr("console.addr", con.Addr)
		if _, err := LoadKey("console", con.Key, con.KeyFile); err != nil {
			errKey, msg, _ := strings.Cut(err.Error(), ": ")
			bad(errKey, "%s", msg)
		}
		if (con.TLSCert == "") != (con.TLSKey == "") {
			bad("console.tls_cert", "tls_cert and tls_key go together")
		}
		if con.MaxBodyBytes < 1024 {
			bad("console.max_body_bytes", "must be at least 1024")
		}
		if con.MaxSkew < time.Second || con.MaxSkew > 10*time.Minute {
			bad("console.max_skew", "must be between 1s and 10m")
		}
		if con.Concurrency < 1 {
			bad("console.concurrency", "must be at least 1")
		}
		if con.HostTimeout <= 0 {
			bad("console.host_timeout", "must be positive")
		}
		if len(con.Machines) == 0 {
			bad("console.machines", "missing; list the node's cache machines (host:port)")
		}
		seen := map[string]bool{}
		for i, m := range con.Machines {
			checkAddr(fmt.Sprintf("console.machines[%d]", i), m)
			if seen[m] {
				bad(fmt.Sprintf("console.machines[%d]", i), "%q is listed twice", m)
			}
			seen[m] = true
		}
	}
	if c.Dispatcher.Timeout <= 0 {
		bad("dispatcher.timeout", "must be positive")
	}
	names := map[string]bool{}
	for i, n := range c.CDNNodes {
		key := fmt.Sprintf("cdn_node[%d]", i)
		if !nameRe.MatchString(n.Name) {
			bad(key+".name", "%q must be 1-32 of [a-zA-Z0-9_-]", n.Name)
		}
		if names[n.Name] {
			bad(key+".name", "%q is used twice", n.Name)
		}
		names[n.Name] = true
		u, err := url.Parse(n.ConsoleURL)
		switch {
		case n.ConsoleURL == "":
			bad(key+".console_url", "missing; e.g. \"https://cdn1.example.com:16100\"")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			bad(key+".console_url", "%q is not an http(s) URL", n.ConsoleURL)
		case n.CAFile != "" && u.Scheme != "https":
			bad(key+".ca_file", "set, but console_url %q is not https", n.ConsoleURL)
		}
		if _, err := LoadKey(key, n.Key, n.KeyFile); err != nil {
			errKey, msg, _ := strings.Cut(err.Error(), ": ")
			bad(errKey, "%s", msg)
		}
	}
}

// validateSeckill checks [seckill].
func (c *Config) validateSeckill(bad func(key, format string, args ...any), checkAddr func(key, addr string)) {
	if !c.SeckillConfigured() {
		return
	}
	sk := c.Seckill
	checkAddr("seckill.addr", sk.Addr)
	checkAddr("seckill.redis", sk.Redis)
	for i, g := range c.RedisGroups {
		if slices.Contains(g.Replicas, sk.Redis) {
			bad("seckill.redis", "%q is a replica of redis_group[%d] (%s): the binlog path would purge the reservation counters; give them a Redis of their own", sk.Redis, i, g.Name)
		}
	}
	if !identRe.MatchString(sk.Database) {
		bad("seckill.database", "%q is not a database name", sk.Database)
	}
	if !tableRe.MatchString(sk.ItemTable) {
		bad("seckill.item_table", "%q: want db.table", sk.ItemTable)
	}
	if !topicRe.MatchString(sk.Topic) {
		bad("seckill.topic", "%q must be 1-32 of [.a-zA-Z0-9_-]", sk.Topic)
	}
	if _, err := LoadKey("seckill.token", sk.TokenKey, sk.TokenKeyFile); err != nil {
		errKey, msg, _ := strings.Cut(err.Error(), ": ")
		bad(strings.Replace(errKey, "seckill.token.key", "seckill.token_key", 1), "%s", msg)
	}
	if sk.Writers < 1 || sk.Writers > 64 {
		bad("seckill.writers", "must be 1 to 64")
	}
	if sk.BatchMax < 1 || sk.BatchMax > 5000 {
		bad("seckill.batch_max", "must be 1 to 5000")
	}
	for _, d := range []struct {
		key string
		d   time.Duration
	}{{"seckill.order_ttl", sk.OrderTTL}, {"seckill.expire_interval", sk.ExpireInterval},
		{"seckill.reconcile_interval", sk.ReconcileInterval}, {"seckill.reconcile_grace", sk.ReconcileGrace}} {
		if d.d <= 0 {
			bad(d.key, "must be positive")
		}
	}
	if sk.MaxStaleness == 0 {
		bad("seckill.max_staleness", "must not be 0: a bound such as \"1s\", or negative to read replicas without their watermarks")
	}
	if sk.ReconcileGrace > 0 {
		if err := seckill.CheckReconcileGrace(sk.ReconcileGrace, seckill.DefaultMsgTimeout); err != nil {
			bad("seckill.reconcile_grace", "%v", err)
		}
	}
	for _, r := range []struct {
		key string
		v   float64
	}{{"seckill.rate_ip", sk.RateIP}, {"seckill.burst_ip", float64(sk.BurstIP)},
		{"seckill.rate_user", sk.RateUser}, {"seckill.burst_user", float64(sk.BurstUser)}} {
		if r.v < 0 {
			bad(r.key, "must not be negative (0: no limit)")
		}
	}
	if len(c.NSQ.NSQDTCP) == 0 && c.NSQ.EmbeddedTCP == "" {
		bad("nsq.nsqd_tcp", "[seckill] queues reservations in NSQ: set nsqd_tcp")
	}
}

// validateChecker checks [checker].
func (c *Config) validateChecker(bad func(key, format string, args ...any)) {
	if !c.CheckerConfigured() {
		return
	}
	k := c.Checker
	if len(c.RedisGroups) == 0 {
		bad("checker", "needs a [[redis_group]] to check")
	}
	if !(k.SampleRate > 0 && k.SampleRate <= 1) {
		bad("checker.sample_rate", "%v: want above 0 and at most 1", k.SampleRate)
	}
	if len(k.Windows) == 0 {
		bad("checker.windows", "empty: want at least one window")
	}
	for i, w := range k.Windows {
		if w <= 0 {
			bad(fmt.Sprintf("checker.windows[%d]", i), "%v: want a positive duration", w)
		}
	}
	if k.MaxPending < len(k.Windows) {
		bad("checker.max_pending", "%d: want at least one check per window (%d)", k.MaxPending, len(k.Windows))
	}
	if k.Recent < 1 {
		bad("checker.recent", "%d: want at least 1", k.Recent)
	}
}

// validateAdmin checks [admin] and its [[admin.user]]s.
func (c *Config) validateAdmin(bad func(key, format string, args ...any), checkAddr func(key, addr string)) {
	if !c.AdminConfigured() {
		return
	}
	a := c.Admin
	checkAddr("admin.addr", a.Addr)
	checkAddr("mysql.addr", c.MySQL.Addr)
	if !identRe.MatchString(a.AuditDatabase) {
		bad("admin.audit_database", "%q must be 1-64 of [A-Za-z0-9_]", a.AuditDatabase)
	}
	if a.MaxBodyBytes < 1024 {
		bad("admin.max_body_bytes", "must be at least 1024")
	}
	if a.AdminActionsPerMinute < 1 {
		bad("admin.admin_actions_per_minute", "must be at least 1")
	}
	switch {
	case a.ReplayServerID == 0:
		bad("admin.replay_server_id", "must not be 0")
	case a.ReplayServerID == c.MySQL.ServerID:
		bad("admin.replay_server_id", "%d is mysql.server_id, the canal's: two binlog readers with one id kick each other off", a.ReplayServerID)
	}
	if a.ResyncRowsPerSecond < 1 || a.ResyncRowsPerSecond > admin.MaxResyncRowsPerSecond {
		bad("admin.resync_rows_per_second", "must be 1 to %d", admin.MaxResyncRowsPerSecond)
	}
	if a.ResyncChunkRows < 1 || a.ResyncChunkRows > admin.MaxResyncChunkRows {
		bad("admin.resync_chunk_rows", "must be 1 to %d", admin.MaxResyncChunkRows)
	}
	if a.TaskLease < admin.MinTaskLease {
		bad("admin.task_lease", "must be at least %v", admin.MinTaskLease)
	}
	if (a.TLSCertFile == "") != (a.TLSKeyFile == "") {
		bad("admin.tls_cert_file", "tls_cert_file and tls_key_file go together")
	}
	for _, f := range []struct{ key, path string }{{"admin.tls_cert_file", a.TLSCertFile}, {"admin.tls_key_file", a.TLSKeyFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			bad(f.key, "%v", err)
		}
	}
	if a.ApprovalTTL < time.Minute {
		bad("admin.approval_ttl", "must be at least 1m")
	}
	if len(c.RedisGroups)+len(c.HTTPGroups) == 0 {
		bad("admin", "needs a [[redis_group]] or an [[http_group]] to purge in")
	}
	if len(a.Users) == 0 {
		bad("admin.user", "missing; add an [[admin.user]] with name, role and token_sha256")
	}
	names := map[string]bool{}
	for i, u := range a.Users {
		key := fmt.Sprintf("admin.user[%d]", i)
		if !adminUserRe.MatchString(u.Name) {
			bad(key+".name", "%q must be 1-64 of [a-zA-Z0-9_.@-]", u.Name)
		}
		if names[u.Name] {
			bad(key+".name", "%q is used twice", u.Name)
		}
		names[u.Name] = true
		if !slices.Contains(admin.Roles, u.Role) {
			bad(key+".role", "unknown role %q (%s)", u.Role, strings.Join(admin.Roles, ", "))
		}
		if h, err := hex.DecodeString(u.TokenSHA256); err != nil || len(h) != sha256.Size {
			bad(key+".token_sha256", "must be 64 hex digits, the SHA-256 of the token (flashsync admin hash-token prints it)")
		}
	}
}

var adminUserRe = regexp.MustCompile(`^[a-zA-Z0-9_.@-]{1,64}$`)

// canalConfigured tells whether the file asks for a canal. [mysql] alone
// does; next to [seckill] (the flash-sale database's server) or [admin]
// (the audit's) it does not.
func (c *Config) canalConfigured() bool {
	return len(c.Rules) > 0 || c.Canal.PositionFile != "" || (c.MySQL.Addr != "" && !c.SeckillConfigured() && !c.AdminConfigured())
}

// Load reads, strictly decodes, defaults and validates a TOML file. Errors
// start with the file name and, where it is known, the line.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse is Load without the file.
func Parse(data []byte) (*Config, error) {
	cfg := Default()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("line %d: %s", perr.Position.Line, perr.Message)
		}
		return nil, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		var errs []error
		for _, k := range und {
			errs = append(errs, fmt.Errorf("line %d: unknown key %q", keyLine(data, k), k.String()))
		}
		return nil, errors.Join(errs...)
	}
	cfg.adminSection = md.IsDefined("admin")
	cfg.checkerSection = md.IsDefined("checker")
	cfg.derive()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// keyLine finds the line where key is defined. The TOML decoder does not
// expose key positions, so it follows table headers the way a reader would:
// the key's last part, after the header of its table.
func keyLine(data []byte, key toml.Key) int {
	leaf := key[len(key)-1]
	parent := strings.Join(key[:len(key)-1], ".")
	inParent := parent == ""
	for i, line := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			name := strings.Trim(t, "[] \t")
			if j := strings.Index(name, "]"); j >= 0 {
				name = strings.TrimSpace(name[:j])
			}
			if name == strings.Join(key, ".") {
				return i + 1
			}
			inParent = name == parent
			continue
		}
		if !inParent {
			continue
		}
		k, _, ok := strings.Cut(t, "=")
		if ok && strings.Trim(strings.TrimSpace(k), `"'`) == leaf {
			return i + 1
		}
	}
	return 0
}
