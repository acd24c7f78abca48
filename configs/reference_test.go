package configs_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/configs"
)

// TestReferenceIsCurrent fails when docs/configuration.md is not what the
// schema generates: a key, a default or a doc comment changed without it.
func TestReferenceIsCurrent(t *testing.T) {
	var b bytes.Buffer
	if err := configs.WriteReference(&b); err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, b.Bytes()) {
		t.Fatal("docs/configuration.md is out of date: run `go run ./cmd/flashsync config reference > docs/configuration.md`")
	}
}

// TestReferenceDocumentsEveryKey: every key has a meaning and the defaults
// are the ones a file without the key gets.
func TestReferenceDocumentsEveryKey(t *testing.T) {
	var b bytes.Buffer
	if err := configs.WriteReference(&b); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, "| `") && strings.HasSuffix(line, "|  |") {
			t.Errorf("key without a doc comment: %s", line)
		}
	}
	for _, want := range []string{
		"| `max_in_flight` | integer | `64` |",
		"| `coalesce_window` | duration | `\"2ms\"` |",
		"| `reconcile_grace` | duration | `\"1m0s\"` |",
		"| `topic` | string | `\"<nsq.topic_prefix>.seckill\"` |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("reference lacks %q", want)
		}
	}
}
