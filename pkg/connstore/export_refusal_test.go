package connstore

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// taking adapts an emit function that cannot refuse to Expire's, which may.
func taking(emit func(*flow.Record)) func(*flow.Record) bool {
	return func(r *flow.Record) bool { emit(r); return true }
}

// refusingSink takes records except while refuse says no; it keeps what it
// took per tuple.
type refusingSink struct {
	refuse  func(call int) bool
	calls   int
	refused int
	got     map[flow.Tuple][]flow.Record
}

func (s *refusingSink) offer(r *flow.Record) bool {
	s.calls++
	if s.refuse(s.calls) {
		s.refused++
		return false
	}
	s.got[r.Tuple] = append(s.got[r.Tuple], *r)
	return true
}

// A sink that refuses for a while, then refuses every other record, loses
// nothing: every closed connection's end-of-flow is exported exactly once,
// and each connection's deltas add up to its totals.
func TestRefusedExportsLoseNothing(t *testing.T) {
	const (
		n    = 3000
		tick = 100 * time.Millisecond
	)
	reg := prometheus.NewRegistry()
	q, err := expirequeue.New(expirequeue.Config{ActiveTimeout: 2 * time.Second, IdleTimeout: 6 * time.Second, SpreadActiveDeadlines: true}, reg)
	if err != nil {
		t.Fatal(err)
	}
	sink := &refusingSink{got: map[flow.Tuple][]flow.Record{}}
	var now time.Duration
	sink.refuse = func(call int) bool { return now < 5*time.Second || call%2 == 0 }
	// Records the store must not hold back (none here: no eviction or
	// replacement) are taken at once.
	s, err := New(Config{MaxConnections: 2 * n, Scheduler: q, Emit: func(r *flow.Record) {
		sink.got[r.Tuple] = append(sink.got[r.Tuple], *r)
	}}, reg)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]flow.Conn, n)
	for i := range conns {
		conns[i] = synthConn(i)
		s.Upsert(&conns[i], t0)
	}
	for now = tick; now <= 30*time.Second; now += tick {
		at := t0.Add(now)
		for i := range conns {
			c := &conns[i]
			switch {
			case i%3 == 0 && now == time.Duration(1+i%20)*time.Second:
				// A third close within the first 20 s (a quarter of them
				// while the sink refuses everything).
				c.Fwd.Packets++
				c.Fwd.Bytes += 60
				c.TCPState = flow.TCPStateTimeWait
				s.Close(c, at)
			case i%3 == 0 && c.TCPState == flow.TCPStateTimeWait:
			case i%3 == 1 && now < 12*time.Second:
				c.Fwd.Packets++
				c.Fwd.Bytes += 100
				c.Rev.Packets += 2
				c.Rev.Bytes += 3000
				s.Upsert(c, at)
			}
		}
		if _, err := q.Expire(at, s, sink.offer); err != nil {
			t.Fatal(err)
		}
	}
	if sink.refused == 0 {
		t.Fatal("the sink never refused; the test tests nothing")
	}
	left := s.ExportAll(t0.Add(now), func(r *flow.Record) { sink.got[r.Tuple] = append(sink.got[r.Tuple], *r) })
	for i := range conns {
		c := &conns[i]
		recs := sink.got[c.Tuple]
		var fwd, rev flow.Counters
		ends := 0
		for _, r := range recs {
			fwd.Packets += r.FwdDelta.Packets
			fwd.Bytes += r.FwdDelta.Bytes
			rev.Packets += r.RevDelta.Packets
			rev.Bytes += r.RevDelta.Bytes
			if r.EndReason == flow.EndOfFlow {
				ends++
			}
		}
		if fwd != c.Fwd || rev != c.Rev {
			t.Fatalf("connection %d: deltas add up to %+v/%+v, totals are %+v/%+v (records %+v)", i, fwd, rev, c.Fwd, c.Rev, recs)
		}
		wantEnds := 0
		if i%3 == 0 {
			wantEnds = 1
		}
		if ends != wantEnds {
			t.Fatalf("connection %d: %d end-of-flow records, want %d", i, ends, wantEnds)
		}
		if i%3 == 0 && recs[len(recs)-1].EndReason != flow.EndOfFlow {
			t.Fatalf("connection %d: end-of-flow is not its last record: %+v", i, recs)
		}
	}
	t.Logf("%d offers, %d refused, %d left for ExportAll", sink.calls, sink.refused, left)
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetCounter() != nil {
				got[mf.GetName()] += m.GetCounter().GetValue()
			}
		}
	}
	if got["flowlens_expirequeue_records_refused_total"] != float64(sink.refused) {
		t.Fatalf("refused counter = %v, sink refused %d", got["flowlens_expirequeue_records_refused_total"], sink.refused)
	}
	// The store counts records it handed out, not offers.
	taken := 0
	for _, recs := range sink.got {
		taken += len(recs)
	}
	if got["flowlens_connstore_records_emitted_total"] != float64(taken) {
		t.Fatalf("store counted %v records emitted, the sink took %d", got["flowlens_connstore_records_emitted_total"], taken)
	}
}

// A refused end-of-flow leaves the connection in the store, closed and
// still visible, with its deltas; the next offer carries them.
func TestRefusedEndOfFlowStaysPending(t *testing.T) {
	h := newHarness(t, 0)
	c := conn(1, 9, 4, 2)
	h.store.Upsert(&c, t0)
	c.Fwd.Packets, c.Fwd.Bytes = 6, 600
	c.TCPState = flow.TCPStateTimeWait
	h.store.Close(&c, t0.Add(sec))
	refuse := true
	var got []flow.Record
	emit := func(r *flow.Record) bool {
		if refuse {
			return false
		}
		got = append(got, *r)
		return true
	}
	for i := 0; i < 3; i++ {
		if n, err := h.queue.Expire(t0.Add(2*sec+time.Duration(i)*sec), h.store, emit); err != nil || n != 0 {
			t.Fatalf("Expire with a refusing sink = %d, %v; want 0 records", n, err)
		}
		if _, ok := h.store.LookupConn(c.Tuple); !ok {
			t.Fatal("a refused end-of-flow removed the connection")
		}
	}
	refuse = false
	if n, err := h.queue.Expire(t0.Add(5*sec+time.Millisecond), h.store, emit); err != nil || n != 1 {
		t.Fatalf("Expire with a taking sink = %d, %v; want 1 record", n, err)
	}
	if len(got) != 1 || got[0].EndReason != flow.EndOfFlow || got[0].FwdDelta != c.Fwd || got[0].RevDelta != c.Rev {
		t.Fatalf("records %+v, want one end-of-flow carrying the totals %+v/%+v", got, c.Fwd, c.Rev)
	}
	if _, ok := h.store.LookupConn(c.Tuple); ok {
		t.Fatal("connection still visible after its end-of-flow was taken")
	}
	if n, _ := h.queue.Expire(t0.Add(60*sec), h.store, emit); n != 0 || len(got) != 1 {
		t.Fatalf("a later Expire exported %d more records, want none", n)
	}
}
