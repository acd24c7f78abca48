package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/flashsync/flashsync/cmd/internal/cli"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/invalidate"
)

var rulesExplainCommand = &cli.Command{
	Name:    "rules explain",
	Summary: "show which rules fire for a row change and what they purge",
	Usage:   "-config FILE -table db.table -row JSON [-action A] [-json]",
	Doc: `Shows which rules fire for one row change and why (or why not), and the
keys, URLs and tags they purge in which group. Nothing is contacted: it
needs only the config.

  -row '{"before":{"id":1,"price":"9.99"},"after":{"id":1,"price":"8.99"}}'
  -row @row.json      read the row from a file (@- for stdin)

The action follows from the images (only after: insert, only before:
delete, both: update); -action insert|update|delete overrides it.`,
	Flags: func(fs *flag.FlagSet) cli.Action {
		configPath := cli.AddConfig(fs)
		table := fs.String("table", "", "db.table of the row (or \"table\" in the row's JSON)")
		row := fs.String("row", "", `row change as JSON {"before":{...},"after":{...}}, or @file`)
		action := fs.String("action", "", "insert, update or delete (default: from the images)")
		asJSON := fs.Bool("json", false, "print JSON (as POST /rules/explain answers)")
		return func(_ context.Context, env cli.Env, _ []string) error {
			if *row == "" {
				return cli.Usagef("-row is required")
			}
			return explainRow(env.Stdout, *configPath, *table, *row, *action, *asJSON)
		}
	},
}

// explainRow prints the explanation of the row change row (JSON or @file).
func explainRow(stdout io.Writer, configPath, table, row, action string, asJSON bool) error {
	cfg, err := configs.Load(configPath)
	if err != nil {
		return fmt.Errorf("config %w", err)
	}
	rules, err := cfg.BuildRules()
	if err != nil {
		return err
	}
	data := []byte(row)
	if name, ok := strings.CutPrefix(row, "@"); ok {
		if name == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(name)
		}
		if err != nil {
			return err
		}
	}
	q, err := invalidate.ParseExplainRequest(data)
	if err != nil {
		return err
	}
	switch {
	case table != "" && q.Table != "" && table != q.Table:
		return fmt.Errorf("-table %s but the row says %q", table, q.Table)
	case table != "":
		q.Table = table
	}
	if action != "" {
		q.Action = action
	}
	e, err := rules.ExplainRequest(q)
	if err != nil {
		return err
	}
	e.SetTopics(cfg.NSQ.TopicPrefix)
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(e)
	}
	return e.WriteText(stdout)
}
