package packetdrops

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/flow"
)

// TestTupleReuseMixedPending: the previous connection's late drop and the
// new connection's own drops are pending under the same tuple when the
// new connection's first record is made. The record takes only its own;
// the old one is counted unattributed when its TTL ends.
func TestTupleReuseMixedPending(t *testing.T) {
	d, clk, m := newTestDrops(t, Config{TTL: 2 * time.Minute})
	tup := tuple("10.0.0.9", "10.0.0.2", 53000, 53, flow.ProtoUDP)
	d.handle(event{tuple: tup, reason: rNoSocket}) // the old connection's
	clk.t = clk.t.Add(time.Second)
	start := clk.t
	clk.t = clk.t.Add(300 * time.Millisecond)
	for range 3 {
		d.handle(event{tuple: tup, reason: rNetfilter})
		clk.t = clk.t.Add(time.Second)
	}
	d.handle(event{tuple: tup.Reverse(), reason: rQdisc})
	r := flow.Record{Conn: flow.Conn{Tuple: tup, StartNanos: start.UnixNano()}}
	d.Enrich(&r)
	if r.Health.FwdDrops != 3 || r.Health.RevDrops != 1 || r.Health.DropReason != "NETFILTER_DROP" {
		t.Errorf("new connection fwd %d rev %d reason %q, want 3, 1, NETFILTER_DROP", r.Health.FwdDrops, r.Health.RevDrops, r.Health.DropReason)
	}
	if got := counterValue(t, m.attributed, "NO_SOCKET"); got != 0 {
		t.Errorf("attributed{NO_SOCKET} = %v: the old connection's drop was given to the new one", got)
	}
	if got := d.tab.entries[tup].n; got != 1 {
		t.Errorf("%d drops still pending under the tuple, want 1 (the old one)", got)
	}
	clk.t = clk.t.Add(3 * time.Minute)
	d.expire()
	if got := counterValue(t, m.unattributed, "NO_SOCKET"); got != 1 {
		t.Errorf("unattributed{NO_SOCKET} = %v, want 1", got)
	}
	if d.tab.len() != 0 {
		t.Errorf("%d tuples pending after the TTL", d.tab.len())
	}
}

// TestStartSlackAndUnknownStart: a drop within startSlack before the start
// is the connection's (its own first packet, stamped on another clock);
// one well before it is not; with no start known every drop is taken.
func TestStartSlackAndUnknownStart(t *testing.T) {
	d, clk, _ := newTestDrops(t, Config{})
	tup := tuple("10.0.0.1", "10.0.0.2", 1, 2, flow.ProtoTCP)
	d.handle(event{tuple: tup, reason: rNetfilter})
	r := flow.Record{Conn: flow.Conn{Tuple: tup, StartNanos: clk.t.Add(startSlack / 2).UnixNano()}}
	d.Enrich(&r)
	if r.Health.FwdDrops != 1 {
		t.Errorf("a drop %s before the start: fwd %d, want 1", startSlack/2, r.Health.FwdDrops)
	}

	d.handle(event{tuple: tup, reason: rNetfilter})
	r = flow.Record{Conn: flow.Conn{Tuple: tup, StartNanos: clk.t.Add(2 * startSlack).UnixNano()}}
	d.Enrich(&r)
	if r.Health.FwdDrops != 0 {
		t.Errorf("a drop %s before the start: fwd %d, want 0", 2*startSlack, r.Health.FwdDrops)
	}
	clk.t = clk.t.Add(time.Hour)
	r = flow.Record{Conn: flow.Conn{Tuple: tup}} // StartNanos 0: unknown
	d.Enrich(&r)
	if r.Health.FwdDrops != 1 {
		t.Errorf("start unknown: fwd %d, want the pending drop", r.Health.FwdDrops)
	}
}

// TestSpansBounded: a tuple dropping in many separate bursts keeps at most
// maxSpans spans, merging the closest, so the widest gap (a connection
// boundary) still separates what a record takes from what it leaves.
func TestSpansBounded(t *testing.T) {
	d, clk, _ := newTestDrops(t, Config{TTL: time.Hour})
	tup := tuple("10.0.0.1", "10.0.0.2", 1, 2, flow.ProtoTCP)
	// Old connection: bursts 1 s apart; a 20 s gap; new one: bursts 2 s apart.
	for range 5 {
		d.handle(event{tuple: tup, reason: rNoSocket})
		clk.t = clk.t.Add(time.Second)
	}
	clk.t = clk.t.Add(20 * time.Second)
	start := clk.t
	for range 5 {
		d.handle(event{tuple: tup, reason: rNetfilter})
		clk.t = clk.t.Add(2 * time.Second)
	}
	p := d.tab.entries[tup]
	if p.count() > maxSpans || p.n != 10 {
		t.Fatalf("%d spans, %d drops; want at most %d spans and 10 drops", p.count(), p.n, maxSpans)
	}
	r := flow.Record{Conn: flow.Conn{Tuple: tup, StartNanos: start.UnixNano()}}
	d.Enrich(&r)
	if r.Health.FwdDrops != 5 || r.Health.DropReason != "NETFILTER_DROP" {
		t.Errorf("fwd %d reason %q, want the new connection's 5 NETFILTER_DROP", r.Health.FwdDrops, r.Health.DropReason)
	}
	if got := d.tab.entries[tup].n; got != 5 {
		t.Errorf("%d pending, want the old connection's 5", got)
	}
}

// TestDropTimeFromKernelClock: a drop the program stamped a second ago is
// a second old on the wall clock, however late the reader handles it.
func TestDropTimeFromKernelClock(t *testing.T) {
	d, clk, _ := newTestDrops(t, Config{})
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	got := time.Duration(clk.t.UnixNano() - d.dropTime(uint64(ts.Nano()-int64(time.Second))))
	if got < time.Second || got > time.Second+100*time.Millisecond {
		t.Errorf("a drop stamped 1s ago is %s old", got)
	}
	if d.dropTime(0) != clk.t.UnixNano() {
		t.Error("an unstamped drop is not stamped now")
	}
	b := make([]byte, eventSize)
	binary.LittleEndian.PutUint64(b[48:], 123456789)
	if ev, err := decodeEvent(b); err != nil || ev.ktime != 123456789 {
		t.Errorf("decoded ktime %d (%v), want 123456789 from struct drop_event's ktime_ns", ev.ktime, err)
	}
	if off := unsafe.Offsetof(bpfDropEvent{}.KtimeNs); off != 48 {
		t.Errorf("ktime_ns at offset %d, decodeEvent reads 48", off)
	}
}

// failingRegisterer accepts n collectors, then refuses.
type failingRegisterer struct {
	*prometheus.Registry
	n int
}

func (f *failingRegisterer) Register(c prometheus.Collector) error {
	if f.n == 0 {
		return errors.New("refused")
	}
	f.n--
	return f.Registry.Register(c)
}

// TestRegisterAllOrNothing: a registration that fails midway leaves
// nothing registered.
func TestRegisterAllOrNothing(t *testing.T) {
	// The first six include plain counters, which Gather lists unset.
	reg := &failingRegisterer{Registry: prometheus.NewRegistry(), n: 6}
	if _, err := newMetrics(reg); err == nil {
		t.Fatal("registration error not returned")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		t.Errorf("%s left registered", mf.GetName())
	}
}
