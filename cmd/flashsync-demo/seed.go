package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/invalidate"
)

// seedCache fills every replica with the keys the rules derive from up to
// limit rows of each ruled table, so a demo can watch them being purged. The
// values are placeholders: flashsync never writes cache values itself. The
// flash sale's tables are left out: the seckill API fills their keys with
// JSON it decodes, and would read a placeholder as a broken value.
func seedCache(ctx context.Context, cfg *configs.Config, limit int, log *slog.Logger) error {
	rules, err := cfg.BuildRules()
	if err != nil {
		return err
	}
	conn, err := client.ConnectWithContext(ctx, cfg.MySQL.Addr, cfg.MySQL.User, cfg.MySQL.Password, "", 10*time.Second)
	if err != nil {
		return fmt.Errorf("mysql %s: %w", cfg.MySQL.Addr, err)
	}
	defer conn.Close()

	batch := rules.NewBatch()
	for _, table := range rules.Tables() {
		db, name, _ := strings.Cut(table, ".")
		if cfg.SeckillConfigured() && db == cfg.Seckill.Database {
			log.Info("not seeding the keys of a flash-sale table: the seckill API fills them", "table", table)
			continue
		}
		res, err := conn.Execute(fmt.Sprintf("SELECT * FROM `%s`.`%s` LIMIT %d", db, name, limit))
		if err != nil {
			return fmt.Errorf("read %s: %w", table, err)
		}
		cols := make([]string, len(res.Fields))
		for i, f := range res.Fields {
			cols[i] = string(f.Name)
		}
		bound, err := rules.Bind(table, cols)
		if err != nil {
			return err
		}
		for _, row := range res.Values {
			image := make([]any, len(row))
			for i, v := range row {
				image[i] = v.Value()
			}
			// At a version, so that sync targets ([[rule.sync]]) become
			// sync writes, which the seed leaves out: sync mode writes
			// those keys with the row itself on its first change, and a
			// placeholder there would be read as the row.
			bound.ApplyRowAt(invalidate.SyncVersion{}, invalidate.Insert, nil, image, batch)
		}
		res.Close()
	}
	for g, group := range cfg.RedisGroups {
		keys := batch.Keys(g)
		for _, addr := range group.Replicas {
			rc := redis.NewClient(&redis.Options{Addr: addr, Password: group.Password, DB: group.DB})
			pipe := rc.Pipeline()
			for _, k := range keys {
				pipe.Set(ctx, k, "seeded by flashsync-demo seed-cache at "+time.Now().UTC().Format(time.RFC3339), 0)
			}
			_, err := pipe.Exec(ctx)
			rc.Close()
			if err != nil {
				return fmt.Errorf("redis %s: %w", addr, err)
			}
		}
		log.Info("seeded cache keys", "group", group.Name, "replicas", group.Replicas, "keys", len(keys))
	}
	return nil
}
