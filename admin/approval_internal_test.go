package admin

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// The table's conditional UPDATE is what keeps two approvals from both
// publishing: here every approver has read the approval pending, as
// concurrent requests all past their read would have, and exactly one
// decision wins.
func TestApprovalDecidedOnce(t *testing.T) {
	database := stacktest.NewDatabase(t)
	// As the daemon opens it: times as text (no parseTime).
	db, err := sql.Open("mysql", "root@tcp("+stacktest.MySQLAddr()+")/?loc=UTC&time_zone=%27%2B00%3A00%27&interpolateParams=true")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx := context.Background()
	a := newApprovals(db, database)
	now := time.Now()
	held := func(id string, expires time.Time) *Approval {
		ap := &Approval{ID: id, State: ApprovalPending, RequestedBy: "alice", Reason: "r", Request: json.RawMessage(`{"reason":"r"}`),
			Created: now, Expires: expires, Job: "job-" + id}
		if err := a.insert(ctx, ap); err != nil {
			t.Fatal(err)
		}
		read, err := a.get(ctx, id, now)
		if err != nil || read == nil || read.State != ApprovalPending {
			t.Fatalf("get %s: %+v %v", id, read, err)
		}
		return read
	}

	ap := held("a1", now.Add(time.Hour))
	const approvers = 10
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range approvers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stale := *ap
			won, err := a.decide(ctx, &stale, ApprovalApproved, fmt.Sprintf("bob%d", i), now)
			if err != nil {
				t.Error(err)
			}
			if won {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d of %d decisions on one pending approval won, want 1", wins.Load(), approvers)
	}
	got, err := a.get(ctx, "a1", now)
	if err != nil || got.State != ApprovalApproved || got.DecidedBy == "" || got.DecidedAt == nil {
		t.Errorf("decided approval: %+v %v", got, err)
	}
	if won, err := a.decide(ctx, ap, ApprovalRejected, "carol", now); won || err != nil {
		t.Errorf("a reject after the approval won (%v, %v)", won, err)
	}

	// The requester's own approval never wins, whatever the handler checked.
	own := held("a2", now.Add(time.Hour))
	if won, err := a.decide(ctx, own, ApprovalApproved, "alice", now); won || err != nil {
		t.Errorf("self-approval won (%v, %v)", won, err)
	}
	// An undone decision is pending again.
	if won, err := a.decide(ctx, own, ApprovalApproved, "bob", now); !won || err != nil {
		t.Fatalf("approval by bob: %v %v", won, err)
	}
	own.State, own.DecidedBy = ApprovalApproved, "bob"
	if err := a.undo(ctx, own); err != nil {
		t.Fatal(err)
	}
	if got, err := a.get(ctx, "a2", now); err != nil || got.State != ApprovalPending || got.DecidedBy != "" || got.DecidedAt != nil {
		t.Errorf("undone approval: %+v %v", got, err)
	}

	// Past its expiry, no decision wins; it reads as expired, and expire
	// marks it so.
	late := held("a3", now.Add(time.Second))
	later := now.Add(2 * time.Second)
	if won, err := a.decide(ctx, late, ApprovalApproved, "bob", later); won || err != nil {
		t.Errorf("approval of an expired one won (%v, %v)", won, err)
	}
	if got, _ := a.get(ctx, "a3", later); got.State != ApprovalExpired {
		t.Errorf("read past its expiry: %+v", got)
	}
	if err := a.expire(ctx, "a3", later); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.get(ctx, "a3", now); got.State != ApprovalExpired {
		t.Errorf("marked expired, read before the expiry: %+v", got)
	}

	list, err := a.recent(ctx, 10, now)
	if err != nil || len(list) != 3 || list[0].ID != "a2" {
		t.Errorf("recent: pending first: %+v %v", list, err)
	}
}
