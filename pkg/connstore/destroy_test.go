package connstore

import (
	"slices"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// newEventHarness is the store as the agent runs it with conntrack events
// on: DESTROY events arrive and tombstones wait for them.
func newEventHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry()}
	q, err := expirequeue.New(expirequeue.Config{ActiveTimeout: 5 * sec, IdleTimeout: 15 * sec}, h.reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Scheduler, cfg.Emit, cfg.AwaitDestroy = q, h.emit, true
	s, err := New(cfg, h.reg)
	if err != nil {
		t.Fatal(err)
	}
	h.store, h.queue = s, q
	return h
}

func destroyWant(at time.Duration, c flow.Conn, want Change) func(*harness) {
	return func(h *harness) {
		h.t.Helper()
		if got := h.store.Destroyed(&c, t0.Add(at)); got != want {
			h.t.Fatalf("Destroyed(port %d id %d) at %s = %s, want %s", c.Tuple.SrcPort, c.ID, at, got, want)
		}
	}
}

func runSteps(h *harness, steps []step) {
	h.t.Helper()
	for i, st := range steps {
		h.got = nil
		st.do(h)
		if !slices.Equal(h.got, st.want) {
			h.t.Fatalf("step %d produced %+v, want %+v", i, h.got, st.want)
		}
	}
}

// started is conn with a kernel start time, as with nf_conntrack_timestamp.
func started(c flow.Conn, at time.Duration) flow.Conn {
	c.StartNanos = t0.Add(at).UnixNano()
	return c
}

func timeWait(c flow.Conn) flow.Conn {
	c.TCPState = flow.TCPStateTimeWait
	return c
}

// Issue 9 finding 1: under 1k short TCP connections/s through a DNAT
// Service, 29% of connections got a second end-of-flow record about 120 s
// after they closed, when their TIME_WAIT entry expired: the dump taken
// after the expiry no longer returned the entry, EndDump dropped its
// tombstone, and the DESTROY that followed looked like a new connection.
// The steps are the order in which the agent's loop sees the kernel's
// reports.
func TestDestroyAfterTimeWaitTombstoneNotExportedTwice(t *testing.T) {
	const A = 40001
	ms := time.Millisecond
	first := started(conn(A, 7, 0, 0), 0)
	final := timeWait(started(conn(A, 7, 12, 6), 0))
	lastACK := timeWait(started(conn(A, 7, 13, 6), 0)) // counted during TIME_WAIT
	steps := []step{
		{do: dump(0, 0)},                        // the agent's first poll, before the connection
		{do: upWant(10*ms, first, Created)},     // NEW event
		{do: closeWant(100*ms, final, Updated)}, // UPDATE to TIME_WAIT, counters read with GET
		{do: tick(200 * ms), want: []rec{{A, 7, flow.EndOfFlow, 12, 6, 200 * ms}}},
	}
	// TIME_WAIT: every poll returns the entry (a finished one, so the loop
	// hands it to Close) until it expires 120 s after the close.
	for s := time.Duration(1); s <= 120; s++ {
		steps = append(steps,
			step{do: closeWant(s*sec, lastACK, Ignored)},
			step{do: dump(s*sec, 0)},
			step{do: tick(s*sec + 500*ms)})
	}
	steps = append(steps,
		// The entry expired: the next dump skips it (and has the kernel
		// evict it), then its DESTROY event is handled.
		step{do: dump(121*sec, 0)},
		step{do: destroyWant(121*sec+10*ms, lastACK, Ignored)},
		step{do: tick(121*sec + 500*ms)},
		step{do: dump(122*sec, 0)},
		step{do: tick(130 * sec)},
		step{do: wantLen(0)},
		step{do: wantTombs(0)},
		// The tuple is free again: a new connection on it, even with the
		// same conntrack id (ids hash the entry's address and tuple), is a
		// new connection and is exported once, with its own counters.
		step{do: upWant(200*sec, started(conn(A, 7, 0, 0), 200*sec), Created)},
		step{do: closeWant(200*sec+50*ms, timeWait(started(conn(A, 7, 3, 2), 200*sec)), Updated)},
		step{do: tick(200*sec + 100*ms), want: []rec{{A, 7, flow.EndOfFlow, 3, 2, 200*sec + 100*ms}}},
	)
	h := newEventHarness(t, Config{})
	runSteps(h, steps)
}

