// Package cli is the command line of the flashsync binaries: a table of
// subcommands, each with a flag set of its own, and the built-in `help
// [command]` and `version`.
//
// Exit codes: 0 on success (and for help asked for), 1 when the command
// failed, 2 for a command line that is wrong (unknown command, flag or
// argument), with the usage on stderr.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"

	"github.com/flashsync/flashsync/configs"
)

// Command is one subcommand. Adding a subcommand is adding a Command to the
// Program's list.
type Command struct {
	// Name is the words that select the command: "canal", "rules explain".
	Name string
	// Summary is its line in the list of commands.
	Summary string
	// Usage follows the name on the usage line (default "[flags]").
	Usage string
	// Doc is printed under the usage line by `help`; default Summary.
	Doc string
	// Flags defines the command's flags on fs and returns what it does once
	// they are parsed.
	Flags func(fs *flag.FlagSet) Action
	// Args tells that the command takes arguments after its flags;
	// otherwise any is refused.
	Args bool
}

// Action runs a command with its arguments (those after the flags).
type Action func(ctx context.Context, env Env, args []string) error

// Env is what an action reads and writes.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Program is a binary's command line.
type Program struct {
	// Name is the binary's name: "flashsync".
	Name string
	// Doc is the first paragraph of the usage.
	Doc      string
	Commands []*Command
	// Stdin is the actions' Env.Stdin (default os.Stdin).
	Stdin io.Reader
}

// UsageError is a wrong command line found by an action: it exits 2, with
// the command's usage.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// ConfigError is a config file that did not load; it is reported as
// "<program>: config <error>", which names the file.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return "config " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// All lists the program's commands and the built-in ones, help and
// version.
func (p *Program) All() []*Command {
	help := &Command{
		Name: "help", Usage: "[command]", Args: true,
		Summary: "print this, or a command's usage and flags",
		Flags: func(*flag.FlagSet) Action {
			return func(_ context.Context, env Env, args []string) error {
				if len(args) == 0 {
					p.printUsage(env.Stdout)
					return nil
				}
				c, rest, err := p.lookup(args)
				if err != nil {
					return err
				}
				if len(rest) > 0 {
					return Usagef("unexpected %q after %s", rest[0], c.Name)
				}
				p.printCommand(env.Stdout, c)
				return nil
			}
		},
	}
	version := &Command{
		Name:    "version",
		Summary: "print the version, the VCS revision it was built from and the Go version",
		Flags: func(*flag.FlagSet) Action {
			return func(_ context.Context, env Env, _ []string) error {
				bi, ok := debug.ReadBuildInfo()
				if !ok {
					bi = nil
				}
				_, err := fmt.Fprintln(env.Stdout, Version(p.Name, bi))
				return err
			}
		},
	}
	return append(slices.Clip(p.Commands), help, version)
}

// Run runs the command line args (without the program name) and returns
// the exit code. SIGINT and SIGTERM cancel the action's context.
func (p *Program) Run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		p.printUsage(stderr)
		return 2
	}
	if args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		p.printUsage(stdout)
		return 0
	}
	c, rest, err := p.lookup(args)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n\n", p.Name, err)
		p.printUsage(stderr)
		return 2
	}
	fs := p.flagSet(c)
	fs.SetOutput(stderr)
	// Parse prints its error; the usage is printed here, to stdout when it
	// was asked for (-h).
	fs.Usage = func() {}
	act := c.Flags(fs)
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			p.printCommand(stdout, c)
			return 0
		}
		fmt.Fprintln(stderr)
		p.printCommand(stderr, c)
		return 2
	}
	if !c.Args && fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s %s: unexpected argument %q\n\n", p.Name, c.Name, fs.Arg(0))
		p.printCommand(stderr, c)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	stdin := p.Stdin
	if stdin == nil {
		stdin = os.Stdin
	}
	err = act(ctx, Env{Stdin: stdin, Stdout: stdout, Stderr: stderr}, fs.Args())
	var ue *UsageError
	var ce *ConfigError
	switch {
	case err == nil, ctx.Err() != nil && errors.Is(err, context.Canceled):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s %s: %v\n\n", p.Name, c.Name, ue.Err)
		p.printCommand(stderr, c)
		return 2
	case errors.As(err, &ce):
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, ce)
		return 1
	default:
		fmt.Fprintf(stderr, "%s %s: %v\n", p.Name, c.Name, err)
		return 1
	}
}

