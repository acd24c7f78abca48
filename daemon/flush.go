package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/configs"
)

// FlushAll empties every configured Redis group (FLUSHDB on every replica's
// database): the recovery when changes were lost from the binlog.
func FlushAll(ctx context.Context, cfg *configs.Config, log *slog.Logger) error {
	for _, g := range cfg.RedisGroups {
		for _, addr := range g.Replicas {
			rc := redis.NewClient(&redis.Options{Addr: addr, Password: g.Password, DB: g.DB})
			err := rc.FlushDB(ctx).Err()
			rc.Close()
			if err != nil {
				return fmt.Errorf("flush redis %s (group %s): %w", addr, g.Name, err)
			}
			log.Warn("flushed redis replica", "group", g.Name, "replica", addr, "db", g.DB)
		}
	}
	return nil
}
