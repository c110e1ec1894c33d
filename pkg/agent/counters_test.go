package agent

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/flow"
)

// fakeCounters is an eBPF counter table the test edits: per connection
// (by its conntrack tuple) the totals the program counted, and the views
// that changed since the last read.
type fakeCounters struct {
	mu       sync.Mutex
	conns    map[flow.Tuple]fakeCounted
	changed  []flow.Tuple
	fills    int
	forgot   []flow.Tuple
	attached int64
}

type fakeCounted struct {
	fwd, rev        flow.Counters
	finished, lossy bool
	// fwdFlags and firstNanos are what Born reports of the views.
	fwdFlags   uint8
	firstNanos int64
}

func newFakeCounters() *fakeCounters {
	return &fakeCounters{conns: map[flow.Tuple]fakeCounted{}, attached: t0.Add(-time.Hour).UnixNano()}
}

// count sets c's totals as the program counted them and marks view changed.
func (f *fakeCounters) count(c flow.Conn, view flow.Tuple, fc fakeCounted) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conns[c.Tuple] = fc
	f.changed = append(f.changed, view)
}

func (f *fakeCounters) ReadChanged(fn func(view flow.Tuple, fin bool)) error {
	f.mu.Lock()
	changed := f.changed
	f.changed = nil
	f.mu.Unlock()
	for _, v := range changed {
		f.mu.Lock()
		fin := f.conns[v].finished
		f.mu.Unlock()
		fn(v, fin)
	}
	return nil
}

func (f *fakeCounters) Fill(c *flow.Conn) (CounterFill, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fills++
	fc, ok := f.conns[c.Tuple]
	if !ok {
		return CounterFill{}, nil
	}
	c.Fwd, c.Rev = fc.fwd, fc.rev
	return CounterFill{Seen: true, Lossy: fc.lossy, Finished: fc.finished, AttachedAt: f.attached}, nil
}

// Born is Fill without the counters, as *bpfcounters.Counters answers a
// NEW event.
func (f *fakeCounters) Born(c *flow.Conn) (CounterFill, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fills++
	fc, ok := f.conns[c.Tuple]
	if !ok {
		return CounterFill{}, nil
	}
	return CounterFill{Seen: true, Lossy: fc.lossy, AttachedAt: f.attached, FwdFlags: fc.fwdFlags, FirstNanos: fc.firstNanos}, nil
}

func (f *fakeCounters) Forget(c *flow.Conn) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forgot = append(f.forgot, c.Tuple)
	return nil
}

func (f *fakeCounters) Sweep(time.Duration, func(flow.Tuple) bool) (int, error) { return 0, nil }

func (f *fakeCounters) stats() (fills int, forgot []flow.Tuple) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fills, append([]flow.Tuple(nil), f.forgot...)
}

func withCounters(fc *fakeCounters, check CrossCheck) func(*LoopConfig) {
	return func(c *LoopConfig) {
		c.Counters = fc
		c.CrossCheck = check
	}
}

func ctr(bytes, pkts uint64) flow.Counters { return flow.Counters{Bytes: bytes, Packets: pkts} }

