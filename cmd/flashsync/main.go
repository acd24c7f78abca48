// Command flashsync keeps Redis caches consistent with MySQL by tailing the
// binlog. Each role is a subcommand; `flashsync all` runs every configured
// role in one process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/demoweb"
	"github.com/flashsync/flashsync/node"
)

const usage = `usage: flashsync <command> [-config file]

commands:
  all         run every role the config has settings for
  canal       tail the binlog and publish invalidations
  purger      apply invalidations to every Redis replica
  http-purger apply URL and xkey tag purges to every [[http_group]] instance (Varnish)
  dispatcher  forward URL and tag purges to every [[cdn_node]]'s console
  console     on a CDN node: purge its cache machines on signed requests
  seckill     the flash-sale service: buy API, order writers, expirer, reconciler
  seckill-migrate  create the flash-sale database and tables ([seckill] database)
  check       load and validate the config, then exit
  demo-backend  serve the demo item pages behind Varnish (-addr, -table)
  seed-cache  write the keys the rules derive from existing rows (demo)
  rules explain  show which rules fire for a row change and what they purge
                 (flashsync rules explain -h)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd := args[0]
	if cmd == "rules" {
		return runRules(args[1:], os.Stdout, stderr)
	}
	fs := flag.NewFlagSet("flashsync "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "configs/dev.toml", "TOML config file")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	seedLimit := fs.Int("limit", 1000, "seed-cache: rows per table")
	demoAddr := fs.String("addr", "127.0.0.1:16090", "demo-backend: listen address")
	demoTable := fs.String("table", "shop.item", "demo-backend: db.table of the items (id, name, price, stock)")
	resetToCurrent := fs.Bool("reset-to-current", false, "canal, all: start at the server's current binlog position (after error 1236); needs -flush-all")
	flushAll := fs.Bool("flush-all", false, "with -reset-to-current: flush every configured cache group first")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "flashsync: -log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	cfg, err := configs.Load(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "flashsync: config %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	switch cmd {
	case "check":
		fmt.Fprintf(stderr, "%s: ok\n", *configPath)
		return 0
	case "seed-cache":
		err = node.SeedCache(ctx, cfg, *seedLimit, log)
	case "demo-backend":
		var srv *demoweb.Server
		srv, err = demoweb.New(demoweb.Options{MySQL: cfg.MySQL, Table: *demoTable, Logger: log})
		if err == nil {
			err = srv.ListenAndServe(ctx, *demoAddr)
		}
	case "seckill-migrate":
		if !cfg.SeckillConfigured() {
			err = errors.New("config has no [seckill]")
			break
		}
		if err = node.MigrateSeckill(ctx, cfg); err == nil {
			fmt.Fprintf(stderr, "seckill: database %s migrated\n", cfg.Seckill.Database)
		}
	case "all", node.RoleCanal, node.RoleRedisPurger, node.RoleHTTPPurger, node.RoleDispatcher, node.RoleConsole, node.RoleSeckill:
		var roles []string
		if cmd != "all" {
			roles = []string{cmd}
		}
		var n *node.Node
		n, err = node.New(node.Options{Config: cfg, Roles: roles, Logger: log, ResetToCurrent: *resetToCurrent, FlushAll: *flushAll})
		if err == nil {
			err = errors.Join(n.Run(ctx), n.Close())
		}
	default:
		fmt.Fprintf(stderr, "flashsync: unknown command %q\n%s", cmd, usage)
		return 2
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "flashsync %s: %v\n", cmd, err)
		return 1
	}
	return 0
}
