package jobs

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

var targets = []invalidate.JobTarget{
	{Tier: "redis", Group: "hot-a", Target: "r1"},
	{Tier: "redis", Group: "hot-a", Target: "r2"},
	{Tier: "http", Group: "web", Target: "v1"},
}

func newStore(t *testing.T, max int) (*Store, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := New(Options{Max: max, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return s, reg
}

func ack(job string, t invalidate.JobTarget, ok bool) invalidate.Ack {
	a := invalidate.Ack{Job: job, Tier: t.Tier, Group: t.Group, Target: t.Target, OK: ok, LatencyMS: 1.5, At: time.Now()}
	if !ok {
		a.Error = "refused"
	}
	return a
}

func TestJobDone(t *testing.T) {
	s, _ := newStore(t, 0)
	s.Expect("j1", targets)
	j, ok := s.Get("j1")
	if !ok || j.State != StatePending || j.Pending != 3 || len(j.Targets) != 3 || len(j.Groups) != 2 {
		t.Fatalf("new job %+v", j)
	}
	s.Ack(ack("j1", targets[0], true))
	s.Ack(ack("j1", targets[0], false)) // a redelivery's ack: ignored
	s.Ack(ack("j1", targets[1], true))
	if j, _ := s.Get("j1"); j.State != StatePending || j.Pending != 1 || j.Done != 2 {
		t.Fatalf("after 2 acks %+v", j)
	}
	s.Ack(ack("j1", targets[2], true))
	j, _ = s.Get("j1")
	if j.State != StateDone || j.Pending != 0 || j.Done != 3 || j.Finished == nil {
		t.Fatalf("after all acks %+v", j)
	}
	for _, tg := range j.Targets {
		if tg.State != StateDone || tg.LatencyMS != 1.5 || tg.AckedAt == nil {
			t.Errorf("target %+v", tg)
		}
	}
	if g := j.Groups[0]; g.Tier != "http" || g.Done != 1 || j.Groups[1].Done != 2 {
		t.Errorf("groups %+v", j.Groups)
	}
}

func TestJobFailed(t *testing.T) {
	s, reg := newStore(t, 0)
	s.Expect("j1", targets)
	s.Ack(ack("j1", targets[0], true))
	s.Ack(ack("j1", targets[1], false))
	if j, _ := s.Get("j1"); j.State != StatePending {
		t.Fatalf("state %s before the last ack", j.State)
	}
	s.Ack(ack("j1", targets[2], true))
	j, _ := s.Get("j1")
	if j.State != StateFailed || j.Failed != 1 || j.Targets[1].Error != "refused" {
		t.Fatalf("job %+v", j)
	}
	if v := stacktest.MetricValue(t, reg, "flashsync_jobs_total", map[string]string{"state": StateFailed}); v != 1 {
		t.Errorf("jobs_total{failed} = %v", v)
	}
	if v := stacktest.MetricValue(t, reg, "flashsync_jobs_total", map[string]string{"state": StateDone}); v != 0 {
		t.Errorf("jobs_total{done} = %v", v)
	}
}

func TestUnknownAcksAndEviction(t *testing.T) {
	s, reg := newStore(t, 3)
	s.Ack(ack("nope", targets[0], true))
	s.Expect("j0", targets[:1])
	s.Ack(ack("j0", invalidate.JobTarget{Tier: "redis", Group: "hot-a", Target: "other"}, true))
	if v := stacktest.MetricValue(t, reg, "flashsync_jobs_unknown_acks_total", nil); v != 2 {
		t.Errorf("unknown acks %v, want 2", v)
	}
	for i := 1; i <= 4; i++ {
		s.Expect(fmt.Sprintf("j%d", i), targets[:1])
	}
	if _, ok := s.Get("j0"); ok {
		t.Error("j0 not evicted")
	}
	if _, ok := s.Get("j1"); ok {
		t.Error("j1 not evicted")
	}
	if s.Len() != 3 || stacktest.MetricValue(t, reg, "flashsync_jobs_evicted_total", nil) != 2 || stacktest.MetricValue(t, reg, "flashsync_jobs_tracked", nil) != 3 {
		t.Errorf("len %d evicted %v tracked %v", s.Len(), stacktest.MetricValue(t, reg, "flashsync_jobs_evicted_total", nil), stacktest.MetricValue(t, reg, "flashsync_jobs_tracked", nil))
	}
	r := s.Recent(2)
	if len(r) != 2 || r[0].ID != "j4" || r[1].ID != "j3" || r[0].Targets != nil {
		t.Errorf("recent %+v", r)
	}
	s.Ack(ack("j1", targets[0], true)) // evicted
	if v := stacktest.MetricValue(t, reg, "flashsync_jobs_unknown_acks_total", nil); v != 3 {
		t.Errorf("unknown acks %v, want 3", v)
	}
	s.Expect("empty", nil)
	if j, _ := s.Get("empty"); j.State != StateDone {
		t.Errorf("job without targets: %s", j.State)
	}
}

func TestConcurrent(t *testing.T) {
	for _, max := range []int{50, 2000} {
		t.Run(fmt.Sprint(max), func(t *testing.T) { testConcurrent(t, max) })
	}
}

// testConcurrent runs 8 writers of 200 jobs each; with max 50 the jobs of
// slow writers may be evicted before their acks.
func testConcurrent(t *testing.T, max int) {
	s, reg := newStore(t, max)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				s.Expect(id, targets)
				for _, tg := range targets {
					s.Ack(ack(id, tg, true))
				}
				s.Get(id)
				s.Recent(10)
			}
		}()
	}
	wg.Wait()
	if want := min(max, 1600); s.Len() != want || stacktest.MetricValue(t, reg, "flashsync_jobs_tracked", nil) != float64(want) {
		t.Errorf("len %d, want %d", s.Len(), want)
	}
	done := stacktest.MetricValue(t, reg, "flashsync_jobs_total", map[string]string{"state": StateDone})
	if evicted := stacktest.MetricValue(t, reg, "flashsync_jobs_evicted_total", nil); evicted != float64(1600-min(max, 1600)) || done > 1600 || (max >= 1600 && done != 1600) {
		t.Errorf("done %v, evicted %v", done, evicted)
	}
}

func TestDescribe(t *testing.T) {
	s, _ := newStore(t, 0)
	if s.Describe("nope", "alice", "x") {
		t.Error("Describe of an unknown job reported true")
	}
	s.Expect("j1", targets)
	if !s.Describe("j1", "alice", "stale price") {
		t.Fatal("Describe of a tracked job reported false")
	}
	j, _ := s.Get("j1")
	if j.StartedBy != "alice" || j.Reason != "stale price" {
		t.Errorf("job %+v: want started_by alice, reason stale price", j)
	}
	if r := s.Recent(1); r[0].StartedBy != "alice" {
		t.Errorf("recent job %+v lacks started_by", r[0])
	}
	s.Expect("j2", targets)
	if j, _ := s.Get("j2"); j.StartedBy != "" || j.Reason != "" {
		t.Errorf("a job of the binlog path has an origin: %+v", j)
	}
}