// A connection born after the counters were attached is counted by them
// alone: conntrack's (larger, here) totals in a resync dump and its DESTROY
// do not leak into its records, its FIN handshake closes it one round
// later without waiting for TIME_WAIT, and nothing is read from conntrack.
func TestCountersCountConnectionsBornAfterAttach(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))

	a := tcpConn(40001, 7, 0, 0, 0, 0)
	a.StartNanos = at(time.Second).UnixNano()
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(60, 1)}) // the SYN, counted before conntrack's NEW
	h.send(at(time.Second), conntrack.EventNew, &a)
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(1000, 10), rev: ctr(5000, 8)})
	h.tick(at(1100 * time.Millisecond))

	// A resync dump reports conntrack's totals, which differ: ignored.
	dumped := tcpConn(40001, 7, 9999, 99, 9999, 99)
	dumped.StartNanos = a.StartNanos
	src.set(dumped)
	h.poll(at(2 * time.Second))

	// The reply direction's view moves and carries both FINs: closed by
	// the next round, with the totals of that round.
	fc.count(a, a.Tuple.Reverse(), fakeCounted{fwd: ctr(1200, 13), rev: ctr(5200, 11), finished: true})
	h.tick(at(2100 * time.Millisecond))
	if got := h.sink.all(); len(got) != 0 {
		t.Fatalf("exported before the round after the FIN: %+v", got)
	}
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(1240, 14), rev: ctr(5200, 11), finished: true})
	h.tick(at(2200 * time.Millisecond))
	h.tick(at(2300 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40001, eof, 1240, 14, 5200, 11})
	if got := h.sink.all()[0].Conn.TCPState; got != flow.TCPStateTimeWait {
		t.Errorf("tcpState %s, want TIME_WAIT", got)
	}
	if _, forgot := fc.stats(); len(forgot) != 1 {
		t.Errorf("views forgotten %d times once the close was exported, want once", len(forgot))
	}

	// TIME_WAIT ends: its DESTROY (with conntrack's totals) exports nothing
	// more and forgets the views.
	src.remove(a.Tuple)
	d := tcpConn(40001, 7, 9999, 99, 9999, 99)
	h.send(at(120*time.Second), conntrack.EventDestroy, &d)
	h.stop(at(121 * time.Second))
	checkRecords(t, h.sink.all(), want{40001, eof, 1240, 14, 5200, 11})
	if _, gets := src.counts(); len(gets) != 0 {
		t.Errorf("conntrack GETs %v, want none (counters come from eBPF)", gets)
	}
	// Its views went with its last record (not two minutes later), and
	// its DESTROY leaves the tuple's views alone: they may already be a
	// new connection's.
	if _, forgot := fc.stats(); len(forgot) != 1 || forgot[0] != a.Tuple {
		t.Errorf("forgotten views %v, want %v once, with its last record", forgot, a.Tuple)
	}
}

// Views a DNATed connection shows at its client's interface (the VIP as
// destination, and back) find it.
func TestCountersFindConnectionsByTheirServiceView(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))

	a := tcpConn(40001, 7, 0, 0, 0, 0)
	vip := flow.NewTuple(clientIP, serverIP, 0, 0, 0).DstIP
	vip[15] = 200
	a.OrigDstIP, a.OrigDstPort = vip, 80
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(60, 1)}) // the SYN, counted before conntrack's NEW
	h.send(at(time.Second), conntrack.EventNew, &a)
	src.set(a) // still in the kernel's table when the agent stops
	clientView := flow.Tuple{SrcIP: a.Tuple.SrcIP, DstIP: vip, SrcPort: a.Tuple.SrcPort, DstPort: 80, Proto: flow.ProtoTCP}
	fc.count(a, clientView.Reverse(), fakeCounted{fwd: ctr(300, 3), rev: ctr(700, 4)})
	h.tick(at(1100 * time.Millisecond))
	h.stop(at(2 * time.Second))
	checkRecords(t, h.sink.all(), want{40001, forced, 300, 3, 700, 4})
}

// A connection the counters did not see at its birth (it crosses no pod
// interface) is counted by conntrack: resync dumps and its DESTROY give its
// totals.
func TestCountersUnseenConnectionFallsBackToConntrack(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))

	a := tcpConn(40001, 7, 0, 0, 0, 0)
	h.send(at(time.Second), conntrack.EventNew, &a)
	src.set(tcpConn(40001, 7, 100, 1, 200, 2))
	h.poll(at(2 * time.Second))
	d := tcpConn(40001, 7, 400, 4, 500, 5)
	src.remove(a.Tuple)
	h.send(at(3*time.Second), conntrack.EventDestroy, &d)
	h.tick(at(3100 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40001, eof, 400, 4, 500, 5})
	checkSums(t, h.sink.all())
}

