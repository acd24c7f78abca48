package main

import (
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr strings.Builder
	rc := program.Run(args, &stdout, &stderr)
	return rc, stdout.String(), stderr.String()
}

// flagArgs are a valid use of every flag of any command.
var flagArgs = map[string]string{
	"-config":           "-config=" + filepath.Join(os.TempDir(), "flashsync-cli-test-no-such.toml"),
	"-log-level":        "-log-level=debug",
	"-reset-to-current": "-reset-to-current",
	"-flush-all":        "-flush-all",
	"-table":            "-table=shop.item",
	"-row":              `-row={"after":{"id":1}}`,
	"-action":           "-action=insert",
	"-json":             "-json",
	"-token":            "-token=dev-viewer-token",
	// purge's (-config, -token, -json and -row too).
	"-admin":       "-admin=http://127.0.0.1:1",
	"-ca":          "-ca=" + filepath.Join(os.TempDir(), "flashsync-cli-test-no-such-ca.pem"),
	"-reason":      "-reason=test",
	"-dry-run":     "-dry-run",
	"-wait":        "-wait",
	"-timeout":     "-timeout=5s",
	"-key":         "-key=k",
	"-group":       "-group=ga",
	"-url":         "-url=/u",
	"-tag":         "-tag=t",
	"-pattern":     "-pattern=p:*",
	"-ban":         "-ban=^/u",
	"-flush-group": "-flush-group=ga",
	"-confirm":     "-confirm=ga",
	// The demo's, which flashsync has no more.
	"-addr":  "-addr=127.0.0.1:1",
	"-limit": "-limit=5",
}

// commandFlagArgs are the uses of a flag that differ by command.
var commandFlagArgs = map[string]map[string]string{
	"purge": {"-row": "-row=shop.item id=1"},
}

// purgeRequired completes a purge command line that has flag: a token, a
// reason and a key unless flag is one of them, a group to flush for
// -confirm.
func purgeRequired(flag string) []string {
	var args []string
	for _, f := range []string{"-token", "-reason", "-key"} {
		if f != flag {
			args = append(args, flagArgs[f])
		}
	}
	if flag == "-confirm" {
		args = append(args, flagArgs["-flush-group"])
	}
	return args
}

// commandFlags lists each command's flags.
var commandFlags = map[string][]string{
	"all":              {"-config", "-log-level", "-reset-to-current", "-flush-all"},
	"canal":            {"-config", "-log-level", "-reset-to-current", "-flush-all"},
	"purger":           {"-config", "-log-level"},
	"http-purger":      {"-config", "-log-level"},
	"dispatcher":       {"-config", "-log-level"},
	"console":          {"-config", "-log-level"},
	"seckill":          {"-config", "-log-level"},
	"seckill-migrate":  {"-config"},
	"admin":            {"-config", "-log-level"},
	"admin hash-token": {"-token"},
	"checker":          {"-config", "-log-level"},
	"purge": {"-admin", "-ca", "-config", "-token", "-reason", "-dry-run", "-wait", "-json", "-timeout",
		"-key", "-group", "-url", "-tag", "-row", "-pattern", "-ban", "-flush-group", "-confirm"},
	"check":            {"-config"},
	"config reference": nil,
	"rules explain":    {"-config", "-table", "-row", "-action", "-json"},
	"help":             nil,
	"version":          nil,
}

func TestEveryCommandIsInTheTable(t *testing.T) {
	var names []string
	for _, c := range program.All() {
		names = append(names, c.Name)
	}
	if want := slices.Sorted(maps.Keys(commandFlags)); !slices.Equal(slices.Sorted(slices.Values(names)), want) {
		t.Errorf("commands %v, the test knows %v", names, want)
	}
}

// Each command takes its own flags and refuses every other: with its own,
// the command line is accepted and the command stops at the config, which
// does not exist (exit 1); with another command's, the command line is
// wrong (exit 2).
func TestCommandFlags(t *testing.T) {
	for name, own := range commandFlags {
		for flagName, arg := range flagArgs {
			if a, ok := commandFlagArgs[name][flagName]; ok {
				arg = a
			}
			args := append(strings.Fields(name), arg)
			if flagName != "-config" && slices.Contains(own, "-config") {
				args = append(args, flagArgs["-config"])
			}
			if name == "rules explain" && flagName != "-row" {
				args = append(args, flagArgs["-row"]) // required
			}
			if name == "purge" {
				args = append(args, purgeRequired(flagName)...)
			}
			rc, stdout, stderr := runCLI(t, args...)
			if name == "admin hash-token" && flagName == "-token" {
				// The one command of a flag of its own that reads no config.
				if rc != 0 || stdout != "ce2bc80df24ceeb9021f86ebb9b2ad727af4f9fabb308232bd168b16f1de2526\n" {
					t.Errorf("%q: rc %d, stdout %q, stderr %q", args, rc, stdout, stderr)
				}
				continue
			}
			if name == "purge" && flagName == "-admin" {
				// -admin wins over -config: the API is not there.
				if rc != 1 || !strings.Contains(stderr, "127.0.0.1:1") || strings.Contains(stderr, "usage:") {
					t.Errorf("%q: rc %d, want 1 for the unreachable API; stderr:\n%s", args, rc, stderr)
				}
				continue
			}
			if !slices.Contains(own, flagName) {
				if rc != 2 || !strings.Contains(stderr, "flag provided but not defined: "+flagName) || !strings.Contains(stderr, "usage: flashsync "+name) {
					t.Errorf("%q: rc %d, want 2 with the refused flag and the usage; stderr:\n%s", args, rc, stderr)
				}
				continue
			}
			if rc != 1 || !strings.Contains(stderr, ": config ") || !strings.Contains(stderr, strings.TrimPrefix(flagArgs["-config"], "-config=")) {
				t.Errorf("%q: rc %d, want 1 for the missing config; stderr:\n%s", args, rc, stderr)
			}
		}
	}
}

