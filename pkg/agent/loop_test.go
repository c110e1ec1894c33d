package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/l7"
)

const (
	eof    = flow.EndOfFlow
	forced = flow.EndForced
	active = flow.EndActiveTimeout
)

func at(d time.Duration) time.Time { return t0.Add(d) }

func TestOverrunResyncsWithADump(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40001, 1, 1000, 10, 2000, 20)
	src.set(a)
	h := newHarness(t, src, nil) // first dump at t0 learns a

	// a ends and b starts while the kernel drops their events.
	src.remove(a.Tuple)
	b := tcpConn(40002, 2, 500, 5, 600, 6)
	src.set(b)
	h.send(at(time.Second), conntrack.EventOverrun, nil)
	if dumps, _ := src.counts(); dumps != 2 {
		t.Fatalf("%d dumps after the overrun, want 2 (start + resync)", dumps)
	}
	// The resync dump no longer lists a: it is closed and goes out now.
	h.tick(at(1100 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40001, eof, 1000, 10, 2000, 20})

	h.stop(at(2 * time.Second))
	// b was learnt from the resync dump too.
	checkRecords(t, h.sink.all(),
		want{40001, eof, 1000, 10, 2000, 20},
		want{40002, forced, 500, 5, 600, 6})
	checkSums(t, h.sink.all())
}

func TestFailedDumpClosesNothing(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40001, 1, 1000, 10, 2000, 20)
	src.set(a)
	h := newHarness(t, src, nil)

	// A dump that fails half-way reported b but not a; it proves nothing
	// about a.
	src.remove(a.Tuple)
	b := tcpConn(40002, 2, 300, 3, 400, 4)
	src.set(b)
	src.failDumps(errDump)
	h.poll(at(time.Second))
	h.tick(at(1100 * time.Millisecond))
	h.poll(at(2 * time.Second))
	h.tick(at(2100 * time.Millisecond))
	if got := h.sink.all(); len(got) != 0 {
		checkRecords(t, got) // logs them
	}

	// The first complete dump without a closes it.
	src.failDumps(nil)
	h.poll(at(3 * time.Second))
	h.tick(at(3100 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40001, eof, 1000, 10, 2000, 20})

	h.stop(at(4 * time.Second))
	checkRecords(t, h.sink.all(),
		want{40001, eof, 1000, 10, 2000, 20},
		want{40002, forced, 300, 3, 400, 4})
}

func TestFinishedUpdateReadsFinalCounters(t *testing.T) {
	src := newFakeSource()
	h := newHarness(t, src, nil)

	a := tcpConn(40003, 3, 0, 0, 0, 0)
	newEv := eventOf(a)
	h.send(at(time.Second), conntrack.EventNew, &newEv)
	// An UPDATE that does not finish the connection reads nothing.
	upEv := eventOf(a)
	h.send(at(1500*time.Millisecond), conntrack.EventUpdate, &upEv)
	if _, gets := src.counts(); len(gets) != 0 {
		t.Fatalf("Get called for an UPDATE of an established connection: %v", gets)
	}

	// The FIN handshake: the UPDATE carries no counters, the kernel entry
	// (in TIME_WAIT) has the final ones.
	src.set(finished(a, 7000, 12, 900, 8))
	finEv := eventOf(finished(a, 0, 0, 0, 0))
	h.send(at(2*time.Second), conntrack.EventUpdate, &finEv)
	if _, gets := src.counts(); len(gets) != 1 || gets[0] != a.Tuple {
		t.Fatalf("Get calls %v, want one for %s", gets, a.Tuple)
	}
	h.tick(at(2100 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40003, eof, 7000, 12, 900, 8})
	if r := h.sink.all()[0]; r.StartNanos != a.StartNanos || r.TCPState != flow.TCPStateTimeWait {
		t.Errorf("record start %d state %s, want the kernel's %d TIME_WAIT", r.StartNanos, r.TCPState, a.StartNanos)
	}

	h.stop(at(3 * time.Second))
	if got := h.sink.all(); len(got) != 1 {
		t.Errorf("%d records after shutdown, want the one end-of-flow record only", len(got))
	}
}