// Packets lost to a full eBPF table after a connection's birth do not
// move it to conntrack (whose totals can be lower than the program's: a
// total that steps back would be a new connection to the store): it keeps
// what the program counted, and its end takes conntrack's totals where
// they are not lower, read with one GET when the program saw the close.
func TestCountersLossyConnectionEndsWithConntracksTotals(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(h *harness, src *fakeSource, fc *fakeCounters, a flow.Conn)
		gets int
	}{
		{"closed by its FIN handshake", func(h *harness, src *fakeSource, fc *fakeCounters, a flow.Conn) {
			fc.count(a, a.Tuple, fakeCounted{fwd: ctr(160, 3), rev: ctr(110, 2), lossy: true, finished: true})
			h.tick(at(1300 * time.Millisecond))
			h.tick(at(1400 * time.Millisecond))
		}, 1},
		{"destroyed", func(h *harness, src *fakeSource, fc *fakeCounters, a flow.Conn) {
			d := tcpConn(40001, 7, 900, 9, 800, 8)
			src.remove(a.Tuple)
			h.send(at(1300*time.Millisecond), conntrack.EventDestroy, &d)
			h.tick(at(1400 * time.Millisecond))
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newFakeSource()
			fc := newFakeCounters()
			h := newHarness(t, src, withCounters(fc, CrossCheck{}))

			a := tcpConn(40001, 7, 0, 0, 0, 0)
			fc.count(a, a.Tuple, fakeCounted{fwd: ctr(60, 1)}) // the SYN, counted before conntrack's NEW
			h.send(at(time.Second), conntrack.EventNew, &a)
			fc.count(a, a.Tuple, fakeCounted{fwd: ctr(100, 1), rev: ctr(100, 1)})
			h.tick(at(1100 * time.Millisecond))
			src.set(tcpConn(40001, 7, 900, 9, 800, 8))
			fc.count(a, a.Tuple, fakeCounted{fwd: ctr(150, 2), rev: ctr(100, 1), lossy: true})
			h.tick(at(1200 * time.Millisecond))
			tc.end(h, src, fc, a)
			h.stop(at(2 * time.Second))
			got := h.sink.all()
			checkSums(t, got)
			var fwd, rev flow.Counters
			for _, r := range got {
				fwd.Packets, fwd.Bytes = fwd.Packets+r.FwdDelta.Packets, fwd.Bytes+r.FwdDelta.Bytes
				rev.Packets, rev.Bytes = rev.Packets+r.RevDelta.Packets, rev.Bytes+r.RevDelta.Bytes
			}
			if fwd != ctr(900, 9) || rev != ctr(800, 8) {
				t.Errorf("exported fwd %+v rev %+v over %d records, want conntrack's 900/9 and 800/8", fwd, rev, len(got))
			}
			if n := len(got); n == 0 || got[n-1].EndReason != eof {
				t.Errorf("records %+v: want the last one end-of-flow", got)
			}
			if _, gets := src.counts(); len(gets) != tc.gets {
				t.Errorf("conntrack GETs %v, want %d", gets, tc.gets)
			}
		})
	}
}

// A connection the first dump found (it was there before the counters were
// attached) stays conntrack's: its views are not read.
func TestCountersLeaveConnectionsFromTheFirstDumpToConntrack(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40001, 7, 1000, 10, 2000, 20)
	src.set(a)
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(5, 1), rev: ctr(5, 1)})
	h.tick(at(100 * time.Millisecond))
	if fills, _ := fc.stats(); fills != 0 {
		t.Errorf("Fill called %d times for a connection counted by conntrack", fills)
	}
	h.stop(at(time.Second))
	checkRecords(t, h.sink.all(), want{40001, forced, 1000, 10, 2000, 20})
}

