package agent

import (
	"context"
	"errors"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
)

// fakeSource is a conntrack table the test edits. Dump returns its rows;
// Get returns the row of a tuple; Listen delivers the events the test sends.
type fakeSource struct {
	mu      sync.Mutex
	table   map[flow.Tuple]flow.Conn
	dumpErr error
	getErr  error
	dumps   int
	gets    []flow.Tuple
	events  chan fakeEvent
	gate    chan struct{} // when set, a dump waits until it is closed
	// listenCalls counts Listen calls.
	listenCalls atomic.Int32
}

type fakeEvent struct {
	ev   conntrack.Event
	done chan struct{} // closed once the loop took the event
}

func newFakeSource() *fakeSource {
	return &fakeSource{table: map[flow.Tuple]flow.Conn{}, events: make(chan fakeEvent)}
}

func (f *fakeSource) set(cs ...flow.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		f.table[c.Tuple] = c
	}
}

func (f *fakeSource) remove(t flow.Tuple) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.table, t)
}

func (f *fakeSource) failDumps(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dumpErr = err
}

func (f *fakeSource) failGets(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.getErr = err
}

func (f *fakeSource) counts() (dumps int, gets []flow.Tuple) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dumps, append([]flow.Tuple(nil), f.gets...)
}

// gateDumps makes the next dumps wait until the returned gate is closed.
func (f *fakeSource) gateDumps() chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate = make(chan struct{})
	return f.gate
}

func (f *fakeSource) Dump(fn func(*flow.Conn)) error {
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dumps++
	var c flow.Conn // reused, as the real source does
	for _, row := range f.table {
		c = row
		fn(&c)
	}
	return f.dumpErr // a failing dump may have reported some rows first
}

func (f *fakeSource) Get(c *flow.Conn) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets = append(f.gets, c.Tuple)
	if f.getErr != nil {
		return f.getErr
	}
	row, ok := f.table[c.Tuple]
	if !ok {
		return conntrack.ErrNotFound
	}
	*c = row
	return nil
}

func (f *fakeSource) Listen(ctx context.Context, fn func(conntrack.Event)) error {
	f.listenCalls.Add(1)
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-f.events:
			fn(e.ev)
			close(e.done)
		}
	}
}

func (f *fakeSource) listens() int { return int(f.listenCalls.Load()) }

// fakeClock is set by the test; its tickers tick when the test says so.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	tickers chan *fakeTicker
}

func newFakeClock(now time.Time) *fakeClock {
	return &fakeClock{now: now, tickers: make(chan *fakeTicker, 8)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *fakeClock) NewTicker(d time.Duration) Ticker {
	t := &fakeTicker{d: d, c: make(chan time.Time)}
	c.tickers <- t
	return t
}

type fakeTicker struct {
	d time.Duration
	c chan time.Time // unbuffered: a send returns once the loop took it
}

func (t *fakeTicker) C() <-chan time.Time { return t.c }
func (t *fakeTicker) Stop()               {}

// fakeSink keeps copies of the records.
type fakeSink struct {
	mu      sync.Mutex
	records []flow.Record
}

func (s *fakeSink) Export(r *flow.Record) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = append(s.records, *r)
	return true
}

func (s *fakeSink) all() []flow.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]flow.Record(nil), s.records...)
}

// harness runs a Loop on a fake source, clock and sink. Every step waits
// until the loop has finished handling it (see sync), so what the test
// asserts does not depend on goroutine scheduling.
type harness struct {
	t      *testing.T
	src    *fakeSource
	clock  *fakeClock
	sink   *fakeSink
	loop   *Loop
	poller *fakeTicker
	ticker *fakeTicker
	cancel context.CancelFunc
	done   chan struct{}
}

// fakeStream is an EventStream whose events the test queues with push.
// Each Drain signals drained when it returns: with no listener, a test
// syncs with the loop's tick through it.
type fakeStream struct {
	mu      sync.Mutex
	queue   []conntrack.Event
	err     error
	closed  bool
	drained chan struct{}
}

func newFakeStream() *fakeStream { return &fakeStream{drained: make(chan struct{}, 64)} }

func (f *fakeStream) push(evs ...conntrack.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range evs {
		if ev.Conn != nil {
			c := *ev.Conn
			ev.Conn = &c
		}
		f.queue = append(f.queue, ev)
	}
}

func (f *fakeStream) Drain(max int, fn func(conntrack.Event)) error {
	f.mu.Lock()
	q, err := f.queue, f.err
	if max > 0 && len(q) > max {
		q, f.queue = q[:max], q[max:]
	} else {
		f.queue = nil
	}
	f.mu.Unlock()
	defer func() { f.drained <- struct{}{} }()
	for _, ev := range q {
		fn(ev)
	}
	return err
}

