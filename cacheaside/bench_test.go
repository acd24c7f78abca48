package cacheaside_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashsync/flashsync/cacheaside"
)

// BenchmarkGet is the cost of the staleness check: hits of 100 hot keys
// through a group of two private Redis servers, with the watermark read in
// the same MGET and judged (staleness_check) and with a plain GET
// (no_check), in one run. 16 readers per CPU keep both servers busy, so
// reads/s is the Reader's throughput rather than one round trip's latency.
//
// On a shared machine the two sub-benchmarks run seconds apart under
// different loads; paired alternates the two readers every 4,000 reads
// (which goes first alternating too), so both see the same moments, and
// reports the ratio of their reads/s.
//
// Each also reports the CPU a read costs, in the benchmark's process
// (client_µs/read) and in the two redis-servers (server_µs/read): the
// check's own cost, which other tenants of the machine disturb far less
// than they disturb reads/s.
func BenchmarkGet(b *testing.B) {
	servers, g := group(b, 2)
	pids := []int{servers[0].PID(), servers[1].PID()}
	ctx := context.Background()
	value := []byte(`{"id":"1","name":"` + strings.Repeat("x", 160) + `","price":"19.90","stock":"42"}`)
	for k := range 100 {
		for _, c := range g.Replicas {
			c.Set(ctx, "item:"+strconv.Itoa(k), cacheaside.EncodeValue(time.Now(), value), 0)
		}
	}
	errMissed := errors.New("a benchmark read missed")
	load := func(context.Context) ([]byte, error) { return nil, errMissed }
	reader := func(b *testing.B, maxStaleness time.Duration) *cacheaside.Reader {
		// A long ReplicaTimeout: on a loaded machine a read that waits
		// 100 ms for a CPU would go to the other replica, and the
		// benchmark is of the check, not of that.
		r, err := cacheaside.New(cacheaside.Options{Groups: []cacheaside.Group{g}, MaxStaleness: maxStaleness, ReplicaTimeout: 10 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	read := func(b *testing.B, r *cacheaside.Reader, k int) bool {
		v, res, err := r.Get(ctx, "item:"+strconv.Itoa(k%100), "1", load)
		if err != nil || res != cacheaside.Hit || len(v) != len(value) {
			b.Errorf("read: %d bytes, %v %v", len(v), res, err)
			return false
		}
		return true
	}
	for _, bc := range []struct {
		name         string
		maxStaleness time.Duration
	}{{"staleness_check", 0}, {"no_check", cacheaside.NoStalenessCheck}} {
		b.Run(bc.name, func(b *testing.B) {
			r := reader(b, bc.maxStaleness)
			b.SetParallelism(16)
			b.ReportAllocs()
			start := time.Now()
			self0, servers0, cpuOK := cpuUsed(pids)
			b.RunParallel(func(pb *testing.PB) {
				for k := 0; pb.Next() && read(b, r, k); k++ {
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "reads/s")
			if self1, servers1, ok := cpuUsed(pids); ok && cpuOK {
				b.ReportMetric(float64((self1-self0).Microseconds())/float64(b.N), "client_µs/read")
				b.ReportMetric(float64((servers1-servers0).Microseconds())/float64(b.N), "server_µs/read")
			}
		})
	}
	b.Run("paired", func(b *testing.B) {
		readers := [2]*cacheaside.Reader{reader(b, 0), reader(b, cacheaside.NoStalenessCheck)}
		var took, selfCPU, serverCPU [2]time.Duration
		var reads [2]int
		cpuOK := true
		const round, workers = 4000, 32
		for n, i := 0, 0; n < b.N; i++ {
			for j := range 2 {
				mode := (i + j) % 2
				start := time.Now()
				self0, servers0, ok0 := cpuUsed(pids)
				var wg sync.WaitGroup
				for w := range workers {
					wg.Go(func() {
						for k := w; k < round; k += workers {
							if !read(b, readers[mode], k) {
								return
							}
						}
					})
				}
				wg.Wait()
				took[mode] += time.Since(start)
				self1, servers1, ok1 := cpuUsed(pids)
				selfCPU[mode] += self1 - self0
				serverCPU[mode] += servers1 - servers0
				cpuOK = cpuOK && ok0 && ok1
				reads[mode] += round
			}
			n += 2 * round
		}
		check := float64(reads[0]) / took[0].Seconds()
		plain := float64(reads[1]) / took[1].Seconds()
		b.ReportMetric(check, "check_reads/s")
		b.ReportMetric(plain, "no_check_reads/s")
		b.ReportMetric(check/plain, "check/no_check")
		if cpuOK {
			perRead := func(d [2]time.Duration, mode int) float64 {
				return float64(d[mode].Microseconds()) / float64(reads[mode])
			}
			b.ReportMetric(perRead(selfCPU, 0)+perRead(serverCPU, 0), "check_cpu_µs/read")
			b.ReportMetric(perRead(selfCPU, 1)+perRead(serverCPU, 1), "no_check_cpu_µs/read")
		}
	})
}