// The cross-check compares the totals at the DESTROY and counts each
// connection as agreeing or not.
func TestCrossCheckComparesTotalsAtTheEnd(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{Enabled: true, TolerancePackets: 1, ToleranceBytes: 100}))
	loop := h.loop

	a := tcpConn(40001, 7, 0, 0, 0, 0)
	b := tcpConn(40002, 8, 0, 0, 0, 0)
	for _, c := range []*flow.Conn{&a, &b} {
		fc.count(*c, c.Tuple, fakeCounted{fwd: ctr(60, 1)})
		h.send(at(time.Second), conntrack.EventNew, c)
	}
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(1000, 10), rev: ctr(2000, 20)})
	fc.count(b, b.Tuple, fakeCounted{fwd: ctr(1000, 10), rev: ctr(2000, 20)})
	h.tick(at(1100 * time.Millisecond))
	da := tcpConn(40001, 7, 1052, 11, 2000, 20) // within tolerance
	db := tcpConn(40002, 8, 1000, 10, 2400, 24) // not
	h.send(at(2*time.Second), conntrack.EventDestroy, &da)
	h.send(at(2*time.Second), conntrack.EventDestroy, &db)
	h.tick(at(2100 * time.Millisecond))
	if got, want := counterValue(t, loop.counters.m.agree), 1.0; got != want {
		t.Errorf("agree %v, want %v", got, want)
	}
	if got, want := counterValue(t, loop.counters.m.disagree), 1.0; got != want {
		t.Errorf("disagree %v, want %v", got, want)
	}
	// The records carry the eBPF totals either way.
	checkRecords(t, h.sink.all(), want{40001, eof, 1000, 10, 2000, 20}, want{40002, eof, 1000, 10, 2000, 20})
}

// At shutdown a connection whose end the last round saw is exported as
// ended, not forced.
func TestCountersFinishAtShutdown(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))
	a := tcpConn(40001, 7, 0, 0, 0, 0)
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(60, 1)}) // the SYN, counted before conntrack's NEW
	h.send(at(time.Second), conntrack.EventNew, &a)
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(100, 3), rev: ctr(60, 2), finished: true})
	h.stop(at(1050 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40001, eof, 100, 3, 60, 2})
}

func TestCountersNeedEvents(t *testing.T) {
	_, err := NewLoop(LoopConfig{
		Source: newFakeSource(), Sink: &fakeSink{}, Counters: newFakeCounters(),
		PollInterval: time.Second, TickInterval: time.Second,
	}, nil)
	if err == nil {
		t.Fatal("NewLoop accepted Counters without Events")
	}
}

// An interface attached after the loop started, just before a NEW event
// came, may have missed the connection's first packets: conntrack counts
// it. One attached earlier does not make the loop doubt.
func TestCountersDoubtAConnectionBornAsItsInterfaceWasAttached(t *testing.T) {
	for _, tc := range []struct {
		name      string
		attached  time.Duration // after t0, when the loop started
		wantCount flow.CounterSource
	}{
		{"attached just before the NEW", time.Second - 10*time.Millisecond, flow.CountersConntrackLater},
		{"attached well before the NEW", 500 * time.Millisecond, flow.CountersBPF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newFakeSource()
			fc := newFakeCounters()
			fc.attached = at(tc.attached).UnixNano()
			h := newHarness(t, src, withCounters(fc, CrossCheck{}))
			a := tcpConn(40001, 7, 0, 0, 0, 0)
			a.StartNanos = 0 // as NEW events report it
			src.set(tcpConn(40001, 7, 120, 2, 60, 1))
			fc.count(a, a.Tuple, fakeCounted{fwd: ctr(60, 1)})
			h.send(at(time.Second), conntrack.EventNew, &a)
			got, ok := h.loop.store.LookupConn(a.Tuple)
			h.stop(at(2 * time.Second))
			if !ok || got.Counters != tc.wantCount {
				t.Errorf("counted by %v (found %v), want %v", got.Counters, ok, tc.wantCount)
			}
		})
	}
}

// A connection the first dump reported before its queued NEW event was
// handled stays with the source the dump gave it: one record series.
func TestCountersNEWAfterTheDumpKeepsTheDumpsSource(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40001, 7, 300, 3, 200, 2)
	src.set(a)
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(100, 1)}) // fewer than conntrack's
	ev := eventOf(a)
	h.send(at(100*time.Millisecond), conntrack.EventNew, &ev)
	h.tick(at(200 * time.Millisecond))
	h.stop(at(time.Second))
	checkRecords(t, h.sink.all(), want{40001, forced, 300, 3, 200, 2})
}