func (f *fakeStream) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeStream) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// withStream makes the loop read its events from s at its ticks.
func withStream(s *fakeStream) func(*LoopConfig) {
	return func(c *LoopConfig) {
		c.OpenEvents = func() (EventStream, error) { return s, nil }
	}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

const (
	pollEvery   = time.Second
	tickEvery   = 100 * time.Millisecond
	activeAfter = 10 * time.Second
	idleAfter   = 30 * time.Second
)

// newHarness builds the loop with mod applied to its config and starts it;
// the loop's first dump happens at t0.
func newHarness(t *testing.T, src *fakeSource, mod func(*LoopConfig)) *harness {
	t.Helper()
	h := &harness{t: t, src: src, clock: newFakeClock(t0), sink: &fakeSink{}}
	cfg := LoopConfig{
		Source:       src,
		Events:       true,
		PollInterval: pollEvery,
		TickInterval: tickEvery,
		Queue:        expirequeue.Config{ActiveTimeout: activeAfter, IdleTimeout: idleAfter},
		Sink:         h.sink,
		Clock:        h.clock,
	}
	if mod != nil {
		mod(&cfg)
	}
	var err error
	if h.loop, err = NewLoop(cfg, nil); err != nil {
		t.Fatalf("NewLoop: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	go func() {
		h.loop.Run(ctx)
		close(h.done)
	}()
	for range 2 {
		select {
		case tk := <-h.clock.tickers:
			switch tk.d {
			case pollEvery:
				h.poller = tk
			case tickEvery:
				h.ticker = tk
			}
		case <-h.done:
			t.Fatal("Run returned at start")
		case <-time.After(10 * time.Second):
			t.Fatal("the loop made no tickers")
		}
	}
	t.Cleanup(func() { h.stop(h.clock.Now()) })
	return h
}

// send hands the loop one conntrack event at time at and waits until it
// was handled.
func (h *harness) send(at time.Time, typ conntrack.EventType, c *flow.Conn) {
	h.t.Helper()
	h.clock.set(at)
	h.deliver(conntrack.Event{Type: typ, Conn: c})
	h.sync()
}

func (h *harness) deliver(ev conntrack.Event) {
	h.t.Helper()
	e := fakeEvent{ev: ev, done: make(chan struct{})}
	select {
	case h.src.events <- e:
	case <-time.After(10 * time.Second):
		h.t.Fatal("the loop's listener takes no event")
	}
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		h.t.Fatal("the loop takes no event")
	}
}

// sync returns once the loop is back waiting for input, i.e. it finished
// whatever it was handling. An event of no known type is one it takes and
// ignores.
func (h *harness) sync() {
	h.t.Helper()
	h.deliver(conntrack.Event{})
	// A loop that takes events in batches (LoopConfig.EventDelay) takes
	// the empty one at the batch's end; otherwise the end does nothing.
	h.deliver(conntrack.Event{Type: conntrack.EventBatchEnd})
}

// poll makes the loop dump the source at time at.
func (h *harness) poll(at time.Time) {
	h.t.Helper()
	h.clock.set(at)
	h.fire(h.poller, at)
}

// tick makes the loop export what is due at time at.
func (h *harness) tick(at time.Time) {
	h.t.Helper()
	h.clock.set(at)
	h.fire(h.ticker, at)
}

// pollStream is poll for a loop that reads an EventStream and holds its
// events during a dump: it returns once the dump read the stream.
func (h *harness) pollStream(s *fakeStream, at time.Time) {
	h.t.Helper()
	h.clock.set(at)
	select {
	case h.poller.c <- at:
	case <-time.After(10 * time.Second):
		h.t.Fatal("the loop does not read its poll ticker")
	}
	select {
	case <-s.drained:
	case <-time.After(10 * time.Second):
		h.t.Fatal("the dump did not read the event stream")
	}
}

func (f *fakeStream) queued() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.queue)
}

// tickStream is tick for a loop that reads an EventStream: it returns once
// the tick drained the stream (the rest of the tick may still run; the
// next step waits for it).
func (h *harness) tickStream(s *fakeStream, at time.Time) {
	h.t.Helper()
	h.clock.set(at)
	select {
	case h.ticker.c <- at:
	case <-time.After(10 * time.Second):
		h.t.Fatal("the loop does not read its ticker")
	}
	select {
	case <-s.drained:
	case <-time.After(10 * time.Second):
		h.t.Fatal("the tick did not drain the event stream")
	}
}

func (h *harness) fire(tk *fakeTicker, at time.Time) {
	h.t.Helper()
	select {
	case tk.c <- at:
	case <-time.After(10 * time.Second):
		h.t.Fatal("the loop does not read its ticker")
	}
	h.sync()
}

// stop ends Run at time at; later calls do nothing.
func (h *harness) stop(at time.Time) {
	h.t.Helper()
	if h.cancel == nil {
		return
	}
	h.clock.set(at)
	h.cancel()
	h.cancel = nil
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		h.t.Fatal("Run did not return after cancel")
	}
}

var (
	clientIP = netip.MustParseAddr("10.244.0.2")
	serverIP = netip.MustParseAddr("10.244.0.3")
)

