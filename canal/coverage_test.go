package canal_test

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/internal/route"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// coverageLog collects every message of both groups as a purger would
// receive them from nsqd.
type coverageLog struct {
	mu   sync.Mutex
	msgs map[string][]*invalidate.Purge
}

func (l *coverageLog) add(group string, m *invalidate.Purge) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs[group] = append(l.msgs[group], m)
}

func (l *coverageLog) get(group string) []*invalidate.Purge {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.msgs[group])
}

// covered is the end of the unbroken range the messages cover from start,
// whatever order they came in, or an error naming the first hole.
func covered(msgs []*invalidate.Purge, start uint64) (uint64, error) {
	parts := map[[2]uint64]int{}
	var ranges [][2]uint64
	for _, m := range msgs {
		if !m.Covers() {
			return 0, fmt.Errorf("message without coverage: %+v", *m)
		}
		r := [2]uint64{m.From, m.To}
		if parts[r]++; parts[r] == m.Parts {
			ranges = append(ranges, r)
		}
	}
	slices.SortFunc(ranges, func(a, b [2]uint64) int { return cmp.Compare(a[0], b[0]) })
	end := start
	for _, r := range ranges {
		if r[0] > end {
			var near []string
			for _, m := range msgs {
				if m.To >= end-3000 && m.From <= r[0]+3000 {
					near = append(near, fmt.Sprintf("(%d,%d] %d/%d hb=%v keys=%v pos=%s", m.From&0xffffffff, m.To&0xffffffff, m.Part, m.Parts, m.Heartbeat, m.Keys, m.Pos))
				}
			}
			return end, fmt.Errorf("hole between %d and %d: %v", end&0xffffffff, r[0]&0xffffffff, near)
		}
		end = max(end, r[1])
	}
	return end, nil
}

// slowPublisher delays every publish, the way a distant nsqd would, so the
// canal falls behind the writes and its heartbeats read binlog ends it has
// not reached yet.
type slowPublisher struct {
	canal.Publisher
	delay time.Duration
}

func (p slowPublisher) Publish(ctx context.Context, b *invalidate.Batch, m invalidate.Meta) error {
	time.Sleep(p.delay)
	return p.Publisher.Publish(ctx, b, m)
}