func TestFinishedUpdateWhoseCountersCannotBeReadKeepsTheLastOnes(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40004, 4, 100, 1, 200, 2)
	src.set(a)
	h := newHarness(t, src, nil)

	src.failGets(errors.New("netlink: timeout"))
	finEv := eventOf(finished(a, 0, 0, 0, 0))
	h.send(at(time.Second), conntrack.EventUpdate, &finEv)
	h.tick(at(1100 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40004, eof, 100, 1, 200, 2})
	if n := counterValue(t, h.loop.m.getErrors); n != 1 {
		t.Errorf("flowlens_agent_final_counter_reads_failed_total = %v, want 1", n)
	}
}

func TestDestroyClosesTheConnection(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40005, 5, 1000, 10, 2000, 20)
	src.set(a)
	h := newHarness(t, src, nil)

	// DESTROY carries the final counters.
	src.remove(a.Tuple)
	d := a
	d.Fwd, d.Rev = flow.Counters{Bytes: 1500, Packets: 15}, flow.Counters{Bytes: 2500, Packets: 25}
	h.send(at(time.Second), conntrack.EventDestroy, &d)
	// A connection that lived between two dumps is known by its DESTROY
	// alone, and is exported once.
	b := tcpConn(40006, 6, 300, 3, 400, 4)
	h.send(at(time.Second), conntrack.EventDestroy, &b)
	h.tick(at(1100 * time.Millisecond))
	checkRecords(t, h.sink.all(),
		want{40005, eof, 1500, 15, 2500, 25},
		want{40006, eof, 300, 3, 400, 4})

	h.poll(at(2 * time.Second))
	h.tick(at(2100 * time.Millisecond))
	h.stop(at(3 * time.Second))
	if got := h.sink.all(); len(got) != 2 {
		t.Errorf("%d records, want the two end-of-flow records only", len(got))
	}
}

// TestEventsAndDumpsRacingOnOneTuple follows one TCP connection through the
// reports that can overlap: a dump, its FIN (UPDATE + Get), dumps of its
// TIME_WAIT entry, the dump that no longer finds it with its DESTROY
// arriving after that dump, then a new connection on the same tuple.
func TestEventsAndDumpsRacingOnOneTuple(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40007, 7, 100, 1, 200, 2)
	src.set(a)
	h := newHarness(t, src, nil)

	h.tick(at(500 * time.Millisecond)) // nothing due
	fin := finished(a, 1000, 10, 3000, 30)
	src.set(fin)
	finEv := eventOf(fin)
	h.send(at(time.Second), conntrack.EventUpdate, &finEv)
	h.tick(at(1100 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40007, eof, 1000, 10, 3000, 30})

	// Dumps keep returning the TIME_WAIT entry: nothing new.
	h.poll(at(2 * time.Second))
	h.tick(at(2100 * time.Millisecond))
	// The entry expires; the dump misses it and its DESTROY, queued while
	// the dump ran, comes after.
	src.remove(a.Tuple)
	h.poll(at(3 * time.Second))
	h.send(at(3050*time.Millisecond), conntrack.EventDestroy, &fin)
	h.tick(at(3100 * time.Millisecond))
	h.poll(at(4 * time.Second))
	h.tick(at(4100 * time.Millisecond))
	if got := h.sink.all(); len(got) != 1 {
		checkRecords(t, got, want{40007, eof, 1000, 10, 3000, 30})
	}

	// The client reuses its port: a new kernel entry, a new connection,
	// although the kernel gave it the same id (it derives ids from the
	// tuple and the entry's address) and, without timestamps, no start
	// time tells it from the old one.
	a2 := tcpConn(40007, 7, 0, 0, 0, 0)
	a2.StartNanos = 0
	newEv := eventOf(a2)
	h.send(at(5*time.Second), conntrack.EventNew, &newEv)
	// More bytes than the old one had: nothing but its DESTROY tells
	// them apart.
	a2.Fwd, a2.Rev = flow.Counters{Bytes: 5000, Packets: 50}, flow.Counters{Bytes: 6000, Packets: 60}
	src.set(a2)
	h.poll(at(6 * time.Second))
	h.stop(at(7 * time.Second))
	got := h.sink.all()
	checkRecords(t, got,
		want{40007, eof, 1000, 10, 3000, 30},
		want{40007, forced, 5000, 50, 6000, 60})
	checkSums(t, got[:1])
	checkSums(t, got[1:])
}

