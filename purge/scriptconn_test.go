package purge

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/invalidate"
)

// The script tells a restart by the run_id it is given, so that run_id
// must be the server's the script runs on. After a replica restarts from
// its snapshot, the purger's first script call must carry the new run_id
// (read on the connection it runs on): one that carried the old server's,
// read on a connection of before the restart, made the restarted
// snapshot look like the same server, and its stale data got a fresh
// watermark until the next call. The slow log shows what each call
// carried.
func TestScriptCallsCarryTheServersRunID(t *testing.T) {
	h := newScriptHarness(t)
	srv, p, r, c := h.srv, h.p, h.r, h.c
	ctx := context.Background()
	apply := func(from, to uint64) watermarkReply {
		t.Helper()
		msg := &invalidate.Purge{V: 1, Group: "g", From: from, To: to, Part: 1, Parts: 1, CaughtUpUnixNano: time.Now().UnixNano()}
		r.wm.saw(msg)
		rep, err := p.applyCoverage(ctx, r, msg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if rep := apply(0, 5); rep.status != "started" {
		t.Fatalf("first message: %+v", rep)
	}
	if err := c.Set(ctx, "item:1", "old", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	oldID := infoField(c.Info(ctx, "server").Val(), "run_id")
	srv.Kill()
	srv.Start()
	newID := infoField(c.Info(ctx, "server").Val(), "run_id")
	if oldID == "" || newID == "" || oldID == newID {
		t.Fatalf("run_ids %q, %q", oldID, newID)
	}

	// The slow log, logging every command, keeps each one's arguments.
	if err := c.ConfigSet(ctx, "slowlog-log-slower-than", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.ConfigSet(ctx, "slowlog-max-len", "1000").Err(); err != nil {
		t.Fatal(err)
	}

	// The script's connection died with the old server: that call fails
	// (NSQ would retry it), the next runs on a new connection.
	msg := &invalidate.Purge{V: 1, Group: "g", From: 5, To: 10, Part: 1, Parts: 1, CaughtUpUnixNano: time.Now().UnixNano()}
	if _, err := p.applyCoverage(ctx, r, msg, nil); err == nil {
		t.Log("the first call after the restart did not fail: it reached the new server")
	}
	rep := apply(5, 10)
	if rep.status != "rejoined" || rep.reason != reasonRestarted {
		t.Errorf("first call after the restart: %+v, want the restart seen", rep)
	}
	// Every script call the server received carried its own run_id.
	entries, err := c.SlowLogGet(ctx, 1000).Result()
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	for _, e := range entries {
		if len(e.Args) == 0 || (!strings.EqualFold(e.Args[0], "evalsha") && !strings.EqualFold(e.Args[0], "eval")) {
			continue
		}
		calls++
		if !slices.Contains(e.Args, newID) || slices.Contains(e.Args, oldID) {
			t.Errorf("a script call after the restart carried another run_id than the server's %s: %q", newID, e.Args)
		}
	}
	if calls == 0 {
		t.Error("MONITOR saw no script call")
	}
	if n := c.Exists(ctx, "item:1").Val(); n != 0 {
		t.Error("the snapshot's item:1 survived the rejoin")
	}
}
