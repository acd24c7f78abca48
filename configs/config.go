// Package configs holds flashsync's TOML configuration: its types, defaults,
// strict loading and validation, and the shipped example files.
package configs

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
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
	Rules       []Rule       `toml:"rule"`
}

// MySQL is the binlog source.
type MySQL struct {
	Addr     string `toml:"addr"`
	User     string `toml:"user"`
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
}

// NSQ says where invalidations travel.
type NSQ struct {
	// NSQDTCP and NSQDHTTP list the nsqd daemons (same order). Empty: run one
	// nsqd embedded in this process.
	NSQDTCP  []string `toml:"nsqd_tcp"`
	NSQDHTTP []string `toml:"nsqd_http"`
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
	// Timeout bounds one Redis round trip.
	Timeout time.Duration `toml:"timeout"`
	// PipelineKeys is the most keys sent in one Redis pipeline.
	PipelineKeys int `toml:"pipeline_keys"`
}

// RedisGroup is a set of Redis instances that all hold the same hot data;
// every replica gets every purge of the group.
type RedisGroup struct {
	Name     string   `toml:"name"`
	Replicas []string `toml:"replicas"`
	Password string   `toml:"password"`
	DB       int      `toml:"db"`
}

// Rule maps the rows of one table to cache keys.
type Rule struct {
	// Table is "db.table".
	Table string `toml:"table"`
	// Keys are templates over the row's columns, e.g. "item:{id}".
	Keys []string `toml:"keys"`
	// RouteBy is the column whose value picks the Redis group.
	RouteBy string `toml:"route_by"`
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.MySQL.Flavor == "" {
		c.MySQL.Flavor = "mariadb"
	}
	if c.MySQL.User == "" {
		c.MySQL.User = "root"
	}
	if c.Canal.SaveInterval == 0 {
		c.Canal.SaveInterval = time.Second
	}
	if c.Canal.MaxBatchKeys == 0 {
		c.Canal.MaxBatchKeys = 10000
	}
	if c.NSQ.TopicPrefix == "" {
		c.NSQ.TopicPrefix = "flashsync"
	}
	if len(c.NSQ.NSQDTCP) == 0 {
		if c.NSQ.EmbeddedTCP == "" {
			c.NSQ.EmbeddedTCP = "127.0.0.1:14160"
		}
		if c.NSQ.EmbeddedHTTP == "" {
			c.NSQ.EmbeddedHTTP = "127.0.0.1:14161"
		}
		if c.NSQ.EmbeddedDataPath == "" {
			c.NSQ.EmbeddedDataPath = ".stack/flashsync/nsqd"
		}
	}
	if c.NSQ.PublishTimeout == 0 {
		c.NSQ.PublishTimeout = 5 * time.Second
	}
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = "127.0.0.1:18080"
	}
	if c.Purger.MaxAttempts == 0 {
		c.Purger.MaxAttempts = 10
	}
	if c.Purger.MaxInFlight == 0 {
		c.Purger.MaxInFlight = 64
	}
	if c.Purger.Timeout == 0 {
		c.Purger.Timeout = 2 * time.Second
	}
	if c.Purger.PipelineKeys == 0 {
		c.Purger.PipelineKeys = 512
	}
}

var (
	nameRe  = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,32}$`)
	tableRe = regexp.MustCompile(`^[^.\s]+\.[^.\s]+$`)
	topicRe = regexp.MustCompile(`^[.a-zA-Z0-9_-]{1,32}$`)
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
		if c.Canal.PositionFile == "" {
			bad("canal.position_file", "missing")
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
	groups := map[string]bool{}
	for i, g := range c.RedisGroups {
		key := fmt.Sprintf("redis_group[%d]", i)
		if !nameRe.MatchString(g.Name) {
			bad(key+".name", "%q must be 1-32 of [a-zA-Z0-9_-]", g.Name)
		}
		if groups[g.Name] {
			bad(key+".name", "%q is used twice", g.Name)
		}
		groups[g.Name] = true
		if len(g.Replicas) == 0 {
			bad(key+".replicas", "missing address")
		}
		seen := map[string]bool{}
		for j, r := range g.Replicas {
			checkAddr(fmt.Sprintf("%s.replicas[%d]", key, j), r)
			if seen[r] {
				bad(fmt.Sprintf("%s.replicas[%d]", key, j), "%q is listed twice", r)
			}
			seen[r] = true
		}
	}
	for i, r := range c.Rules {
		key := fmt.Sprintf("rule[%d]", i)
		if !tableRe.MatchString(r.Table) {
			bad(key+".table", "%q is not db.table", r.Table)
		}
		if len(r.Keys) == 0 {
			bad(key+".keys", "missing; a rule needs at least one key template")
		}
		if r.RouteBy == "" {
			bad(key+".route_by", "missing; name the column whose value picks the Redis group")
		}
		if len(c.RedisGroups) == 0 {
			bad(key, "rules need at least one [[redis_group]]")
		}
	}
	return errors.Join(errs...)
}

func (c *Config) canalConfigured() bool {
	return c.MySQL.Addr != "" || len(c.Rules) > 0 || c.Canal.PositionFile != ""
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
	var cfg Config
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
	cfg.Defaults()
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
