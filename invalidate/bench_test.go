package invalidate_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

var benchColumns = []string{"id", "name", "price", "stock", "view_count", "updated_at"}

func benchBound(b *testing.B) (*invalidate.Rules, *invalidate.Bound) {
	rules, err := invalidate.NewRules([]invalidate.Rule{
		{Table: "shop.item", Keys: []string{"item:{id}", "item:page:{id}"}, RouteBy: "id"},
	}, []string{"hot-a", "hot-b"})
	if err != nil {
		b.Fatal(err)
	}
	bound, err := rules.Bind("shop.item", benchColumns)
	if err != nil {
		b.Fatal(err)
	}
	return rules, bound
}

// updateRows makes n before/after pairs the way canal delivers a bulk UPDATE.
func updateRows(n int) [][]any {
	rows := make([][]any, 0, 2*n)
	for i := 0; i < n; i++ {
		before := []any{int64(i), "item name", "9.99", int32(100), int32(5), "2026-11-21 00:00:00"}
		after := []any{int64(i), "item name", "10.99", int32(100), int32(5), "2026-11-21 00:00:01"}
		rows = append(rows, before, after)
	}
	return rows
}

// benchUpdates is the loop of the rules-only benchmarks: one op is one
// updated row of a bulk UPDATE, its batch reset every 1000 rows (a
// transaction).
func benchUpdates(b *testing.B, rules *invalidate.Rules, bound *invalidate.Bound) {
	const tx = 1000
	rows := updateRows(tx)
	batch := rules.NewBatch()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % tx
		bound.ApplyRow(invalidate.Update, rows[2*j], rows[2*j+1], batch)
		if j == tx-1 {
			batch.Reset()
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkRulesUpdate measures rules alone: one op is one updated row (both
// images rendered, deduplicated and routed).
func BenchmarkRulesUpdate(b *testing.B) {
	rules, bound := benchBound(b)
	benchUpdates(b, rules, bound)
}

// BenchmarkRulesAndPublish measures the canal's hot path after decoding: one
// op is one updated row; every 100 rows form a transaction that is published
// to a real (in-process) nsqd and waited for, as on XID.
func BenchmarkRulesAndPublish(b *testing.B) {
	nsqd := stacktest.StartNSQD(b)
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{nsqd.TCPAddr()}, NSQDHTTP: []string{nsqd.HTTPAddr()},
		Groups:     []invalidate.Group{{Name: "hot-a", Addrs: []string{"r1", "r2"}}, {Name: "hot-b", Addrs: []string{"r3", "r4"}}},
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	ctx := context.Background()
	if err := pub.EnsureChannels(ctx); err != nil {
		b.Fatal(err)
	}
	rules, bound := benchBound(b)
	const tx = 100
	rows := updateRows(100000)
	batch := rules.NewBatch()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % 100000
		bound.ApplyRow(invalidate.Update, rows[2*j], rows[2*j+1], batch)
		if i%tx == tx-1 || i == b.N-1 {
			if err := pub.Publish(ctx, batch, invalidate.Meta{Pos: "bench", Seen: time.Now()}); err != nil {
				b.Fatal(err)
			}
			batch.Reset()
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkRulesUpdateAllTiers is BenchmarkRulesUpdate for a rule with keys,
// URLs and tags and an ignore_changes condition (evaluated, and passed, on
// every row: the price changes).
func BenchmarkRulesUpdateAllTiers(b *testing.B) {
	rules, err := invalidate.NewRulesWithGroups([]invalidate.Rule{{Table: "shop.item", RouteBy: "id",
		Keys: []string{"item:{id}", "item:page:{id}"}, URLs: []string{"/item/{id}.html"}, Tags: []string{"item-{id}"},
		IgnoreChanges: []string{"view_count", "updated_at"}}},
		[]invalidate.Group{{Name: "hot-a"}, {Name: "hot-b"}}, []invalidate.Group{{Name: "varnish-a"}, {Name: "varnish-b"}})
	if err != nil {
		b.Fatal(err)
	}
	bound, err := rules.Bind("shop.item", benchColumns)
	if err != nil {
		b.Fatal(err)
	}
	benchUpdates(b, rules, bound)
}

// BenchmarkRulesNoRuleTable is the canal's cost for a row of a table without
// rules: Bind answers nil (the canal keeps that per schema; here it is even
// looked up per row) and ApplyRow on a nil Bound returns at once.
func BenchmarkRulesNoRuleTable(b *testing.B) {
	rules, _ := benchBound(b)
	rows := updateRows(1)
	batch := rules.NewBatch()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bound, err := rules.Bind("shop.audit_log", benchColumns)
		if err != nil || bound != nil {
			b.Fatal("table without rules bound")
		}
		bound.ApplyRow(invalidate.Update, rows[0], rows[1], batch)
	}
	if batch.Len() != 0 {
		b.Fatal("targets from a table without rules")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