// A connection conntrack counts (here: older than the agent) whose FIN
// the program saw is read with one GET and closed at once when conntrack
// agrees it ended, not two minutes later at its DESTROY.
func TestCountersFINOfAConntrackCountedConnectionClosesItAtOnce(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40001, 7, 1000, 10, 2000, 20)
	src.set(a)
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))
	src.set(finished(a, 1100, 12, 2100, 22))
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(5, 1), finished: true})
	h.tick(at(100 * time.Millisecond)) // the FIN's view
	h.tick(at(200 * time.Millisecond)) // one GET, closed
	h.tick(at(300 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40001, eof, 1100, 12, 2100, 22})
	if _, gets := src.counts(); len(gets) != 1 {
		t.Errorf("conntrack GETs %v, want one", gets)
	}
	if fills, _ := fc.stats(); fills != 0 {
		t.Errorf("%d eBPF reads of a connection conntrack counts", fills)
	}
}

// Under load a NEW is handled seconds after its connection began: a short
// one is over by then (the views hold its SYN and FIN), so it goes to
// conntrack, and no later packet marks its views again. It is closed by
// one GET the next round, not two minutes later by its DESTROY.
func TestCountersLateNEWOfAFinishedConnectionClosesItNextRound(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))

	a := tcpConn(40001, 7, 0, 0, 0, 0)
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(300, 5), rev: ctr(900, 4), finished: true,
		fwdFlags: tcpSYN | tcpFIN, firstNanos: at(time.Second).UnixNano()})
	h.tick(at(1100 * time.Millisecond)) // the round sees views no connection owns yet
	src.set(finished(a, 300, 5, 900, 4))
	h.send(at(5*time.Second), conntrack.EventNew, &a) // 4 s late: stale
	h.tick(at(5100 * time.Millisecond))
	h.tick(at(5200 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40001, eof, 300, 5, 900, 4})
	if _, gets := src.counts(); len(gets) != 1 {
		t.Errorf("conntrack GETs %v, want one", gets)
	}
}

// A whole short connection often fits between two rounds, and its NEW is
// applied after the round that read its views (the views then named no
// connection). It is counted by the program all the same, and its end is
// not lost with that round: the connection is closed the round after its
// NEW, not two minutes later by its DESTROY. One that only began is not.
func TestCountersEndReadBeforeTheNEWClosesTheConnectionNextRound(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))

	a := tcpConn(40005, 11, 0, 0, 0, 0)
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(300, 5), rev: ctr(900, 4), finished: true,
		fwdFlags: tcpSYN | tcpFIN, firstNanos: at(1050 * time.Millisecond).UnixNano()})
	b := tcpConn(40006, 12, 0, 0, 0, 0)
	fc.count(b, b.Tuple, fakeCounted{fwd: ctr(60, 1), fwdFlags: tcpSYN, firstNanos: at(1050 * time.Millisecond).UnixNano()})
	h.tick(at(1100 * time.Millisecond)) // the round sees views no connection owns yet
	h.send(at(1150*time.Millisecond), conntrack.EventNew, &a)
	h.send(at(1150*time.Millisecond), conntrack.EventNew, &b)
	h.tick(at(1200 * time.Millisecond))
	h.tick(at(1300 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40005, eof, 300, 5, 900, 4})
	if _, gets := src.counts(); len(gets) != 0 {
		t.Errorf("conntrack GETs %v, want none: the program counted it", gets)
	}
}

