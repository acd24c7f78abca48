package admin_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// admin2Token is a second admin's token, for the two-person rule.
const admin2Token = "second-admin-token"

// approvalAdminLines are [admin] lines that turn the two-person rule on
// and add the second admin, admin2.
func approvalAdminLines() string {
	return fmt.Sprintf("flush_needs_approval = true\n\n[[admin.user]]\nname = \"admin2\"\nrole = \"admin\"\ntoken_sha256 = %q\n", admin.HashToken(admin2Token))
}

// holdFlush asks for a flush of ga as adminToken and returns the held
// approval.
func (f *fixture) holdFlush(t *testing.T, reason string) map[string]any {
	t.Helper()
	status, out := f.call(t, "POST", "/api/v1/purges", adminToken, `{"reason":"`+reason+`","flush_groups":["ga"],"confirm":["ga"]}`)
	if status != http.StatusAccepted || out["approval"] == nil {
		t.Fatalf("flush with flush_needs_approval: %d %v, want 202 with an approval", status, out)
	}
	a := out["approval"].(map[string]any)
	if a["state"] != "pending" || a["requested_by"] != "admin" || a["reason"] != reason || a["job"] == "" || a["id"] == "" {
		t.Fatalf("held flush: %v", a)
	}
	p, _ := out["preview"].(map[string]any)
	if p == nil || p["job"] != nil || p["counts"].(map[string]any)["flushes"] != 1.0 {
		t.Errorf("held flush's preview: %v, want the flush of ga and no job yet", p)
	}
	return a
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// approval lists the approvals and returns id's.
func (f *fixture) approval(t *testing.T, id string) map[string]any {
	t.Helper()
	status, out := f.call(t, "GET", "/api/v1/approvals", viewerToken, "")
	if status != http.StatusOK {
		t.Fatalf("approvals: %d %v", status, out)
	}
	for _, a := range out["approvals"].([]any) {
		if a := a.(map[string]any); a["id"] == id {
			return a
		}
	}
	t.Fatalf("approval %s not listed: %v", id, out)
	return nil
}

func TestFlushApprovals(t *testing.T) {
	f := newFixtureWith(t, fixtureOptions{admin: approvalAdminLines()})
	ga := []*redis.Client{stacktest.Redis(t, f.ga[0].Addr()), stacktest.Redis(t, f.ga[1].Addr())}
	gb := stacktest.Redis(t, f.gb.Addr())
	for _, c := range append(ga, gb) {
		fill(t, c, "held:", 100)
	}
	// keysLeft checks that the held flushes flushed nothing yet.
	keysLeft := func(t *testing.T) {
		t.Helper()
		for i, c := range ga {
			if n := dbSize(t, c); n != 100 {
				t.Errorf("ga replica %d holds %d keys before any approval, want 100", i, n)
			}
		}
	}

	t.Run("dry run says a run waits", func(t *testing.T) {
		status, out := f.call(t, "POST", "/api/v1/purges", adminToken, `{"reason":"look","dry_run":true,"flush_groups":["ga"]}`)
		if status != http.StatusOK || !strings.Contains(fmt.Sprint(out["notes"]), "a run waits for a second admin's approval") {
			t.Errorf("dry run: %d %v", status, out)
		}
	})

	before := f.published(t)
	a := f.holdFlush(t, "poisoned cache")
	id, job := a["id"].(string), a["job"].(string)

	t.Run("nothing published before the approval", func(t *testing.T) {
		if after := f.published(t); after != before {
			t.Errorf("a held flush published %d messages", after-before)
		}
		keysLeft(t)
		if status, out := f.call(t, "GET", "/api/v1/jobs/"+job, viewerToken, ""); status != http.StatusNotFound {
			t.Errorf("the held flush's job exists: %d %v", status, out)
		}
		if l := f.approval(t, id); l["state"] != "pending" || l["requested_by"] != "admin" || !strings.Contains(string(mustJSON(t, l["request"])), `"flush_groups":["ga"]`) {
			t.Errorf("listed approval %v", l)
		}
		rows := f.auditRows(t, func(e map[string]any) bool { return e["action"] == "approval_requested" })
		if len(rows) != 1 || rows[0]["job"] != job || rows[0]["status"] != 202.0 || rows[0]["outcome"] != "accepted" || rows[0]["user"] != "admin" ||
			rows[0]["targets"] != 2.0 || !strings.Contains(rows[0]["request"].(string), "poisoned cache") {
			t.Errorf("audit of the request: %v", rows)
		}
	})

	t.Run("refused decisions", func(t *testing.T) {
		for _, tt := range []struct {
			token, decision string
			want            int
			msg             string
		}{
			{adminToken, "approve", 403, "admin requested this flush; a second admin must approve it"},
			{operatorToken, "approve", 403, "needs the admin role"},
			{viewerToken, "approve", 403, "needs the admin role"},
			{operatorToken, "reject", 403, "needs the admin role"},
			{"", "approve", 401, "missing bearer token"},
		} {
			status, out := f.call(t, "POST", "/api/v1/approvals/"+id+"/"+tt.decision, tt.token, "")
			if msg, _ := out["error"].(string); status != tt.want || !strings.Contains(msg, tt.msg) {
				t.Errorf("%s by %q: %d %v, want %d with %q", tt.decision, tt.token, status, out, tt.want, tt.msg)
			}
		}
		if status, out := f.call(t, "POST", "/api/v1/approvals/0123456789abcdef/approve", admin2Token, ""); status != http.StatusNotFound {
			t.Errorf("unknown approval: %d %v", status, out)
		}
		if l := f.approval(t, id); l["state"] != "pending" {
			t.Errorf("after refused decisions: %v", l)
		}
		if after := f.published(t); after != before {
			t.Errorf("refused decisions published %d messages", after-before)
		}
		keysLeft(t)
		rows := f.auditRows(t, func(e map[string]any) bool { return e["action"] == "approve" && e["outcome"] == "refused" })
		if len(rows) != 4 { // the 401 has no user to audit
			t.Errorf("%d refused approvals audited, want 4 (self, operator, viewer, unknown id): %v", len(rows), rows)
		}
	})

	t.Run("concurrent approvals publish once", func(t *testing.T) {
		const n = 6
		var wg sync.WaitGroup
		statuses := make([]int, n)
		answers := make([]map[string]any, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses[i], answers[i] = f.call(t, "POST", "/api/v1/approvals/"+id+"/approve", admin2Token, "")
			}()
		}
		wg.Wait()
		won := 0
		for i, st := range statuses {
			switch st {
			case http.StatusAccepted:
				won++
				a := answers[i]["approval"].(map[string]any)
				p := answers[i]["preview"].(map[string]any)
				if a["state"] != "approved" || a["decided_by"] != "admin2" || a["decided_at"] == nil || p["job"] != job {
					t.Errorf("approval answer %v", answers[i])
				}
			case http.StatusConflict:
				if answers[i]["code"] != "decided" || !strings.Contains(answers[i]["error"].(string), "already approved by admin2") {
					t.Errorf("losing approval: %v", answers[i])
				}
			default:
				t.Errorf("approval %d: %d %v", i, st, answers[i])
			}
		}
		if won != 1 {
			t.Fatalf("%d of %d concurrent approvals won, want 1: %v", won, n, statuses)
		}
		done := f.waitJob(t, job)
		if done["started_by"] != "admin, approved by admin2" || done["reason"] != "poisoned cache" || done["done"] != 2.0 {
			t.Errorf("job %v", done)
		}
		// One message on ga's topic: the one approval's flush.
		if after := f.published(t); after-before != 1 {
			t.Errorf("%d messages published by the approvals, want 1", after-before)
		}
		for i, c := range ga {
			if n := dbSize(t, c); n != 0 {
				t.Errorf("ga replica %d holds %d keys after the approved flush", i, n)
			}
		}
		if n := dbSize(t, gb); n != 100 {
			t.Errorf("gb holds %d keys, want its 100", n)
		}
		if l := f.approval(t, id); l["state"] != "approved" || l["decided_by"] != "admin2" {
			t.Errorf("listed approval %v", l)
		}
		rows := f.auditRows(t, func(e map[string]any) bool { return e["action"] == "approve" && e["outcome"] == "accepted" })
		if len(rows) != 1 || rows[0]["user"] != "admin2" || rows[0]["job"] != job || rows[0]["status"] != 202.0 || rows[0]["request"] != `{"approval":"`+id+`"}` {
			t.Errorf("audit of the approval: %v", rows)
		}
	})

	for _, c := range ga {
		fill(t, c, "held:", 100)
	}
	t.Run("reject", func(t *testing.T) {
		before := f.published(t)
		r := f.holdFlush(t, "second thoughts")
		rid := r["id"].(string)
		status, out := f.call(t, "POST", "/api/v1/approvals/"+rid+"/reject", admin2Token, "")
		if a, _ := out["approval"].(map[string]any); status != http.StatusOK || a["state"] != "rejected" || a["decided_by"] != "admin2" || out["preview"] != nil {
			t.Fatalf("reject: %d %v", status, out)
		}
		status, out = f.call(t, "POST", "/api/v1/approvals/"+rid+"/approve", admin2Token, "")
		if status != http.StatusConflict || out["code"] != "decided" || !strings.Contains(out["error"].(string), "already rejected by admin2") {
			t.Errorf("approving a rejected flush: %d %v", status, out)
		}
		if after := f.published(t); after != before {
			t.Errorf("a rejected flush published %d messages", after-before)
		}
		keysLeft(t)
		// The requester may withdraw their own.
		w := f.holdFlush(t, "withdrawn")
		if status, out := f.call(t, "POST", "/api/v1/approvals/"+w["id"].(string)+"/reject", adminToken, ""); status != http.StatusOK {
			t.Errorf("requester withdraws: %d %v", status, out)
		}
	})

	t.Run("expired", func(t *testing.T) {
		before := f.published(t)
		e := f.holdFlush(t, "too late")
		eid := e["id"].(string)
		restore := admin.AdvanceClock(admin.DefaultApprovalTTL + time.Minute)
		defer restore()
		if l := f.approval(t, eid); l["state"] != "expired" {
			t.Errorf("listed past its expiry: %v", l)
		}
		status, out := f.call(t, "POST", "/api/v1/approvals/"+eid+"/approve", admin2Token, "")
		if status != http.StatusConflict || out["code"] != "expired" || !strings.Contains(out["error"].(string), "request the flush again") {
			t.Errorf("approving an expired flush: %d %v", status, out)
		}
		if status, out := f.call(t, "POST", "/api/v1/approvals/"+eid+"/reject", admin2Token, ""); status != http.StatusConflict || out["code"] != "expired" {
			t.Errorf("rejecting an expired flush: %d %v", status, out)
		}
		restore()
		// Marked expired in the table: so it stays with the clock back.
		if l := f.approval(t, eid); l["state"] != "expired" {
			t.Errorf("expired approval listed as %v", l)
		}
		if after := f.published(t); after != before {
			t.Errorf("an expired flush published %d messages", after-before)
		}
		keysLeft(t)
	})

	t.Run("page session needs CSRF", func(t *testing.T) {
		h := f.holdFlush(t, "csrf")
		_, c := f.login(t, admin2Token)
		path := "/api/v1/approvals/" + h["id"].(string) + "/approve"
		if r, out := f.session(t, "POST", path, c, "", "", ""); r.StatusCode != http.StatusForbidden || out["code"] != "csrf" {
			t.Errorf("approve without the CSRF token: %d %v", r.StatusCode, out)
		}
		_, info := f.session(t, "GET", "/api/v1/session", c, "", "", "")
		if info["flush_needs_approval"] != true {
			t.Errorf("session %v", info)
		}
		if r, out := f.session(t, "POST", path, c, info["csrf_token"].(string), "", ""); r.StatusCode != http.StatusAccepted {
			t.Errorf("approve with the CSRF token: %d %v", r.StatusCode, out)
		}
		f.waitJob(t, h["job"].(string))
	})

	t.Run("listing", func(t *testing.T) {
		status, out := f.call(t, "GET", "/api/v1/approvals?limit=2", viewerToken, "")
		if status != http.StatusOK || len(out["approvals"].([]any)) != 2 {
			t.Errorf("limit=2: %d %v", status, out)
		}
		for _, q := range []string{"limit=0", "limit=1001", "limit=x"} {
			if status, out := f.call(t, "GET", "/api/v1/approvals?"+q, viewerToken, ""); status != http.StatusBadRequest {
				t.Errorf("%s: %d %v", q, status, out)
			}
		}
		if status, _ := f.call(t, "GET", "/api/v1/approvals", "", ""); status != http.StatusUnauthorized {
			t.Errorf("without a token: %d", status)
		}
	})
}
