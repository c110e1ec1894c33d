package expirequeue

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
)

var t0 = time.Unix(1_700_000_000, 0)

func ns(d time.Duration) int64 { return t0.Add(d).UnixNano() }

// take is an emit function that takes every record.
func take(*flow.Record) bool { return true }

// fakeSource plays the store: it keeps Timing per handle and applies the
// documented effect of each export.
type fakeSource struct {
	conns   map[Handle]*Timing
	exports []export
}

type export struct {
	h      Handle
	reason flow.EndReason
	at     time.Duration
}

func newFakeSource() *fakeSource { return &fakeSource{conns: map[Handle]*Timing{}} }

func (f *fakeSource) Timing(h Handle) (Timing, bool) {
	t, ok := f.conns[h]
	if !ok {
		return Timing{}, false
	}
	return *t, true
}

func (f *fakeSource) Export(h Handle, reason flow.EndReason, now int64, emit func(*flow.Record) bool) bool {
	t := f.conns[h]
	if !emit(&flow.Record{EndReason: reason, ExportNanos: now}) {
		return false
	}
	f.exports = append(f.exports, export{h: h, reason: reason, at: time.Duration(now - t0.UnixNano())})
	t.PeriodStart, t.Moved = now, false
	switch reason {
	case flow.EndIdleTimeout:
		t.Idle = true
	case flow.EndOfFlow:
		delete(f.conns, h)
	}
	return true
}

// add registers a connection first seen at d and tracks it.
func (f *fakeSource) add(q *Queue, h Handle, d time.Duration, moved bool) {
	f.conns[h] = &Timing{LastActive: ns(d), PeriodStart: ns(d), Moved: moved}
	q.Track(h, ns(d))
}

// move records counter movement at d, tracking again if it was idle, as the
// store does.
func (f *fakeSource) move(q *Queue, h Handle, d time.Duration) {
	t := f.conns[h]
	t.LastActive, t.Moved = ns(d), true
	if t.Idle {
		t.Idle, t.PeriodStart = false, ns(d)
		q.Track(h, ns(d))
	}
}

func (f *fakeSource) close(q *Queue, h Handle) {
	f.conns[h].Closed = true
	q.Due(h)
}

