package expirequeue

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// A sink that refuses for a while loses nothing: every refused record is
// offered again on a later round, closed connections are exported exactly
// once with end-of-flow, and moving ones keep being exported.
func TestRefusedRecordsAreOfferedAgain(t *testing.T) {
	const s = time.Second
	reg := prometheus.NewRegistry()
	q, err := New(Config{ActiveTimeout: 5 * s, IdleTimeout: 15 * s}, reg)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeSource()
	const n = 1000
	for h := Handle(1); h <= n; h++ {
		f.add(q, h, 0, true)
		if h%2 == 0 {
			f.close(q, h)
		}
	}
	offered, taken := 0, 0
	refuseUntil := 3 * s
	var at time.Duration
	emit := func(*flow.Record) bool {
		offered++
		if at < refuseUntil {
			return false
		}
		taken++
		return true
	}
	for at = 100 * time.Millisecond; at <= 6*s; at += 100 * time.Millisecond {
		before := offered
		if _, err := q.Expire(t0.Add(at), f, emit); err != nil {
			t.Fatal(err)
		}
		if at < refuseUntil && offered-before != MaxRefusalsPerRound {
			t.Fatalf("round at %s offered %d records to a refusing sink, want it to stop after %d", at, offered-before, MaxRefusalsPerRound)
		}
	}
	ends := map[Handle]int{}
	actives := map[Handle]int{}
	for _, e := range f.exports {
		switch e.reason {
		case flow.EndOfFlow:
			ends[e.h]++
		case flow.EndActiveTimeout:
			actives[e.h]++
		default:
			t.Fatalf("unexpected export %+v", e)
		}
		if e.at < refuseUntil {
			t.Fatalf("export %+v recorded while the sink refused", e)
		}
	}
	for h := Handle(1); h <= n; h++ {
		if h%2 == 0 && ends[h] != 1 {
			t.Fatalf("closed connection %d exported with end-of-flow %d times, want once", h, ends[h])
		}
		if h%2 == 1 && actives[h] != 1 {
			// Their first deadline (5s) comes after the sink's refusals.
			t.Fatalf("moving connection %d got %d active records by 6s, want 1", h, actives[h])
		}
	}
	if taken != len(f.exports) {
		t.Fatalf("sink took %d records, source recorded %d exports", taken, len(f.exports))
	}
	refused := gather(t, reg)["flowlens_expirequeue_records_refused_total"]
	if int(refused) != offered-taken {
		t.Fatalf("refused counter = %v, want %d", refused, offered-taken)
	}
}

// With spreading, connections first seen together come due spread over one
// ActiveTimeout, and a moving connection keeps an ActiveTimeout cadence.
// The baseline without spreading, in the same run, has them all in one tick.
func TestSpreadActiveDeadlines(t *testing.T) {
	const (
		s    = time.Second
		n    = 10_000
		tick = 100 * time.Millisecond
	)
	for _, spread := range []bool{false, true} {
		q, err := New(Config{ActiveTimeout: 5 * s, IdleTimeout: time.Hour, SpreadActiveDeadlines: spread}, nil)
		if err != nil {
			t.Fatal(err)
		}
		src := &sliceSource{t: make([]Timing, n)}
		for h := range src.t {
			src.t[h] = Timing{LastActive: ns(0), PeriodStart: ns(0), Moved: true}
			q.Track(Handle(h), ns(0))
		}
		exports := make([][]time.Duration, n)
		maxPerTick := 0
		for at := tick; at <= 20*s; at += tick {
			before := make([]int64, n)
			for h := range src.t {
				before[h] = src.t[h].PeriodStart
			}
			got, err := q.Expire(t0.Add(at), src, take)
			if err != nil {
				t.Fatal(err)
			}
			maxPerTick = max(maxPerTick, got)
			for h := range src.t {
				if src.t[h].PeriodStart != before[h] {
					exports[h] = append(exports[h], at)
					src.t[h].Moved, src.t[h].LastActive = true, ns(at)
				}
			}
		}
		if !spread {
			if maxPerTick != n {
				t.Fatalf("without spreading the largest tick exported %d records, want all %d in one", maxPerTick, n)
			}
			continue
		}
		// 50 ticks per ActiveTimeout: 200 per tick on average.
		if maxPerTick > 2*n/50 {
			t.Fatalf("with spreading the largest tick exported %d records, want at most %d", maxPerTick, 2*n/50)
		}
		t.Logf("largest tick: %d records without spreading, %d with", n, maxPerTick)
		for h, ex := range exports {
			if len(ex) < 3 {
				t.Fatalf("connection %d exported at %v, want at least 3 records in 20s", h, ex)
			}
			if ex[0] < 5*s/2 || ex[0] > 15*s/2+tick {
				t.Fatalf("connection %d first exported at %s, want within [2.5s, 7.6s]", h, ex[0])
			}
			for i := 1; i < len(ex); i++ {
				if d := ex[i] - ex[i-1]; d < 5*s-tick || d > 5*s+tick {
					t.Fatalf("connection %d exported at %v: a gap of %s, want ActiveTimeout (5s) within a tick", h, ex, d)
				}
			}
		}
	}
}

// activeDeadline on the grid: at least ActiveTimeout/2 after the period's
// start, less than 1.5×ActiveTimeout, and congruent to the handle's phase.
func TestActiveDeadlineGrid(t *testing.T) {
	q, err := New(Config{ActiveTimeout: 5 * time.Second, SpreadActiveDeadlines: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for h := Handle(0); h < 1000; h++ {
		phase := int64(mix(uint64(h)) % uint64(q.active))
		for _, p := range []int64{0, 1, ns(0), ns(0) + 123456789, ns(time.Hour) - 1} {
			d := q.activeDeadline(h, p)
			if d < p+q.active/2 || d >= p+q.active/2+q.active {
				t.Fatalf("deadline of %d from %d = %d: %d after the start, want in [%d, %d)", h, p, d, d-p, q.active/2, q.active/2+q.active)
			}
			if ((d-phase)%q.active+q.active)%q.active != 0 {
				t.Fatalf("deadline of %d from %d = %d is off the grid (phase %d)", h, p, d, phase)
			}
		}
	}
}
