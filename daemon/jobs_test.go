package daemon

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

func TestJobsAPI(t *testing.T) {
	// The canal role builds the job store; nothing connects before Run.
	n, srv := testNode(t, RoleCanal)

	targets := []invalidate.JobTarget{
		{Tier: "redis", Group: "hot-a", Target: stacktest.DefaultRedisA1},
		{Tier: "http", Group: "varnish-a", Target: stacktest.DefaultVarnish1},
	}
	n.jobs.Expect("0123456789abcdef", targets)
	n.jobs.Ack(invalidate.Ack{Job: "0123456789abcdef", Tier: "redis", Group: "hot-a", Target: stacktest.DefaultRedisA1, OK: true, LatencyMS: 2.5, At: time.Now()})

	status, out := get(t, srv.URL+"/jobs/0123456789abcdef")
	if status != http.StatusOK || out["state"] != "pending" || out["pending"] != 1.0 || out["done"] != 1.0 {
		t.Fatalf("pending job: %d %v", status, out)
	}
	n.jobs.Ack(invalidate.Ack{Job: "0123456789abcdef", Tier: "http", Group: "varnish-a", Target: stacktest.DefaultVarnish1, OK: false, Error: "405", At: time.Now()})
	status, out = get(t, srv.URL+"/jobs/0123456789abcdef")
	b, _ := json.Marshal(out)
	for _, want := range []string{`"state":"failed"`, `"latency_ms":2.5`, `"error":"405"`, `{"done":0,"failed":1,"group":"varnish-a","pending":0,"tier":"http"}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("job lacks %s: %s", want, b)
		}
	}

	status, out = get(t, srv.URL+"/jobs/nope")
	if status != http.StatusNotFound || !strings.Contains(out["error"].(string), "unknown") {
		t.Errorf("unknown job: %d %v", status, out)
	}
	status, out = get(t, srv.URL+"/jobs?limit=5")
	if status != http.StatusOK || out["tracked"] != 1.0 || len(out["jobs"].([]any)) != 1 {
		t.Errorf("recent jobs: %d %v", status, out)
	}
	if status, _ := get(t, srv.URL+"/jobs?limit=x"); status != http.StatusBadRequest {
		t.Errorf("bad limit: %d", status)
	}
	// A daemon without the canal role has no jobs.
	status, out = get(t, explainServer(t).URL+"/jobs/0123456789abcdef")
	if status != http.StatusNotFound || !strings.Contains(out["error"].(string), "canal role") {
		t.Errorf("purger daemon: %d %v", status, out)
	}
}