// config reference prints docs/configuration.md: the file is its output.
func TestConfigReference(t *testing.T) {
	rc, stdout, stderr := runCLI(t, "config", "reference")
	if rc != 0 || stderr != "" {
		t.Fatalf("rc %d, stderr:\n%s", rc, stderr)
	}
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if stdout != string(doc) {
		t.Error("flashsync config reference differs from docs/configuration.md")
	}
}

func TestCommandLineErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "usage: flashsync <command>"},
		{[]string{"nope"}, `unknown command "nope"`},
		{[]string{"demo-backend"}, `unknown command "demo-backend"`},
		{[]string{"seed-cache"}, `unknown command "seed-cache"`},
		{[]string{"rules"}, "want a command of rules explain"},
		{[]string{"check", "extra"}, `unexpected argument "extra"`},
		{[]string{"help", "nope"}, `unknown command "nope"`},
		{[]string{"rules", "explain", "-table", "shop.item"}, "-row is required"},
		{[]string{"purger", "-log-level", "loud"}, "-log-level"},
	} {
		rc, stdout, stderr := runCLI(t, tt.args...)
		if rc != 2 || !strings.Contains(stderr, tt.want) || !strings.Contains(stderr, "usage: flashsync") || stdout != "" {
			t.Errorf("%q: rc %d, want 2 with %q and the usage on stderr; stdout %q, stderr:\n%s", tt.args, rc, tt.want, stdout, stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	rc, out, _ := runCLI(t, "help")
	if rc != 0 {
		t.Errorf("help: rc %d", rc)
	}
	for _, c := range program.All() {
		if !strings.Contains(out, "\n  "+c.Name+" ") {
			t.Errorf("help does not list %s:\n%s", c.Name, out)
		}
	}
	for name, own := range commandFlags {
		for _, args := range [][]string{append([]string{"help"}, strings.Fields(name)...), append(strings.Fields(name), "-h")} {
			rc, out, errOut := runCLI(t, args...)
			if rc != 0 || !strings.HasPrefix(out, "usage: flashsync "+name+" ") {
				t.Errorf("%q: rc %d, out %q, stderr %q", args, rc, out, errOut)
				continue
			}
			for flagName := range flagArgs {
				if got := strings.Contains(out, "\n  "+flagName+" ") || strings.Contains(out, "\n  "+flagName+"\n"); got != slices.Contains(own, flagName) {
					t.Errorf("%q lists %s: %v, want %v:\n%s", args, flagName, got, !got, out)
				}
			}
		}
	}
}

func TestVersion(t *testing.T) {
	rc, out, errOut := runCLI(t, "version")
	if rc != 0 || !strings.HasPrefix(out, "flashsync ") || !strings.HasSuffix(out, " "+runtime.Version()+"\n") {
		t.Errorf("version: rc %d %q %q", rc, out, errOut)
	}
}

func TestCheck(t *testing.T) {
	rc, _, errOut := runCLI(t, "check", "-config", devConfig)
	if rc != 0 || errOut != devConfig+": ok\n" {
		t.Errorf("check: rc %d %q", rc, errOut)
	}
}

// admin hash-token reads the token from stdin without -token; the hash is
// configs/dev.toml's of the demo operator.
func TestAdminHashTokenStdin(t *testing.T) {
	program.Stdin = strings.NewReader("dev-operator-token\n")
	defer func() { program.Stdin = nil }()
	rc, stdout, stderr := runCLI(t, "admin", "hash-token")
	if rc != 0 || stdout != "277e6a75a6980887d1bc5c738e59a2504e3e2696d8f9fbf675b7fc49dabd2cf8\n" {
		t.Errorf("rc %d, stdout %q, stderr %q", rc, stdout, stderr)
	}
	program.Stdin = strings.NewReader("")
	if rc, _, stderr := runCLI(t, "admin", "hash-token"); rc != 2 || !strings.Contains(stderr, "no token") {
		t.Errorf("empty stdin: rc %d, stderr %q", rc, stderr)
	}
}