// The canal's Redis messages and heartbeats, through a real publisher and
// nsqd, cover the binlog without a hole from its checkpoint, in both
// groups (one busy, one quiet), across a restart; no message claims to be
// caught up past a commit it does not cover; and heartbeats keep the
// caught-up time moving while nothing changes. Publishes are slowed so the
// canal reads behind the writes: the caught-up claims are then tested where
// they could be wrong.
func TestCoverageAndHeartbeats(t *testing.T) {
	nsqd := stacktest.StartNSQD(t)
	db := stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, fmt.Sprintf("CREATE TABLE %s.item (id BIGINT PRIMARY KEY, name VARCHAR(50))", db))
	stacktest.Exec(t, conn, fmt.Sprintf("CREATE TABLE %s.other (id BIGINT PRIMARY KEY)", db))
	groups := []invalidate.Group{{Name: "ga", Addrs: []string{"a1"}}, {Name: "gb", Addrs: []string{"b1"}}}
	rules, err := invalidate.NewRules([]invalidate.Rule{{Table: db + ".item", Keys: []string{"item:{id}"}, RouteBy: "name"}}, []string{"ga", "gb"})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{NSQDTCP: []string{nsqd.TCPAddr()}, NSQDHTTP: []string{nsqd.HTTPAddr()},
		Groups: groups, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	if err := pub.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	log := &coverageLog{msgs: map[string][]*invalidate.Purge{}}
	for _, g := range groups {
		ch := stacktest.Consume(t, nsqd.TCPAddr(), invalidate.RedisTopic(invalidate.DefaultTopicPrefix, g.Name), invalidate.ReplicaChannel(g.Addrs[0]), invalidate.DecodePurge)
		go func() {
			for m := range ch {
				log.add(g.Name, m)
			}
		}()
	}
	// Every row's name routes to ga (checked below): gb stays quiet.
	name := ""
	for i := 0; ; i++ {
		if name = fmt.Sprint("n", i); route.GroupFor([]byte(name), 2) == 0 {
			break
		}
	}
	posFile := filepath.Join(t.TempDir(), "position")
	run := func() (stop func()) {
		c, err := canal.New(canal.Options{
			MySQL:        canal.Source{Addr: stacktest.MySQLAddr(), User: "root", Flavor: "mariadb", ServerID: uint32(20000 + rand.IntN(30000))},
			PositionFile: posFile, IncludeTables: []string{db + `\..*`}, SaveInterval: time.Millisecond,
			HeartbeatInterval: 10 * time.Millisecond, Rules: rules, Publisher: slowPublisher{pub, 20 * time.Millisecond}, Registerer: prometheus.NewRegistry(),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		stop = sync.OnceFunc(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("canal: %v", err)
			}
		})
		t.Cleanup(stop)
		return stop
	}
	stop := run()
	var start canal.Position
	stacktest.Eventually(t, 10*time.Second, func() error {
		p, ok, err := canal.NewPositionFile(posFile).Load()
		if !ok {
			return fmt.Errorf("no position saved yet (%v)", err)
		}
		start = p
		return nil
	})
	startOffset, _ := invalidate.BinlogOffset(start.File, start.Pos)

	type commit struct {
		key  string
		done time.Time // after the commit returned
	}
	var commits []commit
	write := func(from, to int) {
		for id := from; id < to; id++ {
			stacktest.Exec(t, conn, fmt.Sprintf("INSERT INTO %s.item VALUES (%d, '%s')", db, id, name))
			commits = append(commits, commit{fmt.Sprint("item:", id), time.Now()})
		}
	}
	write(1, 101)
	// Once caught up past the last commit, every group's range is whole.
	waitCaughtUp := func(after time.Time) {
		t.Helper()
		stacktest.Eventually(t, 10*time.Second, func() error {
			for _, g := range groups {
				msgs := log.get(g.Name)
				if _, err := covered(msgs, startOffset); err != nil {
					return fmt.Errorf("%s: %v", g.Name, err)
				}
				if !slices.ContainsFunc(msgs, func(m *invalidate.Purge) bool { return m.CaughtUpUnixNano > after.UnixNano() }) {
					return fmt.Errorf("%s: no message caught up past %v yet (%d messages)", g.Name, after, len(msgs))
				}
			}
			return nil
		})
	}
	waitCaughtUp(commits[len(commits)-1].done)

	// Restart on the same position file: the new session starts at the
	// checkpoint, at or before what was covered, so nothing is missed.
	// A commit with no targets moves the position and publishes nothing:
	// the next session must still start where the coverage ended.
	stacktest.Exec(t, conn, fmt.Sprintf("INSERT INTO %s.other VALUES (1)", db))
	stop()
	run()
	write(101, 141)
	waitCaughtUp(commits[len(commits)-1].done)
	idleFrom := time.Now()
	waitCaughtUp(idleFrom.Add(300 * time.Millisecond)) // heartbeats only

	ga, gb := log.get("ga"), log.get("gb")
	for _, m := range gb {
		if !m.Heartbeat {
			t.Errorf("gb, which no row routes to, got %+v", *m)
		}
	}
	// No message claims to be caught up past a commit it does not cover:
	// a message whose range ends before the range holding a commit's key
	// began saw caught-up times only before that commit.
	for _, c := range commits {
		i := slices.IndexFunc(ga, func(m *invalidate.Purge) bool { return slices.Contains(m.Keys, c.key) })
		if i < 0 {
			t.Fatalf("%s never published to ga", c.key)
		}
		for _, m := range append(ga, gb...) {
			if m.To <= ga[i].From && m.CaughtUpUnixNano > c.done.UnixNano() {
				t.Errorf("message (%d, %d] is caught up at %v, after %s committed at %v in (%d, %d]",
					m.From, m.To, time.Unix(0, m.CaughtUpUnixNano), c.key, c.done, ga[i].From, ga[i].To)
			}
		}
	}
	beats := 0
	for _, m := range gb {
		if m.CaughtUpUnixNano > idleFrom.UnixNano() {
			beats++
		}
	}
	t.Logf("%d messages to ga, %d to gb (%d heartbeats of gb after the writes stopped)", len(ga), len(gb), beats)
}
