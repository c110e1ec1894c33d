package ipfixexport

import (
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/flow"
)

// BenchmarkBufferCost measures what the export buffer costs per record it
// can hold: the heap an exporter with BufferRecords = 100k takes once full
// of enriched records (pod names, namespaces, labels, Service: the common
// record without L7 fields), and how long a full garbage collection takes
// with that exporter alive, against the same collection without it (the
// baseline, measured in the same run). A buffer holding pointers is marked
// by every collection; a pointer-free one is not.
func BenchmarkBufferCost(b *testing.B) {
	const n = 100_000
	recs := make([]flow.Record, 1024)
	for i := range recs {
		recs[i] = testRecord(uint64(i), i%4 == 0)
		recs[i].L7 = flow.L7{}
		// Strings of their own, as the enricher's are (not literals).
		recs[i].Source.PodName = string([]byte(recs[i].Source.PodName))
		recs[i].Source.Labels = string([]byte(recs[i].Source.Labels))
	}
	gcTime := func() time.Duration {
		best := time.Duration(1 << 62)
		for range 5 {
			start := time.Now()
			runtime.GC()
			best = min(best, time.Since(start))
		}
		return best
	}
	for i := 0; i < b.N; i++ {
		baseGC := gcTime()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		e, err := New(Config{Address: "127.0.0.1:1", Transport: TCP, BufferRecords: n}, prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		held := 0
		for j := 0; j < n; j++ {
			if e.Export(&recs[j%len(recs)]) {
				held++
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		fullGC := gcTime()
		if got := int(e.buffered()); got != n || held != n {
			b.Fatalf("buffer holds %d of %d records", got, n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-bytes/record")
		b.ReportMetric(float64(fullGC.Microseconds())/1000, "gc-ms-full-buffer")
		b.ReportMetric(float64(baseGC.Microseconds())/1000, "baseline-gc-ms-no-buffer")
		runtime.KeepAlive(e)
	}
}
