package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/invalidate"
)

const rulesUsage = `usage: flashsync rules explain -config FILE -table db.table -row JSON [-action A] [-json]

Shows which rules fire for one row change and why (or why not), and the
keys, URLs and tags they purge in which group. Nothing is contacted: it
needs only the config.

  -row '{"before":{"id":1,"price":"9.99"},"after":{"id":1,"price":"8.99"}}'
  -row @row.json      read the row from a file (@- for stdin)

The action follows from the images (only after: insert, only before:
delete, both: update); -action insert|update|delete overrides it.
`

// runRules runs `flashsync rules <subcommand>`.
func runRules(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "explain" {
		fmt.Fprint(stderr, rulesUsage)
		return 2
	}
	fs := flag.NewFlagSet("flashsync rules explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, rulesUsage); fs.PrintDefaults() }
	configPath := fs.String("config", "configs/dev.toml", "TOML config file")
	table := fs.String("table", "", "db.table of the row (or \"table\" in the row's JSON)")
	row := fs.String("row", "", `row change as JSON {"before":{...},"after":{...}}, or @file`)
	action := fs.String("action", "", "insert, update or delete (default: from the images)")
	asJSON := fs.Bool("json", false, "print JSON (as POST /rules/explain answers)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 || *row == "" {
		fmt.Fprintf(stderr, "flashsync rules explain: -row is required and there are no arguments\n%s", rulesUsage)
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "flashsync rules explain: %v\n", err)
		return 1
	}
	cfg, err := configs.Load(*configPath)
	if err != nil {
		return fail(fmt.Errorf("config %w", err))
	}
	rules, err := cfg.BuildRules()
	if err != nil {
		return fail(err)
	}
	data := []byte(*row)
	if name, ok := strings.CutPrefix(*row, "@"); ok {
		if name == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(name)
		}
		if err != nil {
			return fail(err)
		}
	}
	q, err := invalidate.ParseExplainRequest(data)
	if err != nil {
		return fail(err)
	}
	switch {
	case *table != "" && q.Table != "" && *table != q.Table:
		return fail(fmt.Errorf("-table %s but the row says %q", *table, q.Table))
	case *table != "":
		q.Table = *table
	}
	if *action != "" {
		q.Action = *action
	}
	e, err := rules.ExplainRequest(q)
	if err != nil {
		return fail(err)
	}
	e.SetTopics(cfg.NSQ.TopicPrefix)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(e)
	} else {
		err = e.WriteText(stdout)
	}
	if err != nil {
		return fail(err)
	}
	return 0
}