// tcpConn is an established connection from the client's port sport with
// the given totals.
func tcpConn(sport uint16, id uint32, fwdBytes, fwdPkts, revBytes, revPkts uint64) flow.Conn {
	t := flow.NewTuple(clientIP, serverIP, sport, 8080, flow.ProtoTCP)
	return flow.Conn{
		Tuple: t, OrigDstIP: t.DstIP, OrigDstPort: t.DstPort,
		ID: id, TCPState: flow.TCPStateEstablished, StartNanos: t0.Add(-time.Minute).UnixNano(),
		Fwd: flow.Counters{Bytes: fwdBytes, Packets: fwdPkts},
		Rev: flow.Counters{Bytes: revBytes, Packets: revPkts},
	}
}

// finished is c after its FIN handshake, with these final totals.
func finished(c flow.Conn, fwdBytes, fwdPkts, revBytes, revPkts uint64) flow.Conn {
	c.TCPState = flow.TCPStateTimeWait
	c.Fwd = flow.Counters{Bytes: fwdBytes, Packets: fwdPkts}
	c.Rev = flow.Counters{Bytes: revBytes, Packets: revPkts}
	return c
}

// eventOf is what a NEW or UPDATE event reports: no counters, no start.
func eventOf(c flow.Conn) flow.Conn {
	c.Fwd, c.Rev, c.StartNanos = flow.Counters{}, flow.Counters{}, 0
	return c
}

// want is one expected record: which connection, why, and its deltas.
type want struct {
	sport                              uint16
	reason                             flow.EndReason
	fwdBytes, fwdPkts, revBytes, revPk uint64
}

// checkRecords compares records in export order; records of one expiry
// round (same export time) are compared in order of source port, since the
// queue does not order equal deadlines.
func checkRecords(t *testing.T, got []flow.Record, wants ...want) {
	t.Helper()
	got = append([]flow.Record(nil), got...)
	sort.SliceStable(got, func(i, j int) bool {
		if got[i].ExportNanos != got[j].ExportNanos {
			return got[i].ExportNanos < got[j].ExportNanos
		}
		return got[i].Tuple.SrcPort < got[j].Tuple.SrcPort
	})
	if len(got) != len(wants) {
		for _, r := range got {
			t.Logf("record %d %s fwd %+v rev %+v", r.Tuple.SrcPort, r.EndReason, r.FwdDelta, r.RevDelta)
		}
		t.Fatalf("%d records, want %d", len(got), len(wants))
	}
	for i, w := range wants {
		r := got[i]
		wf := flow.Counters{Bytes: w.fwdBytes, Packets: w.fwdPkts}
		wr := flow.Counters{Bytes: w.revBytes, Packets: w.revPk}
		if r.Tuple.SrcPort != w.sport || r.EndReason != w.reason || r.FwdDelta != wf || r.RevDelta != wr {
			t.Errorf("record %d: port %d %s fwd %+v rev %+v; want port %d %s fwd %+v rev %+v",
				i, r.Tuple.SrcPort, r.EndReason, r.FwdDelta, r.RevDelta, w.sport, w.reason, wf, wr)
		}
	}
}

// checkSums checks that the deltas of each connection's records (tuple and
// conntrack id) add up to the totals of its last record: nothing counted
// twice or lost.
func checkSums(t *testing.T, got []flow.Record) {
	t.Helper()
	type key struct {
		tuple flow.Tuple
		id    uint32
	}
	type sum struct{ fwd, rev flow.Counters }
	sums := map[key]*sum{}
	last := map[key]flow.Record{}
	for _, r := range got {
		k := key{r.Tuple, r.ID}
		s := sums[k]
		if s == nil {
			s = &sum{}
			sums[k] = s
		}
		s.fwd.Bytes += r.FwdDelta.Bytes
		s.fwd.Packets += r.FwdDelta.Packets
		s.rev.Bytes += r.RevDelta.Bytes
		s.rev.Packets += r.RevDelta.Packets
		last[k] = r
	}
	for k, s := range sums {
		if l := last[k]; s.fwd != l.Fwd || s.rev != l.Rev {
			t.Errorf("%s id %d: deltas sum to fwd %+v rev %+v, totals fwd %+v rev %+v", k.tuple, k.id, s.fwd, s.rev, l.Fwd, l.Rev)
		}
	}
}

var errDump = errors.New("netlink: no buffer space")

// fakePolicy opts every connection's destination into L7 export.
type fakePolicy struct{}

func (fakePolicy) L7Want(*flow.Conn) flow.L7Want { return flow.L7Destination }

func httpEvent(t flow.Tuple, tx uint64, url string) eve.Event {
	return eve.Event{
		Tuple: t, Type: "http", AppProto: "http", TxID: tx, HasTxID: true,
		HTTP: &eve.HTTP{Hostname: "web", URL: url, Method: "GET", Protocol: "HTTP/1.1", Status: 200, TxID: tx},
	}
}
