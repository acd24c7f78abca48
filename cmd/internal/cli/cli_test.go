package cli

import (
	"context"
	"errors"
	"flag"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	for _, tt := range []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"no build info", nil, "fs (no build information) go"},
		{"work tree", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "871c0c4e0d7a3f0b0c8e2f0a8d3c6b5a4f3e2d1c"},
			{Key: "vcs.time", Value: "2026-11-30T10:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		}}, "fs (devel) revision 871c0c4e0d7a3f0b0c8e2f0a8d3c6b5a4f3e2d1c 2026-11-30T10:00:00Z modified go1.26.8"},
		{"clean tree", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "871c0c4e0d7a3f0b0c8e2f0a8d3c6b5a4f3e2d1c"},
			{Key: "vcs.modified", Value: "false"},
		}}, "fs (devel) revision 871c0c4e0d7a3f0b0c8e2f0a8d3c6b5a4f3e2d1c go1.26.8"},
		{"go install of a version", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}},
			"fs v1.4.0 (no vcs revision) go1.26.8"},
	} {
		if got := Version("fs", tt.bi); !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

// testProgram has a command of two words and one that takes arguments.
func testProgram(ran *[]string) *Program {
	cmd := func(name string, args bool, err error) *Command {
		return &Command{Name: name, Summary: name + " summary", Args: args, Flags: func(fs *flag.FlagSet) Action {
			n := fs.Int("n", 1, "a number")
			return func(_ context.Context, _ Env, args []string) error {
				*ran = append(*ran, strings.Join(append([]string{name, strings.Repeat("n", *n)}, args...), " "))
				return err
			}
		}}
	}
	return &Program{Name: "fs", Commands: []*Command{
		cmd("run", false, nil),
		cmd("run fast", true, nil),
		cmd("fail", false, errors.New("it broke")),
		cmd("misuse", false, Usagef("bad use")),
		cmd("config", false, &ConfigError{Err: errors.New("x.toml: line 3: bad")}),
		cmd("stop", false, context.Canceled),
	}}
}

func TestRun(t *testing.T) {
	for _, tt := range []struct {
		args           []string
		rc             int
		ran            string
		stdout, stderr string // substrings
	}{
		{args: []string{"run", "-n", "2"}, rc: 0, ran: "run nn"},
		{args: []string{"run", "fast", "-n", "3", "a", "b"}, rc: 0, ran: "run fast nnn a b"},
		{args: []string{"run", "slow"}, rc: 2, stderr: `fs run: unexpected argument "slow"`},
		{args: []string{"run", "-m"}, rc: 2, stderr: "flag provided but not defined: -m\n\nusage: fs run [flags]"},
		{args: []string{"run", "-h"}, rc: 0, stdout: "usage: fs run [flags]\n\nrun summary\n\nflags:\n  -n int"},
		{args: []string{"fail"}, rc: 1, ran: "fail n", stderr: "fs fail: it broke\n"},
		{args: []string{"misuse"}, rc: 2, ran: "misuse n", stderr: "fs misuse: bad use\n\nusage: fs misuse [flags]"},
		{args: []string{"config"}, rc: 1, ran: "config n", stderr: "fs: config x.toml: line 3: bad\n"},
		// Canceled without a signal is a failure like any other.
		{args: []string{"stop"}, rc: 1, ran: "stop n", stderr: "fs stop: context canceled"},
		{args: []string{"nope"}, rc: 2, stderr: "fs: unknown command \"nope\"\n\nusage: fs <command>"},
		{args: nil, rc: 2, stderr: "usage: fs <command> [flags]"},
		{args: []string{"--help"}, rc: 0, stdout: "usage: fs <command> [flags]"},
		{args: []string{"help"}, rc: 0, stdout: "  run fast  run fast summary\n"},
		{args: []string{"help", "run", "fast"}, rc: 0, stdout: "usage: fs run fast [flags]"},
		{args: []string{"help", "run", "fast", "x"}, rc: 2, stderr: `fs help: unexpected "x" after run fast`},
		{args: []string{"help", "-n", "1"}, rc: 2, stderr: "flag provided but not defined: -n"},
		{args: []string{"version"}, rc: 0, stdout: "fs "},
		{args: []string{"version", "x"}, rc: 2, stderr: `fs version: unexpected argument "x"`},
	} {
		var ran []string
		var stdout, stderr strings.Builder
		rc := testProgram(&ran).Run(tt.args, &stdout, &stderr)
		if rc != tt.rc || strings.Join(ran, ";") != tt.ran || !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
			t.Errorf("%q: rc %d, ran %q\nstdout:\n%s\nstderr:\n%s\nwant rc %d, ran %q, stdout with %q, stderr with %q",
				tt.args, rc, ran, stdout.String(), stderr.String(), tt.rc, tt.ran, tt.stdout, tt.stderr)
		}
	}
}
