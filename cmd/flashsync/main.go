// Command flashsync keeps Redis caches consistent with MySQL by tailing the
// binlog. Each role is a subcommand; `flashsync all` runs every configured
// role in one process. `flashsync help` lists the commands, `flashsync help
// <command>` shows one's flags. The demo backend and cache seeding are in
// cmd/flashsync-demo, not here.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/cmd/internal/cli"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/daemon"
)

func main() {
	os.Exit(program.Run(os.Args[1:], os.Stdout, os.Stderr))
}

// program is flashsync's command line: one entry per command.
var program = &cli.Program{
	Name: "flashsync",
	Doc:  "flashsync keeps caches consistent with MySQL by tailing its binlog.",
	Commands: []*cli.Command{
		roleCommand("all", "run every role the config has settings for", nil),
		roleCommand(daemon.RoleCanal, "tail the binlog and publish invalidations", []string{daemon.RoleCanal}),
		roleCommand(daemon.RoleRedisPurger, "apply invalidations to every Redis replica", []string{daemon.RoleRedisPurger}),
		roleCommand(daemon.RoleHTTPPurger, "apply URL and xkey tag purges to every [[http_group]] instance (Varnish)", []string{daemon.RoleHTTPPurger}),
		roleCommand(daemon.RoleDispatcher, "forward URL and tag purges to every [[cdn_node]]'s console", []string{daemon.RoleDispatcher}),
		roleCommand(daemon.RoleConsole, "on a CDN node: purge its cache machines on signed requests", []string{daemon.RoleConsole}),
		roleCommand(daemon.RoleSeckill, "the flash-sale service: buy API, order writers, expirer, reconciler", []string{daemon.RoleSeckill}),
		roleCommand(daemon.RoleAdmin, "the admin API: purge keys, URLs, tags and rows by hand, audited ([admin])", []string{daemon.RoleAdmin}),
		roleCommand(daemon.RoleChecker, "the consistency checker: read sampled invalidations' keys back from every Redis replica ([checker])", []string{daemon.RoleChecker}),
		adminHashTokenCommand,
		purgeCommand,
		seckillMigrateCommand,
		checkCommand,
		configReferenceCommand,
		rulesExplainCommand,
	},
}

// roleCommand runs roles (nil: every role the config has settings for) in
// one node. The commands that run the canal also take the recovery flags.
func roleCommand(name, summary string, roles []string) *cli.Command {
	return &cli.Command{
		Name: name, Summary: summary,
		Flags: func(fs *flag.FlagSet) cli.Action {
			cf := cli.AddConfigFlags(fs)
			var reset, flush *bool
			if roles == nil || roles[0] == daemon.RoleCanal {
				reset = fs.Bool("reset-to-current", false, "start the canal at the server's current binlog position (after error 1236); needs -flush-all")
				flush = fs.Bool("flush-all", false, "with -reset-to-current: flush every configured cache group first")
			}
			return func(ctx context.Context, env cli.Env, _ []string) error {
				cfg, log, err := cf.Load(env.Stderr)
				if err != nil {
					return err
				}
				opts := daemon.Options{Config: cfg, Roles: roles, Logger: log}
				if reset != nil {
					opts.ResetToCurrent, opts.FlushAll = *reset, *flush
				}
				n, err := daemon.New(opts)
				if err != nil {
					return err
				}
				return errors.Join(n.Run(ctx), n.Close())
			}
		},
	}
}

var seckillMigrateCommand = &cli.Command{
	Name:    "seckill-migrate",
	Summary: "create the flash-sale database and tables ([seckill] database)",
	Flags: func(fs *flag.FlagSet) cli.Action {
		path := cli.AddConfig(fs)
		return func(ctx context.Context, env cli.Env, _ []string) error {
			cfg, err := cli.LoadConfig(*path)
			if err != nil {
				return err
			}
			if !cfg.SeckillConfigured() {
				return errors.New("config has no [seckill]")
			}
			if err := daemon.MigrateSeckill(ctx, cfg); err != nil {
				return err
			}
			fmt.Fprintf(env.Stderr, "seckill: database %s migrated\n", cfg.Seckill.Database)
			return nil
		}
	},
}

var adminHashTokenCommand = &cli.Command{
	Name:    "admin hash-token",
	Summary: "print the token_sha256 of an [[admin.user]]'s token (read from stdin, or -token)",
	Doc: "Reads a token from -token or, without it, the first line of stdin, and prints its hex\n" +
		"SHA-256: the token_sha256 of an [[admin.user]]. The config holds only the hash.",
	Flags: func(fs *flag.FlagSet) cli.Action {
		token := fs.String("token", "", "the `token` (visible in the process list and shell history: prefer stdin)")
		return func(_ context.Context, env cli.Env, _ []string) error {
			t := *token
			if t == "" {
				line, err := bufio.NewReader(env.Stdin).ReadString('\n')
				if err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("read token: %w", err)
				}
				t = line
			}
			// Surrounding white space (the newline of stdin) is not part
			// of the token.
			t = strings.TrimSpace(t)
			if t == "" {
				return cli.Usagef("no token: give -token or write it to stdin")
			}
			_, err := fmt.Fprintln(env.Stdout, admin.HashToken(t))
			return err
		}
	},
}

var checkCommand = &cli.Command{
	Name:    "check",
	Summary: "load and validate the config, then exit",
	Flags: func(fs *flag.FlagSet) cli.Action {
		path := cli.AddConfig(fs)
		return func(_ context.Context, env cli.Env, _ []string) error {
			if _, err := cli.LoadConfig(*path); err != nil {
				return err
			}
			fmt.Fprintf(env.Stderr, "%s: ok\n", *path)
			return nil
		}
	},
}

var configReferenceCommand = &cli.Command{
	Name:    "config reference",
	Summary: "print the configuration reference (docs/configuration.md) in Markdown",
	Doc: "Prints every section and key of the config file with its type, default and meaning,\n" +
		"generated from the schema in configs/config.go. docs/configuration.md is its output.",
	Flags: func(fs *flag.FlagSet) cli.Action {
		return func(_ context.Context, env cli.Env, _ []string) error {
			return configs.WriteReference(env.Stdout)
		}
	},
}