func TestShutdownExportsEverythingOnce(t *testing.T) {
	for _, closeDelay := range []time.Duration{0, 5 * time.Second} {
		t.Run("closeDelay="+closeDelay.String(), func(t *testing.T) {
			src := newFakeSource()
			a := tcpConn(40010, 10, 1000, 10, 2000, 20)
			b := tcpConn(40011, 11, 300, 3, 400, 4)
			c := tcpConn(40012, 12, 50, 1, 60, 1)
			src.set(a, b, c)
			h := newHarness(t, src, func(cfg *LoopConfig) { cfg.Queue.CloseDelay = closeDelay })

			// One active-timeout record each.
			src.set(tcpConn(40010, 10, 1500, 15, 2500, 25))
			h.poll(at(10 * time.Second))
			h.tick(at(10 * time.Second))
			checkRecords(t, h.sink.all(),
				want{40010, active, 1500, 15, 2500, 25},
				want{40011, active, 300, 3, 400, 4},
				want{40012, active, 50, 1, 60, 1})

			// a moves on, b ends; c stays still. Then the agent stops
			// before the next expiry round.
			src.set(tcpConn(40010, 10, 1700, 17, 2600, 26))
			h.poll(at(11 * time.Second))
			bEnd := b
			bEnd.Fwd, bEnd.Rev = flow.Counters{Bytes: 350, Packets: 4}, flow.Counters{Bytes: 450, Packets: 5}
			h.send(at(11*time.Second), conntrack.EventDestroy, &bEnd)
			h.stop(at(11500 * time.Millisecond))
			got := h.sink.all()
			checkRecords(t, got,
				want{40010, active, 1500, 15, 2500, 25},
				want{40011, active, 300, 3, 400, 4},
				want{40012, active, 50, 1, 60, 1},
				want{40010, forced, 200, 2, 100, 1},
				want{40011, eof, 50, 1, 50, 1})
			checkSums(t, got)
		})
	}
}

func TestEventsQueuedAtShutdownAreApplied(t *testing.T) {
	src := newFakeSource()
	a := tcpConn(40013, 13, 1000, 10, 2000, 20)
	src.set(a)
	h := newHarness(t, src, func(cfg *LoopConfig) { cfg.EventQueue = 8 })

	// The loop is busy dumping when a's DESTROY is queued and the agent is
	// told to stop; once the dump is over, it sees both (in either order).
	gate := src.gateDumps()
	h.clock.set(at(time.Second))
	h.poller.c <- at(time.Second)
	d := a
	d.Fwd, d.Rev = flow.Counters{Bytes: 1200, Packets: 12}, flow.Counters{Bytes: 2100, Packets: 21}
	h.deliver(conntrack.Event{Type: conntrack.EventDestroy, Conn: &d})
	h.cancel()
	h.cancel = nil
	close(gate)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// a ends with its final counters, once.
	checkRecords(t, h.sink.all(), want{40013, eof, 1200, 12, 2100, 21})
}

func TestListenerFailureFallsBackToDumps(t *testing.T) {
	src := &failingListener{fakeSource: newFakeSource()}
	a := tcpConn(40014, 14, 1000, 10, 2000, 20)
	src.set(a)
	h := newHarness(t, src.fakeSource, func(cfg *LoopConfig) { cfg.Source = src })
	src.remove(a.Tuple)
	// No events can sync the test with the loop: the second poll returns
	// only once the first was handled.
	h.clock.set(at(time.Second))
	h.poller.c <- at(time.Second)
	h.clock.set(at(2 * time.Second))
	h.poller.c <- at(2 * time.Second)
	h.stop(at(2 * time.Second))
	checkRecords(t, h.sink.all(), want{40014, eof, 1000, 10, 2000, 20})
}

type failingListener struct{ *fakeSource }

func (f *failingListener) Listen(ctx context.Context, fn func(conntrack.Event)) error {
	return errors.New("receive conntrack events: permission denied")
}

