package admin_test

import (
	"fmt"
	"net/http"
	"testing"
)

func TestJobList(t *testing.T) {
	f := newFixture(t, "")
	var ids []string
	for i := range 3 {
		status, out := f.call(t, "POST", "/api/v1/purges", operatorToken, fmt.Sprintf(`{"reason":"list %d","keys":["k%d"],"groups":["ga"]}`, i, i))
		if status != http.StatusAccepted {
			t.Fatalf("purge: %d %v", status, out)
		}
		ids = append(ids, out["job"].(string))
		f.waitJob(t, ids[i])
	}
	list := func(t *testing.T, query string) []map[string]any {
		t.Helper()
		status, out := f.call(t, "GET", "/api/v1/jobs"+query, viewerToken, "")
		if status != http.StatusOK {
			t.Fatalf("jobs%s: %d %v", query, status, out)
		}
		var jobs []map[string]any
		for _, j := range out["jobs"].([]any) {
			jobs = append(jobs, j.(map[string]any))
		}
		return jobs
	}

	t.Run("newest first, described, without targets", func(t *testing.T) {
		jobs := list(t, "")
		if len(jobs) != 3 {
			t.Fatalf("%d jobs, want 3: %v", len(jobs), jobs)
		}
		for i, j := range jobs {
			n := 2 - i
			if j["id"] != ids[n] || j["started_by"] != "operator" || j["reason"] != fmt.Sprintf("list %d", n) || j["state"] != "done" || j["done"] != 2.0 {
				t.Errorf("jobs[%d] = %v, want job %d (%s), done by its 2 replicas", i, j, n, ids[n])
			}
			if j["targets"] != nil || len(j["groups"].([]any)) != 1 {
				t.Errorf("jobs[%d]: targets %v, groups %v: want the group counts only", i, j["targets"], j["groups"])
			}
		}
	})

	t.Run("limit and manual", func(t *testing.T) {
		if jobs := list(t, "?limit=2"); len(jobs) != 2 || jobs[0]["id"] != ids[2] {
			t.Errorf("limit=2: %v", jobs)
		}
		if jobs := list(t, "?limit=2&manual=true"); len(jobs) != 2 || jobs[1]["id"] != ids[1] {
			t.Errorf("manual=true: %v", jobs)
		}
		for _, q := range []string{"?limit=0", "?limit=1001", "?manual=yes"} {
			if status, out := f.call(t, "GET", "/api/v1/jobs"+q, viewerToken, ""); status != http.StatusBadRequest {
				t.Errorf("%s: %d %v, want 400", q, status, out)
			}
		}
		if status, _ := f.call(t, "GET", "/api/v1/jobs", "", ""); status != http.StatusUnauthorized {
			t.Errorf("without a token: %d", status)
		}
	})
}