func wantTombs(n int) func(*harness) {
	return func(h *harness) {
		h.t.Helper()
		if h.store.retired != n {
			h.t.Fatalf("store holds %d tombstones, want %d", h.store.retired, n)
		}
	}
}

func wantMetric(series string, v float64) func(*harness) {
	return func(h *harness) {
		h.t.Helper()
		if got := gather(h.t, h.reg)[series]; got != v {
			h.t.Fatalf("%s = %v, want %v", series, got, v)
		}
	}
}

func TestDestroyedWithAwaitDestroy(t *testing.T) {
	const A, B, C = 40001, 40002, 40003
	ms := time.Millisecond
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{
			name: "DESTROY of a tuple never seen is exported once, then forgotten",
			steps: []step{
				{do: dump(0, 0)},
				{do: destroyWant(sec, conn(A, 1, 3, 2), Created)},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 3, 2, 2 * sec}}},
				{do: dump(3*sec, 0)},
				{do: wantTombs(0)},
				{do: wantLen(0)},
			},
		},
		{
			name: "DESTROY of a live connection closes it with the final counters",
			steps: []step{
				{do: upWant(0, conn(A, 1, 10, 5), Created)},
				{do: dump(0, 0)},
				{do: destroyWant(2*sec, conn(A, 1, 12, 6), Updated)},
				{do: tick(3 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 3 * sec}}},
				// A dump requested before the DESTROY hands its row late.
				{do: upWant(sec+500*ms, conn(A, 1, 12, 6), Ignored)},
				{do: dump(sec+500*ms, 0)},
				{do: wantTombs(1)},
				{do: dump(4*sec, 0)}, // requested after the DESTROY
				{do: wantTombs(0)},
			},
		},
		{
			name: "DESTROY between the close and the export updates the final record",
			steps: []step{
				{do: upWant(0, conn(A, 1, 10, 5), Created)},
				{do: dump(0, 0)},
				{do: closeWant(sec, timeWait(conn(A, 1, 12, 6)), Updated)},
				{do: destroyWant(sec+10*ms, conn(A, 1, 13, 6), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 13, 6, 2 * sec}}},
				{do: dump(3*sec, 0)},
				{do: wantTombs(0)},
			},
		},
		{
			name: "tombstone whose DESTROY never comes is dropped TombstoneMaxAge after the first dump that missed it",
			cfg:  Config{TombstoneMaxAge: 10 * sec},
			steps: []step{
				{do: upWant(0, conn(A, 1, 10, 5), Created)},
				{do: dump(0, 0)},
				{do: closeWant(sec, timeWait(conn(A, 1, 12, 6)), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 2 * sec}}},
				{do: closeWant(3*sec, timeWait(conn(A, 1, 12, 6)), Ignored)},
				{do: dump(3*sec, 0)},
				{do: dump(4*sec, 0)}, // gone: its DESTROY is due
				{do: dump(13*sec, 0)},
				{do: wantTombs(1)},
				{do: wantMetric(`flowlens_connstore_tombstones_dropped_total{cause="max-age"}`, 0)},
				{do: dump(14*sec, 0)},
				{do: wantTombs(0)},
				{do: wantMetric(`flowlens_connstore_tombstones_dropped_total{cause="max-age"}`, 1)},
			},
		},
		{
			name: "a tombstone seen again by a dump starts its wait over",
			cfg:  Config{TombstoneMaxAge: 10 * sec},
			steps: []step{
				{do: upWant(0, conn(A, 1, 10, 5), Created)},
				{do: dump(0, 0)},
				{do: closeWant(sec, timeWait(conn(A, 1, 12, 6)), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 2 * sec}}},
				{do: dump(3*sec, 0)}, // missed once
				{do: closeWant(8*sec, timeWait(conn(A, 1, 12, 6)), Ignored)},
				{do: dump(8*sec, 0)},
				{do: dump(9*sec, 0)},
				{do: dump(18*sec, 0)},
				{do: wantTombs(1)},
				{do: destroyWant(18*sec+ms, conn(A, 1, 12, 6), Ignored)},
				{do: tick(19 * sec)},
				{do: wantMetric(`flowlens_connstore_tombstone_destroys_total`, 1)},
			},
		},
		{
			name: "a newer entry on a tombstone's tuple seen by a dump before the old DESTROY (start times)",
			steps: []step{
				{do: upWant(0, started(conn(A, 1, 10, 5), 0), Created)},
				{do: dump(0, 0)},
				{do: closeWant(sec, timeWait(started(conn(A, 1, 12, 6), 0)), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 2 * sec}}},
				// A SYN reused the tuple: the kernel sent DESTROY(1) and
				// NEW(2), but a dump returned entry 2 first.
				{do: upWant(5*sec, started(conn(A, 2, 1, 0), 4*sec), Created)},
				{do: destroyWant(5*sec+ms, timeWait(started(conn(A, 1, 12, 6), 0)), Ignored)},
				{do: upWant(5*sec+2*ms, started(conn(A, 2, 0, 0), 4*sec), Updated)}, // NEW(2)
				{do: destroyWant(6*sec, started(conn(A, 2, 4, 3), 4*sec), Updated)},
				{do: tick(7 * sec), want: []rec{{A, 2, flow.EndOfFlow, 4, 3, 7 * sec}}},
			},
		},
		{
			name: "a newer entry on a tombstone's tuple seen by a dump before the old DESTROY (no start times)",
			steps: []step{
				{do: upWant(0, conn(A, 1, 10, 5), Created)},
				{do: dump(0, 0)},
				{do: closeWant(sec, timeWait(conn(A, 1, 12, 6)), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 2 * sec}}},
				{do: upWant(5*sec, conn(A, 2, 1, 0), Created)},
				{do: destroyWant(5*sec+ms, timeWait(conn(A, 1, 12, 6)), Ignored)},
				{do: upWant(5*sec+2*ms, conn(A, 2, 0, 0), Updated)},
				{do: destroyWant(6*sec, conn(A, 2, 4, 3), Updated)},
				{do: tick(7 * sec), want: []rec{{A, 2, flow.EndOfFlow, 4, 3, 7 * sec}}},
			},
		},
		{
			name: "same, and the new entry reuses the old conntrack id",
			steps: []step{
				{do: upWant(0, conn(A, 1, 10, 5), Created)},
				{do: dump(0, 0)},
				{do: closeWant(sec, timeWait(conn(A, 1, 12, 6)), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 2 * sec}}},
				{do: upWant(5*sec, conn(A, 1, 1, 0), Created)}, // counters below the tombstone's
				{do: destroyWant(5*sec+ms, timeWait(conn(A, 1, 12, 6)), Ignored)},
				{do: destroyWant(6*sec, conn(A, 1, 4, 3), Updated)},
				{do: tick(7 * sec), want: []rec{{A, 1, flow.EndOfFlow, 4, 3, 7 * sec}}},
			},
		},
		{
			name: "after its DESTROY, a report on the tuple is a new connection even under the same id",
			steps: []step{
				{do: upWant(0, conn(A, 5, 10, 5), Created)},
				{do: dump(0, 0)},
				{do: closeWant(sec, timeWait(conn(A, 5, 12, 6)), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 5, flow.EndOfFlow, 12, 6, 2 * sec}}},
				{do: destroyWant(3*sec, conn(A, 5, 12, 6), Ignored)},
				{do: upWant(3*sec+ms, conn(A, 5, 0, 0), Created)}, // NEW, no counters
				{do: closeWant(3*sec+2*ms, timeWait(conn(A, 5, 20, 10)), Updated)},
				{do: tick(4 * sec), want: []rec{{A, 5, flow.EndOfFlow, 20, 10, 4 * sec}}},
			},
		},
		{
			name: "a closed connection reported again after its DESTROY is replaced, not merged",
			cfg:  Config{},
			steps: []step{
				{do: upWant(0, conn(A, 5, 10, 5), Created)},
				{do: destroyWant(sec, conn(A, 5, 12, 6), Updated)},
				{do: upWant(sec+ms, conn(A, 5, 0, 0), Replaced), want: []rec{{A, 5, flow.EndOfFlow, 12, 6, sec + ms}}},
				{do: destroyWant(sec+2*ms, conn(A, 5, 1, 1), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 5, flow.EndOfFlow, 1, 1, 2 * sec}}},
			},
		},
		{
			name: "DESTROY of a newer entry on a tombstone's tuple (its other events lost) is exported once",
			steps: []step{
				{do: upWant(0, started(conn(A, 1, 10, 5), 0), Created)},
				{do: dump(0, 0)},
				{do: destroyWant(sec, started(conn(A, 1, 10, 5), 0), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 10, 5, 2 * sec}}},
				{do: destroyWant(3*sec, started(conn(A, 2, 4, 4), 2*sec), Created)},
				{do: tick(4 * sec), want: []rec{{A, 2, flow.EndOfFlow, 4, 4, 4 * sec}}},
			},
		},
		{
			name: "DESTROY with another id on a live connection ends both connections once each",
			steps: []step{
				{do: upWant(0, conn(A, 1, 10, 5), Created)},
				{do: destroyWant(sec, conn(A, 2, 4, 4), Replaced), want: []rec{{A, 1, flow.EndOfFlow, 10, 5, sec}}},
				{do: tick(2 * sec), want: []rec{{A, 2, flow.EndOfFlow, 4, 4, 2 * sec}}},
			},
		},
		{
			name: "older DESTROY on a live connection (start times) is ignored",
			steps: []step{
				{do: upWant(0, started(conn(A, 2, 1, 1), 5*sec), Created)},
				{do: destroyWant(sec, started(conn(A, 1, 50, 50), 0), Ignored)},
				{do: tick(5 * sec), want: []rec{{A, 2, flow.EndActiveTimeout, 1, 1, 5 * sec}}},
			},
		},
		{
			name: "tombstone awaiting its DESTROY is dropped first at MaxConnections, and counted",
			cfg:  Config{MaxConnections: 2},
			steps: []step{
				{do: upWant(0, conn(A, 1, 10, 5), Created)},
				{do: upWant(0, conn(B, 2, 1, 1), Created)},
				{do: closeWant(sec, timeWait(conn(A, 1, 10, 5)), Updated)},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 10, 5, 2 * sec}}},
				{do: upWant(3*sec, conn(C, 3, 1, 1), Created)}, // no lack-of-resources record
				{do: wantMetric(`flowlens_connstore_tombstones_dropped_total{cause="capacity"}`, 1)},
				{do: wantLen(2)},
			},
		},
		{
			name: "UDP: DESTROY closes and exports once; the tombstone ends with the next dump",
			steps: []step{
				{do: dump(0, 0)},
				{do: upWant(0, udp(C, 9, 2, 2), Created)},
				{do: destroyWant(30*sec, udp(C, 9, 3, 3), Updated)},
				{do: tick(30*sec + 100*ms), want: []rec{{C, 9, flow.EndOfFlow, 3, 3, 30*sec + 100*ms}}},
				{do: dump(31*sec, 0)},
				{do: wantTombs(0)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runSteps(newEventHarness(t, tt.cfg), tt.steps)
		})
	}
}

func udp(port uint16, id uint32, fwd, rev uint64) flow.Conn {
	c := conn(port, id, fwd, rev)
	c.Tuple.Proto = flow.ProtoUDP
	c.TCPState = 0
	return c
}
