package expirequeue

import (
	"runtime"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// sliceSource is a Source with no work of its own, so the benchmark times
// the queue: handles index a slice of Timing.
type sliceSource struct {
	t   []Timing
	rec flow.Record
}

func (s *sliceSource) Timing(h Handle) (Timing, bool) { return s.t[h], true }

func (s *sliceSource) Export(h Handle, reason flow.EndReason, now int64, emit func(*flow.Record) bool) bool {
	s.rec.EndReason, s.rec.ExportNanos = reason, now
	if !emit(&s.rec) {
		return false
	}
	s.t[h].PeriodStart, s.t[h].Moved = now, false
	return true
}

// BenchmarkQueueExpire100k times one Expire over 100k connections due for
// an active-timeout export, each re-armed in place. Baseline: ranging over a
// map of 100k Timing values and emitting a record for each.
func BenchmarkQueueExpire100k(b *testing.B) {
	const n = 100_000
	emitted := 0
	emit := func(*flow.Record) bool { emitted++; return true }
	var elapsed time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		q, err := New(Config{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		src := &sliceSource{t: make([]Timing, n)}
		for h := range src.t {
			src.t[h] = Timing{LastActive: ns(0), PeriodStart: ns(0), Moved: true}
			// Spread first-seen times over a second, as a real dump does.
			q.Track(Handle(h), ns(time.Duration(h)*10*time.Microsecond))
		}
		emitted = 0
		b.StartTimer()
		start := time.Now()
		if _, err := q.Expire(t0.Add(DefaultActiveTimeout+time.Second), src, emit); err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(start)
		b.StopTimer()
		if emitted != n {
			b.Fatalf("emitted %d, want %d", emitted, n)
		}
	}
	b.ReportMetric(float64(n*b.N)/elapsed.Seconds(), "records/s")

	m := make(map[Handle]Timing, n)
	for h := Handle(0); h < n; h++ {
		m[h] = Timing{Moved: true}
	}
	runtime.GC()
	var rec flow.Record
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for h, t := range m {
			if t.Moved {
				rec.ExportNanos = int64(h)
				emit(&rec)
			}
		}
	}
	b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "baseline-map-range-records/s")
}
