package configs_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/consistency"
)

func TestCheckerDefaultsAndOptions(t *testing.T) {
	cfg, err := configs.Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CheckerConfigured() {
		t.Error("a file without [checker] configures the checker")
	}
	cfg, err = configs.Parse([]byte(valid + "\n[checker]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.CheckerConfigured() {
		t.Fatal("[checker] not configured")
	}
	o := cfg.CheckerOptions()
	if o.SampleRate != consistency.DefaultSampleRate || !slices.Equal(o.Windows, consistency.DefaultWindows()) ||
		o.MaxPending != consistency.DefaultMaxPending || o.Recent != consistency.DefaultRecent {
		t.Errorf("defaults: %+v", o)
	}
	if len(o.Groups) != 1 || o.Groups[0].Name != "hot-a" || len(o.Groups[0].Replicas) != 1 || o.TopicPrefix != "flashsync" {
		t.Errorf("groups %+v, topic prefix %q", o.Groups, o.TopicPrefix)
	}

	cfg, err = configs.Parse([]byte(valid + `
[checker]
sample_rate = 1.0
windows = ["250ms", "2s"]
max_pending = 50
recent = 7
`))
	if err != nil {
		t.Fatal(err)
	}
	o = cfg.CheckerOptions()
	if o.SampleRate != 1 || !slices.Equal(o.Windows, []time.Duration{250 * time.Millisecond, 2 * time.Second}) || o.MaxPending != 50 || o.Recent != 7 {
		t.Errorf("options: %+v", o)
	}
	if _, err := consistency.New(o); err == nil {
		t.Error("consistency.New accepted options without an nsqd address (the daemon adds them)")
	}
}

func TestCheckerValidationNamesTheKey(t *testing.T) {
	for _, tc := range []struct{ section, key string }{
		{"sample_rate = 0.0", "checker.sample_rate"},
		{"sample_rate = 1.5", "checker.sample_rate"},
		{"windows = []", "checker.windows"},
		{`windows = ["1s", "0s"]`, "checker.windows[1]"},
		{"max_pending = 2", "checker.max_pending"},
		{"recent = 0", "checker.recent"},
	} {
		_, err := configs.Parse([]byte(valid + "\n[checker]\n" + tc.section + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.key+":") {
			t.Errorf("%s: err = %v, want one naming %s", tc.section, err, tc.key)
		}
	}
	noGroups := strings.Replace(valid, "[[redis_group]]\nname = \"hot-a\"", "[[http_group]]\nname = \"hot-a\"\ninstances = [\"127.0.0.1:1\"]", 1)
	noGroups = strings.Replace(noGroups, "replicas = [", "# replicas = [", 1)
	if _, err := configs.Parse([]byte(noGroups + "\n[checker]\n")); err == nil || !strings.Contains(err.Error(), "checker: needs a [[redis_group]]") {
		t.Errorf("[checker] without redis groups: err = %v", err)
	}
}