// With a source that batches its events, the loop takes them at each tick
// right after the read round: a NEW is then born with the counters of the
// views that round read (it will not report them again), not with zeros
// until the connection's next packet; a connection that ended before its
// NEW is closed the round after, with its totals.
func TestCountersEventsTakenAfterTheRoundAreBornWithTheirCounters(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	h := newHarness(t, src, func(c *LoopConfig) {
		withCounters(fc, CrossCheck{})(c)
		c.EventDelay = 50 * time.Millisecond
		c.EventQueue = 1024
	})
	idle := tcpConn(40009, 13, 0, 0, 0, 0) // one exchange, then idle
	src.set(idle)                          // open in the kernel at shutdown
	fc.count(idle, idle.Tuple, fakeCounted{fwd: ctr(400, 6), rev: ctr(1200, 5), fwdFlags: tcpSYN, firstNanos: at(1020 * time.Millisecond).UnixNano()})
	done := tcpConn(40010, 14, 0, 0, 0, 0) // over before its NEW was taken
	fc.count(done, done.Tuple, fakeCounted{fwd: ctr(300, 5), rev: ctr(900, 4), finished: true,
		fwdFlags: tcpSYN | tcpFIN, firstNanos: at(1030 * time.Millisecond).UnixNano()})
	h.clock.set(at(1050 * time.Millisecond))
	h.deliver(conntrack.Event{Type: conntrack.EventNew, Conn: &idle})
	h.deliver(conntrack.Event{Type: conntrack.EventNew, Conn: &done})
	h.deliver(conntrack.Event{Type: conntrack.EventBatchEnd})
	h.tick(at(1100 * time.Millisecond)) // the round, then the NEWs
	h.tick(at(1200 * time.Millisecond)) // done closes
	h.tick(at(1300 * time.Millisecond))
	h.stop(at(1400 * time.Millisecond))
	checkRecords(t, h.sink.all(),
		want{40010, eof, 300, 5, 900, 4},
		want{40009, forced, 400, 6, 1200, 5})
}

// The same, with the events read by the loop itself at its ticks
// (LoopConfig.OpenEvents): no listener, the NEWs applied right after the
// round; the events queued when the loop stops are applied before its
// last records.
func TestCountersEventsReadAtTheTickAreBornWithTheirCounters(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	stream := newFakeStream()
	h := newHarness(t, src, func(c *LoopConfig) {
		withCounters(fc, CrossCheck{})(c)
		withStream(stream)(c)
		c.EventDelay = tickEvery
	})
	idle := tcpConn(40009, 13, 0, 0, 0, 0)
	src.set(idle)
	fc.count(idle, idle.Tuple, fakeCounted{fwd: ctr(400, 6), rev: ctr(1200, 5), fwdFlags: tcpSYN, firstNanos: at(1020 * time.Millisecond).UnixNano()})
	done := tcpConn(40010, 14, 0, 0, 0, 0)
	fc.count(done, done.Tuple, fakeCounted{fwd: ctr(300, 5), rev: ctr(900, 4), finished: true,
		fwdFlags: tcpSYN | tcpFIN, firstNanos: at(1030 * time.Millisecond).UnixNano()})
	late := tcpConn(40011, 15, 0, 0, 0, 0) // its NEW still queued at the stop
	src.set(late)
	fc.count(late, late.Tuple, fakeCounted{fwd: ctr(100, 2), rev: ctr(200, 2), fwdFlags: tcpSYN, firstNanos: at(1320 * time.Millisecond).UnixNano()})
	stream.push(conntrack.Event{Type: conntrack.EventNew, Conn: &idle}, conntrack.Event{Type: conntrack.EventNew, Conn: &done})
	h.tickStream(stream, at(1100*time.Millisecond)) // the round, then the NEWs
	h.tickStream(stream, at(1200*time.Millisecond)) // done closes
	if got := src.listens(); got != 0 {
		t.Errorf("the loop listened %d times, want its events read from the stream only", got)
	}
	h.tickStream(stream, at(1300*time.Millisecond))
	stream.push(conntrack.Event{Type: conntrack.EventNew, Conn: &late})
	h.stop(at(1400 * time.Millisecond))
	checkRecords(t, h.sink.all(),
		want{40010, eof, 300, 5, 900, 4},
		want{40009, forced, 400, 6, 1200, 5},
		want{40011, forced, 100, 2, 200, 2})
	if !stream.isClosed() {
		t.Error("the event stream was not closed when the loop stopped")
	}
}