// TestL7EventsAreIngestedByTheLoop runs the real L7 enricher on the loop's
// store: EVE events reach it through the loop, including one that arrived
// before conntrack reported its connection.
func TestL7EventsAreIngestedByTheLoop(t *testing.T) {
	src := newFakeSource()
	eveCh := make(chan eve.Event)
	h := newHarness(t, src, func(cfg *LoopConfig) {
		cfg.L7Events = eveCh
		cfg.NewL7 = func(conns l7.Connections) (L7, error) {
			return l7.New(l7.Config{Connections: conns, Policy: fakePolicy{}}, nil)
		}
	})
	sendEVE := func(d time.Duration, ev eve.Event) {
		h.clock.set(at(d))
		select {
		case eveCh <- ev:
		case <-time.After(10 * time.Second):
			t.Fatal("the loop takes no EVE event")
		}
		h.sync()
	}

	a := tcpConn(40015, 15, 0, 0, 0, 0)
	sendEVE(500*time.Millisecond, httpEvent(a.Tuple, 1, "/early"))
	newEv := eventOf(a)
	h.send(at(time.Second), conntrack.EventNew, &newEv)
	h.tick(at(1100 * time.Millisecond)) // matches the pending event
	// Suricata logs the reply side's orientation too.
	sendEVE(1200*time.Millisecond, httpEvent(a.Tuple.Reverse(), 2, "/later"))
	d := a
	d.Fwd, d.Rev = flow.Counters{Bytes: 700, Packets: 6}, flow.Counters{Bytes: 900, Packets: 5}
	h.send(at(2*time.Second), conntrack.EventDestroy, &d)
	h.tick(at(2100 * time.Millisecond))
	got := h.sink.all()
	checkRecords(t, got, want{40015, eof, 700, 6, 900, 5})
	if l := got[0].L7; l.AppProtocolName != "http" || !strings.Contains(l.HTTPVals, `"/early"`) || !strings.Contains(l.HTTPVals, `"/later"`) {
		t.Errorf("record L7 = %+v, want http with both transactions", l)
	}
}

func TestNewLoopRejectsBadConfig(t *testing.T) {
	ok := func() LoopConfig {
		return LoopConfig{Source: newFakeSource(), Sink: &fakeSink{}, PollInterval: time.Second, TickInterval: time.Second}
	}
	tests := []struct {
		field string
		mod   func(*LoopConfig)
	}{
		{"Source", func(c *LoopConfig) { c.Source = nil }},
		{"Sink", func(c *LoopConfig) { c.Sink = nil }},
		{"PollInterval", func(c *LoopConfig) { c.PollInterval = 0 }},
		{"TickInterval", func(c *LoopConfig) { c.TickInterval = -time.Second }},
		{"EventQueue", func(c *LoopConfig) { c.EventQueue = -1 }},
		{"NewL7", func(c *LoopConfig) { c.L7Events = make(chan eve.Event) }},
	}
	for _, tt := range tests {
		cfg := ok()
		tt.mod(&cfg)
		if _, err := NewLoop(cfg, nil); err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s: NewLoop = %v, want an error naming it", tt.field, err)
		}
	}
	if _, err := NewLoop(ok(), nil); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A source that batches its events (LoopConfig.EventDelay) hands them to
// the loop a batch at a time: nothing of a batch is applied before its
// end, then all of it, in order (a NEW, then its DESTROY), and an overrun
// is not held back behind a batch end.
func TestBatchedEventsAreAppliedInOrderAtTheBatchEnd(t *testing.T) {
	src := newFakeSource()
	h := newHarness(t, src, func(c *LoopConfig) { c.EventDelay = 10 * time.Millisecond })

	a := tcpConn(40007, 7, 0, 0, 0, 0)
	d := a
	d.Fwd, d.Rev = flow.Counters{Bytes: 1500, Packets: 15}, flow.Counters{Bytes: 2500, Packets: 25}
	h.clock.set(at(time.Second))
	h.deliver(conntrack.Event{Type: conntrack.EventNew, Conn: &a})
	h.deliver(conntrack.Event{Type: conntrack.EventDestroy, Conn: &d})
	h.tick(at(1100 * time.Millisecond))
	if got := h.sink.all(); len(got) != 0 {
		t.Fatalf("records before the batch ended: %+v", got)
	}
	h.deliver(conntrack.Event{Type: conntrack.EventBatchEnd})
	h.tick(at(1200 * time.Millisecond))
	checkRecords(t, h.sink.all(), want{40007, eof, 1500, 15, 2500, 25})

	// An overrun goes at once, with what was read before it.
	b := tcpConn(40008, 8, 300, 3, 400, 4)
	src.set(b)
	h.clock.set(at(2 * time.Second))
	h.deliver(conntrack.Event{Type: conntrack.EventOverrun})
	h.sync()
	if dumps, _ := src.counts(); dumps != 2 {
		t.Fatalf("%d dumps after the overrun, want 2 (start + resync)", dumps)
	}
}