func TestExpire(t *testing.T) {
	const s = time.Second
	type step struct {
		at   time.Duration // Expire runs at t0+at, after do
		do   func(f *fakeSource, q *Queue)
		want []export
	}
	tests := []struct {
		name  string
		setup func(f *fakeSource, q *Queue)
		steps []step
	}{
		{
			name:  "moving connection exported every ActiveTimeout with reason active-timeout",
			setup: func(f *fakeSource, q *Queue) { f.add(q, 1, 0, true) },
			steps: []step{
				{at: 4 * s},
				{at: 5 * s, want: []export{{1, flow.EndActiveTimeout, 5 * s}}},
				{at: 9 * s, do: func(f *fakeSource, q *Queue) { f.move(q, 1, 7*s) }},
				{at: 10 * s, want: []export{{1, flow.EndActiveTimeout, 10 * s}}},
			},
		},
		{
			name:  "late tick exports once and keeps the cadence from the export",
			setup: func(f *fakeSource, q *Queue) { f.add(q, 1, 0, true) },
			steps: []step{
				{at: 7 * s, want: []export{{1, flow.EndActiveTimeout, 7 * s}}},
				{at: 11 * s, do: func(f *fakeSource, q *Queue) { f.move(q, 1, 8*s) }},
				{at: 12 * s, want: []export{{1, flow.EndActiveTimeout, 12 * s}}},
			},
		},
		{
			name:  "connection without new counters is not re-exported at active timeout",
			setup: func(f *fakeSource, q *Queue) { f.add(q, 1, 0, true) },
			steps: []step{
				{at: 5 * s, want: []export{{1, flow.EndActiveTimeout, 5 * s}}},
				{at: 10 * s},
				{at: 14 * s},
			},
		},
		{
			name:  "still connection exported once as idle and not again",
			setup: func(f *fakeSource, q *Queue) { f.add(q, 1, 0, true) },
			steps: []step{
				{at: 5 * s, want: []export{{1, flow.EndActiveTimeout, 5 * s}}},
				{at: 14 * s},
				{at: 15 * s, want: []export{{1, flow.EndIdleTimeout, 15 * s}}},
				{at: 60 * s},
				{at: 600 * s},
			},
		},
		{
			name:  "idle connection that moves again starts a new period",
			setup: func(f *fakeSource, q *Queue) { f.add(q, 1, 0, false) },
			steps: []step{
				{at: 15 * s, want: []export{{1, flow.EndIdleTimeout, 15 * s}}},
				{at: 20 * s, do: func(f *fakeSource, q *Queue) { f.move(q, 1, 20*s) }},
				{at: 24 * s},
				{at: 25 * s, want: []export{{1, flow.EndActiveTimeout, 25 * s}}},
				{at: 35 * s, want: []export{{1, flow.EndIdleTimeout, 35 * s}}},
			},
		},
		{
			name:  "activity postpones idle timeout",
			setup: func(f *fakeSource, q *Queue) { f.add(q, 1, 0, false) },
			steps: []step{
				{at: 5 * s},
				{at: 10 * s},
				{at: 12 * s, do: func(f *fakeSource, q *Queue) { f.move(q, 1, 12*s) }},
				{at: 15 * s, want: []export{{1, flow.EndActiveTimeout, 15 * s}}},
				{at: 26 * s},
				{at: 27 * s, want: []export{{1, flow.EndIdleTimeout, 27 * s}}},
			},
		},
		{
			name:  "closed connection exported on next tick with end-of-flow and forgotten",
			setup: func(f *fakeSource, q *Queue) { f.add(q, 1, 0, true) },
			steps: []step{
				{at: 1 * s, do: func(f *fakeSource, q *Queue) { f.close(q, 1) },
					want: []export{{1, flow.EndOfFlow, 1 * s}}},
				{at: 5 * s},
				{at: 30 * s},
			},
		},
		{
			name: "closed idle connection exported with end-of-flow",
			setup: func(f *fakeSource, q *Queue) {
				f.add(q, 1, 0, false)
			},
			steps: []step{
				{at: 15 * s, want: []export{{1, flow.EndIdleTimeout, 15 * s}}},
				{at: 40 * s, do: func(f *fakeSource, q *Queue) { f.close(q, 1) },
					want: []export{{1, flow.EndOfFlow, 40 * s}}},
			},
		},
		{
			name: "handle the source forgot is discarded without export",
			setup: func(f *fakeSource, q *Queue) {
				f.add(q, 1, 0, true)
				delete(f.conns, 1)
			},
			steps: []step{{at: 30 * s}},
		},
		{
			name: "due connections handled in deadline order, closed first",
			setup: func(f *fakeSource, q *Queue) {
				f.add(q, 3, 2*s, true)
				f.add(q, 1, 0, true)
				f.add(q, 2, 1*s, true)
				f.add(q, 4, 3*s, true)
				f.close(q, 4)
			},
			steps: []step{{at: 7 * s, want: []export{
				{4, flow.EndOfFlow, 7 * s},
				{1, flow.EndActiveTimeout, 7 * s},
				{2, flow.EndActiveTimeout, 7 * s},
				{3, flow.EndActiveTimeout, 7 * s},
			}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := New(Config{ActiveTimeout: 5 * time.Second, IdleTimeout: 15 * time.Second}, nil)
			if err != nil {
				t.Fatal(err)
			}
			f := newFakeSource()
			tt.setup(f, q)
			for _, st := range tt.steps {
				if st.do != nil {
					st.do(f, q)
				}
				f.exports = nil
				n, err := q.Expire(t0.Add(st.at), f, take)
				if err != nil {
					t.Fatalf("Expire at %s: %v", st.at, err)
				}
				if !slices.Equal(f.exports, st.want) {
					t.Fatalf("Expire at %s exported %v, want %v", st.at, f.exports, st.want)
				}
				if n != len(st.want) {
					t.Fatalf("Expire at %s returned %d, want %d", st.at, n, len(st.want))
				}
			}
		})
	}
}

func TestExpireDrainsWholeBacklogInOneCall(t *testing.T) {
	q, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeSource()
	const n = 100_000
	for h := Handle(1); h <= n; h++ {
		f.add(q, h, 0, true)
	}
	got, err := q.Expire(t0.Add(DefaultActiveTimeout), f, take)
	if err != nil {
		t.Fatal(err)
	}
	if got != n {
		t.Fatalf("one Expire emitted %d records, want all %d", got, n)
	}
	if q.Len() != n {
		t.Fatalf("queue holds %d deadlines after active exports, want %d (all re-armed)", q.Len(), n)
	}
}

func TestExpireRecordCarriesReasonAndTime(t *testing.T) {
	q, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeSource()
	f.add(q, 7, 0, true)
	f.close(q, 7)
	var got []flow.Record
	if _, err := q.Expire(t0.Add(time.Second), f, func(r *flow.Record) bool { got = append(got, *r); return true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].EndReason != flow.EndOfFlow || got[0].ExportNanos != ns(time.Second) {
		t.Fatalf("emitted %+v, want one end-of-flow record at t0+1s", got)
	}
}

func TestExpireWithoutSourceFails(t *testing.T) {
	q, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Expire(t0, nil, take); err == nil {
		t.Fatal("Expire with a nil Source succeeded, want an error")
	}
	if _, err := q.Expire(t0, newFakeSource(), nil); err == nil {
		t.Fatal("Expire with a nil emit succeeded, want an error")
	}
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		wantErr    string // field named in the error; "" for success
		wantActive time.Duration
		wantIdle   time.Duration
	}{
		{name: "zero config takes the defaults", wantActive: 5 * time.Second, wantIdle: 15 * time.Second},
		{name: "explicit timeouts kept", cfg: Config{ActiveTimeout: time.Second, IdleTimeout: 2 * time.Second},
			wantActive: time.Second, wantIdle: 2 * time.Second},
		{name: "negative active timeout names ActiveTimeout", cfg: Config{ActiveTimeout: -1}, wantErr: "ActiveTimeout"},
		{name: "negative idle timeout names IdleTimeout", cfg: Config{IdleTimeout: -1}, wantErr: "IdleTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := New(tt.cfg, nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New(%+v) error = %v, want one naming %s", tt.cfg, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if q.active != int64(tt.wantActive) || q.idle != int64(tt.wantIdle) {
				t.Fatalf("timeouts = %s/%s, want %s/%s", time.Duration(q.active), time.Duration(q.idle), tt.wantActive, tt.wantIdle)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	q, err := New(Config{}, reg)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeSource()
	for h := Handle(1); h <= 3; h++ {
		f.add(q, h, 0, true)
	}
	delete(f.conns, 2)
	if _, err := q.Expire(t0.Add(time.Hour), f, take); err != nil {
		t.Fatal(err)
	}
	got := gather(t, reg)
	want := map[string]float64{
		"flowlens_expirequeue_max_size":                        3,
		"flowlens_expirequeue_size":                            0,
		"flowlens_expirequeue_stale_deadlines_discarded_total": 1,
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
	if _, err := New(Config{}, reg); err == nil {
		t.Error("registering a second queue on the same registry succeeded, want a duplicate error")
	}
}

// gather returns the value of every unlabelled gauge and counter in reg.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				out[mf.GetName()] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[mf.GetName()] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func TestExpireDoesNotAllocatePerRecord(t *testing.T) {
	q, err := New(Config{ActiveTimeout: time.Second, IdleTimeout: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	src := &sliceSource{t: make([]Timing, n)}
	for h := range src.t {
		src.t[h] = Timing{LastActive: ns(0), PeriodStart: ns(0)}
		q.Track(Handle(h), ns(0))
	}
	emitted := 0
	emit := func(*flow.Record) bool { emitted++; return true }
	round := time.Duration(0)
	allocs := testing.AllocsPerRun(20, func() {
		round += time.Second
		for h := range src.t {
			src.t[h].Moved = true
		}
		if _, err := q.Expire(t0.Add(round), src, emit); err != nil {
			t.Fatal(err)
		}
	})
	if emitted < 20*n {
		t.Fatalf("emitted %d records over 20 rounds, want at least %d", emitted, 20*n)
	}
	if allocs != 0 {
		t.Fatalf("Expire of %d records allocates %.1f times, want 0", n, allocs)
	}
}

func TestCloseDelayHoldsTheFinalRecordBack(t *testing.T) {
	const s = time.Second
	q, err := New(Config{ActiveTimeout: 5 * s, IdleTimeout: 15 * s, CloseDelay: 1 * s}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeSource()
	f.add(q, 1, 0, true)
	f.add(q, 2, 0, true)
	// Connection 1 closes at 2s; connection 2 keeps its active cadence.
	f.conns[1].Closed, f.conns[1].ClosedAt = true, ns(2*s)
	q.Due(1)
	for _, st := range []struct {
		at   time.Duration
		want []export
	}{
		{at: 2 * s},
		{at: 2*s + 999*time.Millisecond},
		{at: 3 * s, want: []export{{1, flow.EndOfFlow, 3 * s}}},
		{at: 4 * s},
		{at: 5 * s, want: []export{{2, flow.EndActiveTimeout, 5 * s}}},
		{at: 30 * s, want: []export{{2, flow.EndIdleTimeout, 30 * s}}},
	} {
		f.exports = nil
		if _, err := q.Expire(t0.Add(st.at), f, take); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(f.exports, st.want) {
			t.Fatalf("Expire at %s exported %v, want %v", st.at, f.exports, st.want)
		}
	}
}

func TestNegativeCloseDelayIsRejected(t *testing.T) {
	if _, err := New(Config{CloseDelay: -time.Second}, nil); err == nil || !strings.Contains(err.Error(), "CloseDelay") {
		t.Fatalf("New with a negative CloseDelay: %v, want an error naming CloseDelay", err)
	}
}