// A dump of a large table takes seconds: the loop reads the stream during
// it (up to EventQueue events; the rest stays in the socket), and applies
// those events at the next tick, after the dump, as a listener's queued
// events were.
func TestCountersEventsHeldDuringADump(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	stream := newFakeStream()
	h := newHarness(t, src, func(c *LoopConfig) {
		withCounters(fc, CrossCheck{})(c)
		withStream(stream)(c)
		c.EventDelay = tickEvery
		c.EventQueue = 2
	})
	for i := range holdEvery + 10 {
		src.set(tcpConn(uint16(20000+i), uint32(100+i), 1000, 10, 2000, 20))
	}
	short := tcpConn(40020, 20, 0, 0, 0, 0) // born and gone during the dump
	gone := finished(short, 500, 6, 700, 5)
	third := tcpConn(40021, 21, 100, 2, 200, 2) // still open at the stop
	src.set(third)
	stream.push(conntrack.Event{Type: conntrack.EventNew, Conn: &short}, conntrack.Event{Type: conntrack.EventDestroy, Conn: &gone},
		conntrack.Event{Type: conntrack.EventNew, Conn: &third})
	h.pollStream(stream, at(time.Second))
	if n := stream.queued(); n != 1 {
		t.Errorf("%d events left in the stream after the dump read it, want 1 (EventQueue is 2)", n)
	}
	h.tickStream(stream, at(1100*time.Millisecond))
	h.stop(at(1200 * time.Millisecond))
	var got []flow.Record
	for _, r := range h.sink.all() {
		if r.Tuple.SrcPort >= 40020 {
			got = append(got, r)
		}
	}
	checkRecords(t, got, want{40020, eof, 500, 6, 700, 5}, want{40021, forced, 100, 2, 200, 2})
}

// A stream that fails is closed, and the loop goes on (with dumps).
func TestCountersFailingEventStreamLeavesDumps(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	stream := newFakeStream()
	h := newHarness(t, src, func(c *LoopConfig) {
		withCounters(fc, CrossCheck{})(c)
		withStream(stream)(c)
		c.EventDelay = tickEvery
	})
	stream.mu.Lock()
	stream.err = errors.New("socket gone")
	stream.mu.Unlock()
	h.tickStream(stream, at(100*time.Millisecond))
	select { // taken once the first tick is over
	case h.ticker.c <- at(200 * time.Millisecond):
	case <-time.After(10 * time.Second):
		t.Fatal("the loop stopped ticking after its event stream failed")
	}
	if !stream.isClosed() {
		t.Error("a failed event stream was not closed")
	}
}

// A GET between the FINs and the last ACK finds the entry not finished
// yet; no packet will mark the views again, so it is read again the next
// round (a bounded number of times) and closed then.
func TestCountersConntrackCountedCloseIsReadAgainUntilFinished(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40002, 8, 1000, 10, 2000, 20)
	src.set(a)
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))
	lastAck := a
	lastAck.TCPState = flow.TCPStateLastAck
	src.set(lastAck)
	fc.count(a, a.Tuple, fakeCounted{fwd: ctr(5, 1), finished: true})
	h.tick(at(100 * time.Millisecond)) // the FIN's view
	h.tick(at(200 * time.Millisecond)) // GET: LAST_ACK
	if got := h.sink.all(); len(got) != 0 {
		t.Fatalf("closed before conntrack said it ended: %+v", got)
	}
	src.set(finished(a, 1100, 12, 2100, 22))
	h.tick(at(300 * time.Millisecond)) // GET: TIME_WAIT, closed
	h.tick(at(400 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40002, eof, 1100, 12, 2100, 22})
	if _, gets := src.counts(); len(gets) != 2 {
		t.Errorf("conntrack GETs %v, want two", gets)
	}
	// A half-closed connection that stays open is read a bounded number
	// of times.
	b := tcpConn(40003, 9, 1000, 10, 2000, 20)
	b.TCPState = flow.TCPStateFinWait
	src.set(b)
	h.poll(at(time.Second))
	fc.count(b, b.Tuple, fakeCounted{fwd: ctr(5, 1), finished: true})
	_, before := src.counts()
	for i := range 20 {
		h.tick(at(time.Second + time.Duration(i+1)*100*time.Millisecond))
	}
	if _, gets := src.counts(); len(gets)-len(before) != 1+closeGetRetries {
		t.Errorf("a connection that stays half-closed was read %d times, want %d", len(gets)-len(before), 1+closeGetRetries)
	}
}

