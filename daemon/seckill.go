package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"

	// database/sql driver "mysql" for the flash-sale database.
	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/seckill"
)

// RoleSeckill is the flash-sale service: buy API, order writers, expirer
// and reconciler.
const RoleSeckill = "seckill"

// mysqlDSN is the go-sql-driver DSN of [mysql] on database: UTC times on
// both sides, parameters interpolated client-side.
func mysqlDSN(m configs.MySQL, database string) string {
	cred := url.PathEscape(m.User)
	if m.Password != "" {
		cred += ":" + url.PathEscape(m.Password)
	}
	return cred + "@tcp(" + m.Addr + ")/" + database + "?parseTime=true&loc=UTC&time_zone=%27%2B00%3A00%27&interpolateParams=true"
}

// buildSeckill builds the seckill role. sql.Open and the Redis clients
// connect lazily: nothing is dialled before Run.
func (n *Daemon) buildSeckill() error {
	cfg := n.cfg
	if !cfg.SeckillConfigured() {
		return errors.New("seckill role: config has no [seckill]")
	}
	sk := cfg.Seckill
	key, err := configs.LoadKey("seckill.token", sk.TokenKey, sk.TokenKeyFile)
	if err != nil {
		return err
	}
	db, err := sql.Open("mysql", mysqlDSN(cfg.MySQL, sk.Database))
	if err != nil {
		return fmt.Errorf("seckill: %w", err)
	}
	db.SetMaxOpenConns(4 * sk.Writers)
	db.SetMaxIdleConns(4 * sk.Writers)
	n.seckillDB = db
	n.own("seckill database", db.Close)
	reservations := redis.NewClient(&redis.Options{Addr: sk.Redis, Password: sk.RedisPassword, PoolSize: 64})
	n.own("seckill redis", reservations.Close)
	var cache *cacheaside.Reader
	if len(cfg.RedisGroups) > 0 {
		var groups []cacheaside.Group
		for _, g := range cfg.RedisGroups {
			cg := cacheaside.Group{Name: g.Name}
			for _, addr := range g.Replicas {
				// ContextTimeoutEnabled: the reader bounds each command to
				// a replica by its context, so that a hung replica costs a
				// read cacheaside's ReplicaTimeout, not the 3 s ReadTimeout.
				c := redis.NewClient(&redis.Options{Addr: addr, Password: g.Password, DB: g.DB, ContextTimeoutEnabled: true})
				n.own("seckill cache client "+addr, c.Close)
				cg.Replicas = append(cg.Replicas, c)
			}
			groups = append(groups, cg)
		}
		if cache, err = cacheaside.New(cacheaside.Options{Groups: groups, MaxStaleness: sk.MaxStaleness, Registerer: n.registry}); err != nil {
			return err
		}
	}
	n.seckill, err = seckill.New(seckill.Options{
		Addr: sk.Addr, DB: db, Reservations: reservations, Cache: cache, ItemTable: sk.ItemTable,
		NSQDTCP: n.nsqdTCP, NSQDHTTP: n.nsqdHTTP, LookupdHTTP: cfg.NSQ.LookupdHTTP, Topic: sk.Topic, TokenKey: key,
		RateIP: sk.RateIP, BurstIP: sk.BurstIP, RateUser: sk.RateUser, BurstUser: sk.BurstUser,
		Writers: sk.Writers, BatchMax: sk.BatchMax, OrderTTL: sk.OrderTTL,
		ExpireInterval: sk.ExpireInterval, ReconcileInterval: sk.ReconcileInterval, ReconcileGrace: sk.ReconcileGrace,
		API: true, Writer: true, Expirer: true, Reconciler: true,
		Logger: n.log.With("role", RoleSeckill), Registerer: n.registry,
	})
	if err != nil {
		return err
	}
	n.own(RoleSeckill, n.seckill.Close)
	return nil
}

// MigrateSeckill creates the flash-sale database and tables of cfg if they
// are missing.
func MigrateSeckill(ctx context.Context, cfg *configs.Config) error {
	admin, err := sql.Open("mysql", mysqlDSN(cfg.MySQL, ""))
	if err != nil {
		return err
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS `"+cfg.Seckill.Database+"`"); err != nil {
		return fmt.Errorf("create database %s: %w", cfg.Seckill.Database, err)
	}
	db, err := sql.Open("mysql", mysqlDSN(cfg.MySQL, cfg.Seckill.Database))
	if err != nil {
		return err
	}
	defer db.Close()
	return seckill.Migrate(ctx, db)
}

// runSeckill migrates, then runs the service. A user without the right to
// create may still run on tables made by someone who has: then the failed
// migration is only a warning.
func (n *Daemon) runSeckill(ctx context.Context) error {
	if err := MigrateSeckill(ctx, n.cfg); err != nil {
		var one int
		if perr := n.seckillDB.QueryRowContext(ctx, "SELECT 1 FROM activity_stock JOIN activity ON activity.id = activity_stock.activity_id LIMIT 1").Scan(&one); perr != nil && !errors.Is(perr, sql.ErrNoRows) {
			return fmt.Errorf("seckill: %w (and the tables are not usable: %v)", err, perr)
		}
		n.log.Warn("seckill: migration failed, running on the existing tables", "role", RoleSeckill, "err", err)
	}
	return n.seckill.Run(ctx)
}
