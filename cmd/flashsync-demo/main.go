// Command flashsync-demo holds the local stack's demo helpers, kept out of
// the production binary: `backend` serves the item pages behind Varnish
// (package demoweb), `seed-cache` writes the cache keys the rules derive
// from existing rows, so a demo can watch them being purged.
package main

import (
	"context"
	"flag"
	"os"

	"github.com/flashsync/flashsync/cmd/internal/cli"
	"github.com/flashsync/flashsync/demoweb"
)

func main() {
	os.Exit(program.Run(os.Args[1:], os.Stdout, os.Stderr))
}

var program = &cli.Program{
	Name:     "flashsync-demo",
	Doc:      "flashsync-demo runs the demo parts of the local stack (scripts/stack.sh).",
	Commands: []*cli.Command{backendCommand, seedCacheCommand},
}

var backendCommand = &cli.Command{
	Name:    "backend",
	Summary: "serve the demo item pages from MySQL, tagged for xkey purges, behind Varnish",
	Flags: func(fs *flag.FlagSet) cli.Action {
		cf := cli.AddConfigFlags(fs)
		addr := fs.String("addr", "127.0.0.1:16090", "listen address")
		table := fs.String("table", "shop.item", "db.table of the items (id, name, price, stock)")
		return func(ctx context.Context, env cli.Env, _ []string) error {
			cfg, log, err := cf.Load(env.Stderr)
			if err != nil {
				return err
			}
			srv, err := demoweb.New(demoweb.Options{
				MySQLAddr: cfg.MySQL.Addr, MySQLUser: cfg.MySQL.User, MySQLPassword: cfg.MySQL.Password,
				Table: *table, Logger: log,
			})
			if err != nil {
				return err
			}
			return srv.ListenAndServe(ctx, *addr)
		}
	},
}

var seedCacheCommand = &cli.Command{
	Name:    "seed-cache",
	Summary: "write the keys the rules derive from existing rows to every Redis replica",
	Flags: func(fs *flag.FlagSet) cli.Action {
		cf := cli.AddConfigFlags(fs)
		limit := fs.Int("limit", 1000, "rows per table")
		return func(ctx context.Context, env cli.Env, _ []string) error {
			cfg, log, err := cf.Load(env.Stderr)
			if err != nil {
				return err
			}
			return seedCache(ctx, cfg, *limit, log)
		}
	},
}