// A connection born counted by conntrack (a pod's first connection, as
// its interface was just attached; host traffic) is read every active
// timeout: its records follow the export cadence and a TCP close is
// found by the read, not two minutes later by its DESTROY or at the next
// resync.
func TestCountersConntrackCountedConnectionIsReadEveryActiveTimeout(t *testing.T) {
	src := newFakeSource()
	fc := newFakeCounters()
	h := newHarness(t, src, withCounters(fc, CrossCheck{}))

	a := tcpConn(40004, 11, 0, 0, 0, 0)
	h.send(at(time.Second), conntrack.EventNew, &a) // the program did not see it
	src.set(tcpConn(40004, 11, 100, 1, 200, 2))
	for d := 1100 * time.Millisecond; d <= time.Second+activeAfter+time.Second; d += 100 * time.Millisecond {
		h.tick(at(d))
	}
	if _, gets := src.counts(); len(gets) != 1 {
		t.Fatalf("conntrack GETs %v after one active timeout, want one", gets)
	}
	// It moved: the next active timeout exports it with those counters.
	src.set(finished(a, 300, 3, 400, 4))
	for d := time.Second + activeAfter + 1100*time.Millisecond; d <= time.Second+3*activeAfter; d += 100 * time.Millisecond {
		h.tick(at(d))
	}
	got := h.sink.all()
	checkRecords(t, got, want{40004, active, 100, 1, 200, 2}, want{40004, eof, 200, 2, 200, 2})
	checkSums(t, got)
	if _, gets := src.counts(); len(gets) != 2 {
		t.Errorf("conntrack GETs %v, want two (none after it ended)", gets)
	}
}

// batchFakeCounters deletes views in batches, as *bpfcounters.Counters
// does.
type batchFakeCounters struct {
	*fakeCounters
	batches [][]flow.Tuple
}

func (f *batchFakeCounters) ForgetAll(cs []flow.Conn) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b []flow.Tuple
	for i := range cs {
		b = append(b, cs[i].Tuple)
	}
	f.batches = append(f.batches, b)
	return nil
}

// The views of the connections a tick exports go in one batch at the end
// of that tick, each once, and none goes one by one.
func TestCountersViewsOfATicksRecordsGoInOneBatch(t *testing.T) {
	src := newFakeSource()
	fc := &batchFakeCounters{fakeCounters: newFakeCounters()}
	h := newHarness(t, src, func(c *LoopConfig) { c.Counters = fc })
	var conns []flow.Conn
	for i := range 3 {
		c := tcpConn(uint16(40020+i), uint32(20+i), 0, 0, 0, 0)
		c.StartNanos = at(time.Second).UnixNano()
		fc.count(c, c.Tuple, fakeCounted{fwd: ctr(60, 1)})
		h.send(at(time.Second), conntrack.EventNew, &c)
		conns = append(conns, c)
	}
	for _, c := range conns {
		fc.count(c, c.Tuple, fakeCounted{fwd: ctr(400, 6), rev: ctr(900, 5), finished: true})
	}
	h.tick(at(1100 * time.Millisecond)) // the FINs
	h.tick(at(1200 * time.Millisecond)) // closed and exported
	h.tick(at(1300 * time.Millisecond))
	if got := h.sink.all(); len(got) != 3 {
		t.Fatalf("%d records, want 3", len(got))
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(fc.batches) != 1 || len(fc.batches[0]) != 3 {
		t.Errorf("views deleted in batches %v, want one batch of the 3 connections", fc.batches)
	}
	if len(fc.forgot) != 0 {
		t.Errorf("views deleted one by one too: %v", fc.forgot)
	}
}