// lookup finds the command args start with (the one of most words) and
// returns it with the rest of args.
func (p *Program) lookup(args []string) (*Command, []string, error) {
	var best *Command
	var n int
	var prefixOf []string
	for _, c := range p.All() {
		words := strings.Fields(c.Name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) && len(words) > n {
			best, n = c, len(words)
		}
		if len(words) > 1 && words[0] == args[0] {
			prefixOf = append(prefixOf, c.Name)
		}
	}
	switch {
	case best != nil:
		return best, args[n:], nil
	case len(prefixOf) > 0:
		return nil, nil, Usagef("%s: want a command of %s", args[0], strings.Join(prefixOf, ", "))
	default:
		return nil, nil, Usagef("unknown command %q", args[0])
	}
}

func (p *Program) flagSet(c *Command) *flag.FlagSet {
	return flag.NewFlagSet(p.Name+" "+c.Name, flag.ContinueOnError)
}

func (p *Program) printUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s <command> [flags]\n\n", p.Name)
	if p.Doc != "" {
		fmt.Fprintf(w, "%s\n\n", strings.TrimSpace(p.Doc))
	}
	fmt.Fprintln(w, "commands:")
	cmds := p.All()
	width := 0
	for _, c := range cmds {
		width = max(width, len(c.Name))
	}
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.Name, c.Summary)
	}
	fmt.Fprintf(w, "\n`%s help <command>` prints a command's flags.\n", p.Name)
}

// printCommand prints c's usage line, its doc and its flags.
func (p *Program) printCommand(w io.Writer, c *Command) {
	usage := c.Usage
	if usage == "" {
		usage = "[flags]"
	}
	doc := c.Doc
	if doc == "" {
		doc = c.Summary
	}
	fmt.Fprintf(w, "usage: %s %s %s\n\n%s\n", p.Name, c.Name, usage, strings.TrimSpace(doc))
	fs := p.flagSet(c)
	c.Flags(fs)
	if hasFlags(fs) {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

func hasFlags(fs *flag.FlagSet) bool {
	has := false
	fs.VisitAll(func(*flag.Flag) { has = true })
	return has
}

// Version is the line `version` prints: the program's name, its module
// version ("(devel)" when built from a work tree), the VCS revision and
// time it was built from, "modified" if the tree had changes, and the Go
// version. bi nil means the binary has no build information.
func Version(name string, bi *debug.BuildInfo) string {
	if bi == nil {
		return fmt.Sprintf("%s (no build information) %s", name, runtime.Version())
	}
	parts := []string{name, bi.Main.Version}
	var rev, at string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		parts = append(parts, "(no vcs revision)")
	} else {
		parts = append(parts, "revision "+rev)
		if at != "" {
			parts = append(parts, at)
		}
		if modified {
			parts = append(parts, "modified")
		}
	}
	return strings.Join(append(parts, bi.GoVersion), " ")
}

// ConfigFlags are the -config and -log-level flags of the commands that read
// the config and log.
type ConfigFlags struct {
	path, level *string
}

// AddConfig defines -config on fs.
func AddConfig(fs *flag.FlagSet) *string {
	return fs.String("config", "configs/dev.toml", "TOML config `file`")
}

// AddConfigFlags defines -config and -log-level on fs.
func AddConfigFlags(fs *flag.FlagSet) *ConfigFlags {
	return &ConfigFlags{
		path:  AddConfig(fs),
		level: fs.String("log-level", "info", "debug, info, warn or error"),
	}
}

// Load parses -log-level (a UsageError when it is wrong), then loads the
// config (a ConfigError when it does not load), and returns the config and a
// logger writing to stderr.
func (f *ConfigFlags) Load(stderr io.Writer) (*configs.Config, *slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(*f.level)); err != nil {
		return nil, nil, Usagef("-log-level: %v", err)
	}
	cfg, err := LoadConfig(*f.path)
	if err != nil {
		return nil, nil, err
	}
	return cfg, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})), nil
}

// LoadConfig loads the config file at path; its error is a ConfigError.
func LoadConfig(path string) (*configs.Config, error) {
	cfg, err := configs.Load(path)
	if err != nil {
		return nil, &ConfigError{Err: err}
	}
	return cfg, nil
}
