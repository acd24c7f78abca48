//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// On a first start no nsqd has flashsync's topics yet: the canal creates
// them (and every replica's channel) as it starts, while the purgers are
// already asking for them. The first change after the start must be purged
// as fast as the later ones, not at the purgers' next nsqlookupd poll.
// With two nsqd, go-nsq could also leave a purger's connection to one of
// them at RDY 0 for its first 5 s; whether it does depends on map order, so
// a run catches that only in some starts.
func TestFirstStartFirstPurgeOnTime(t *testing.T) {
	for _, tt := range []struct {
		name    string
		lookupd bool // purgers find the nsqd through nsqlookupd, else connect to nsqd_tcp
		// split runs the canal and the purger as two processes, the canal
		// publishing to the nsqd the purger connects to last.
		split bool
	}{
		{name: "nsqlookupd", lookupd: true},
		{name: "nsqd_tcp"},
		{name: "nsqd_tcp canal on the second nsqd", split: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			// Two nsqd, as the shared stack has: the canal publishes to its
			// first, a purger reads both.
			var nsqds []*stacktest.NSQD
			var lookupdHTTP string
			if tt.lookupd {
				lookupd := stacktest.StartNSQLookupd(t)
				lookupdHTTP = lookupd.HTTPAddr()
				nsqds = []*stacktest.NSQD{stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr()), stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr())}
			} else {
				nsqds = []*stacktest.NSQD{stacktest.StartNSQD(t), stacktest.StartNSQD(t)}
			}
			for _, n := range nsqds {
				if topics := nsqdTopics(t, n.HTTPAddr()); len(topics) > 0 {
					t.Fatalf("nsqd %s has topics %v before the start, want none", n.HTTPAddr(), topics)
				}
			}

			// One row per group, so the first change reaches every replica.
			changed := []int{idsInGroup(0, 1, 1)[0], idsInGroup(1, 1, 1)[0]}
			untouched := []int{idsInGroup(0, 100, 1)[0], idsInGroup(1, 100, 1)[0]}
			e.insert(cat(changed, untouched)...)
			if tt.split {
				purgerCfg := e.cfg
				purgerCfg.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
				purger := startFlashsync(t, "purger", "purger", "-config", writeFile(t, "purger.toml", withNSQ(t, purgerCfg.TOML(), nsqds, lookupdHTTP)))
				stacktest.Eventually(t, 20*time.Second, func() error {
					if purger.exited() {
						t.Fatalf("purger exited before it was ready (%v); stderr:\n%s", purger.err, purger.stderr.String())
					}
					status, body, err := (&env{cfg: purgerCfg}).healthz()
					if err == nil && status != http.StatusOK {
						err = fmt.Errorf("purger /healthz answered %d %s", status, strings.TrimSpace(body))
					}
					return err
				})
				e.cfgPath = writeFile(t, "canal.toml", withNSQ(t, e.cfg.TOML(), []*stacktest.NSQD{nsqds[1], nsqds[0]}, lookupdHTTP))
				e.waitReady(startFlashsync(t, "canal", "canal", "-config", e.cfgPath))
			} else {
				e.cfgPath = writeFile(t, "flashsync.toml", withNSQ(t, e.cfg.TOML(), nsqds, lookupdHTTP))
				e.start("flashsync")
			}
			e.seed(cat(changed, untouched))

			commit := time.Now()
			e.exec(fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id IN (%s)", e.db, joinInts(changed)))
			took := e.timePurged(commit, 15*time.Second, changed)
			var slowest time.Duration
			for _, addr := range e.allReplicas() {
				d, ok := took[addr]
				if !ok {
					t.Errorf("replica %s: first purge not applied within 15 s of its commit", addr)
					continue
				}
				t.Logf("replica %s (group %d): first purge applied %v after its commit", addr, e.groupOfAddr(addr), d.Round(time.Millisecond))
				slowest = max(slowest, d)
			}
			if slowest >= purgeDeadline {
				t.Errorf("first purge after a first start reached every replica %v after its commit, want < %v", slowest.Round(time.Millisecond), purgeDeadline)
			}
			e.checkControls(changed, untouched)
		})
	}
}

// timePurged polls every replica of the groups of ids until the keys of ids
// are gone from it, for at most timeout after from, and returns how long
// after from each replica was found purged (absent: not within timeout).
func (e *env) timePurged(from time.Time, timeout time.Duration, ids []int) map[string]time.Duration {
	e.t.Helper()
	pending := map[string][]int{}
	for _, id := range ids {
		for _, addr := range e.replicas(groupOf(id)) {
			pending[addr] = append(pending[addr], id)
		}
	}
	took := map[string]time.Duration{}
	for len(pending) > 0 && time.Since(from) < timeout {
		for addr, ids := range pending {
			if e.presence(addr, false, ids...) == nil {
				took[addr] = time.Since(from)
				delete(pending, addr)
			}
		}
		time.Sleep(time.Millisecond)
	}
	return took
}

// withNSQ replaces the [nsq] daemons of a config rendered by Config.TOML
// with nsqds and, if lookupdHTTP is set, nsqlookupd.
// nsqdAddrs is an nsqd a test started, in its process or as a child.
type nsqdAddrs interface {
	TCPAddr() string
	HTTPAddr() string
}

func withNSQ[N nsqdAddrs](t *testing.T, toml string, nsqds []N, lookupdHTTP string) string {
	t.Helper()
	start := strings.Index(toml, "[nsq]\nnsqd_tcp = ")
	if start < 0 {
		t.Fatalf("config has no [nsq] nsqd_tcp:\n%s", toml)
	}
	start += len("[nsq]\n")
	end := strings.Index(toml[start:], "topic_prefix = ")
	if end < 0 {
		t.Fatalf("config has no [nsq] topic_prefix:\n%s", toml)
	}
	var tcp, api []string
	for _, n := range nsqds {
		tcp = append(tcp, strconv.Quote(n.TCPAddr()))
		api = append(api, strconv.Quote(n.HTTPAddr()))
	}
	section := fmt.Sprintf("nsqd_tcp = [%s]\nnsqd_http = [%s]\n", strings.Join(tcp, ", "), strings.Join(api, ", "))
	if lookupdHTTP != "" {
		section += fmt.Sprintf("nsqlookupd_http = [%q]\n", lookupdHTTP)
	}
	return toml[:start] + section + toml[start+end:]
}

// nsqdTopics lists the topics of the nsqd whose HTTP API is at addr.
func nsqdTopics(t *testing.T, addr string) []string {
	t.Helper()
	resp, err := httpClient.Get("http://" + addr + "/stats?format=json")
	if err != nil {
		t.Fatalf("nsqd %s stats: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("nsqd %s stats: %s", addr, resp.Status)
	}
	var stats struct {
		Topics []struct {
			Name string `json:"topic_name"`
		} `json:"topics"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		t.Fatalf("nsqd %s stats: %v", addr, err)
	}
	var names []string
	for _, tp := range stats.Topics {
		names = append(names, tp.Name)
	}
	return names
}
