package tcphealth

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/flow"
)

// fakeTable is the kernel maps in memory.
type fakeTable struct {
	socks  map[bpfSockKey]bpfSockStats
	minmax map[bpfSockKey]bpfRttMinmax
	stats  [statMax]uint64
	born   uint64
}

func newFakeTable() *fakeTable {
	return &fakeTable{socks: map[bpfSockKey]bpfSockStats{}, minmax: map[bpfSockKey]bpfRttMinmax{}}
}

func (f *fakeTable) lookup(k *bpfSockKey, v *bpfSockStats) (bool, error) {
	s, ok := f.socks[*k]
	*v = s
	return ok, nil
}

func (f *fakeTable) takeMinMax(k *bpfSockKey, mm *bpfRttMinmax) (bool, error) {
	m, ok := f.minmax[*k]
	*mm = m
	delete(f.minmax, *k)
	return ok, nil
}

func (f *fakeTable) delete(k *bpfSockKey) (bool, error) {
	_, ok := f.socks[*k]
	delete(f.socks, *k)
	delete(f.minmax, *k)
	return ok, nil
}

func (f *fakeTable) deleteClosed(k *bpfSockKey, born uint64) (bool, error) {
	s, ok := f.socks[*k]
	if !ok || s.BornNs != born || s.ClosedNs == 0 {
		return false, nil
	}
	return f.delete(k)
}

func (f *fakeTable) each(fn func(k *bpfSockKey, v *bpfSockStats)) error {
	for k, v := range f.socks {
		fn(&k, &v)
	}
	return nil
}

func (f *fakeTable) eachMinMax(fn func(k *bpfSockKey)) error {
	for k := range f.minmax {
		fn(&k)
	}
	return nil
}

func (f *fakeTable) deleteMinMax(k *bpfSockKey) error {
	delete(f.minmax, *k)
	return nil
}

func (f *fakeTable) stat(slot uint32) (uint64, error) { return f.stats[slot], nil }

// sample is what the kernel does on one tcp_probe with an RTT sample.
func (f *fakeTable) sample(k bpfSockKey, rtt uint32) {
	mm, ok := f.minmax[k]
	if !ok {
		mm = bpfRttMinmax{MinUs: rtt, MaxUs: rtt}
	}
	mm.MinUs, mm.MaxUs = min(mm.MinUs, rtt), max(mm.MaxUs, rtt)
	f.minmax[k] = mm
	s := f.socks[k]
	s.RttSumUs += uint64(rtt)
	s.RttSamples++
	f.socks[k] = s
}

func (f *fakeTable) add(k bpfSockKey, fn func(s *bpfSockStats)) {
	s, ok := f.socks[k]
	if !ok {
		f.born++
		s.BornNs = f.born
		f.stats[statCreated]++
	}
	fn(&s)
	f.socks[k] = s
}

type fixture struct {
	t    *testing.T
	tr   *Tracker
	tab  *fakeTable
	mono int64
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	if err := cfg.complete(); err != nil {
		t.Fatal(err)
	}
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tab: newFakeTable(), mono: int64(time.Hour)}
	f.tr = newTracker(cfg, m)
	f.tr.table = f.tab
	f.tr.sweepTable = f.tab
	f.tr.now = func() int64 { return f.mono }
	return f
}

var (
	podA = netip.MustParseAddr("10.244.0.2")
	podB = netip.MustParseAddr("10.244.0.3")
	vip  = netip.MustParseAddr("10.96.0.10")
	snat = netip.MustParseAddr("172.31.0.1")
)

// conn is a client podA:40000 -> podB:8080 connection, dialled through
// the VIP when viaVIP.
func conn(viaVIP bool) flow.Conn {
	c := flow.Conn{Tuple: flow.NewTuple(podA, podB, 40000, 8080, flow.ProtoTCP), ID: 7}
	c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort
	if viaVIP {
		c.OrigDstIP, c.OrigDstPort = vip.As16(), 80
	}
	return c
}

func (f *fixture) enrich(c flow.Conn, end bool) flow.Health {
	f.t.Helper()
	r := flow.Record{Conn: c, EndReason: flow.EndActiveTimeout}
	if end {
		r.EndReason = flow.EndOfFlow
	}
	// Fields owned by another enricher must survive.
	r.Health.FwdDrops, r.Health.DropReason = 3, "NETFILTER_DROP"
	f.tr.Enrich(&r)
	if r.Health.FwdDrops != 3 || r.Health.DropReason != "NETFILTER_DROP" {
		f.t.Fatalf("Enrich overwrote the drop fields: %+v", r.Health)
	}
	r.Health.FwdDrops, r.Health.DropReason = 0, ""
	return r.Health
}

func client(c flow.Conn) bpfSockKey {
	forms, n := c.Forms()
	return sockKey(forms[n-1]) // the dialled form when DNATed
}

func server(c flow.Conn) bpfSockKey { return sockKey(c.Tuple.Reverse()) }

func TestDeltasBetweenRecords(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	cli := client(c)
	f.tab.add(cli, func(s *bpfSockStats) { s.Retrans = 2; s.ZeroWin = 1; s.EstablishUs = 1500 })
	f.tab.sample(cli, 100)
	f.tab.sample(cli, 300)
	f.tab.sample(cli, 200)

	h := f.enrich(c, false)
	want := flow.Health{RTTMinMicros: 100, RTTAvgMicros: 200, RTTMaxMicros: 300, RTTSamples: 3,
		FwdRetransmits: 2, ZeroWindows: 1, EstablishMicros: 1500}
	if h != want {
		t.Fatalf("first record: got %+v, want %+v", h, want)
	}
	// Nothing new: all zero, the establish time not again.
	if h := f.enrich(c, false); h != (flow.Health{}) {
		t.Fatalf("idle record: got %+v, want zero", h)
	}
	// New events: only they count, min/max of the new period only.
	f.tab.add(cli, func(s *bpfSockStats) { s.Retrans += 5; s.ZeroWin += 2 })
	f.tab.sample(cli, 50)
	f.tab.sample(cli, 70)
	h = f.enrich(c, false)
	want = flow.Health{RTTMinMicros: 50, RTTAvgMicros: 60, RTTMaxMicros: 70, RTTSamples: 2, FwdRetransmits: 5, ZeroWindows: 2}
	if h != want {
		t.Fatalf("third record: got %+v, want %+v", h, want)
	}
}

func TestDirectionOfServerSocket(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	f.tab.add(server(c), func(s *bpfSockStats) { s.Retrans = 4; s.RstSent = 1 })
	f.tab.add(client(c), func(s *bpfSockStats) { s.Retrans = 1 })
	h := f.enrich(c, false)
	if h.FwdRetransmits != 1 || h.RevRetransmits != 4 || h.RevResets != 1 || h.FwdResets != 0 {
		t.Fatalf("got %+v, want fwd retrans 1 (client), rev retrans 4 and rev reset 1 (server)", h)
	}
}

func TestResetSentAndReceivedLocallyIsOne(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(true) // through the VIP: the client socket names it
	cli, srv := client(c), server(c)
	if cli == sockKey(c.Tuple) {
		t.Fatal("fixture: the client socket should name the VIP")
	}
	// The server resets; the client receives it.
	f.tab.add(srv, func(s *bpfSockStats) { s.RstSent = 1 })
	f.tab.add(cli, func(s *bpfSockStats) { s.RstRecv = 1 })
	if h := f.enrich(c, false); h.RevResets != 1 || h.FwdResets != 0 {
		t.Fatalf("got %+v, want one reset by the destination", h)
	}
	// The sent and the received half of a reset land in different
	// periods: still one in all.
	f.tab.add(cli, func(s *bpfSockStats) { s.RstSent = 1 })
	h1 := f.enrich(c, false)
	f.tab.add(srv, func(s *bpfSockStats) { s.RstRecv = 1 })
	h2 := f.enrich(c, false)
	if h1.FwdResets+h2.FwdResets != 1 || h1.RevResets+h2.RevResets != 0 {
		t.Fatalf("split reset: got %+v then %+v, want one source reset in all", h1, h2)
	}
	// A reset received with no local sender (a middlebox's) counts too.
	f.tab.add(cli, func(s *bpfSockStats) { s.RstRecv++ })
	if h := f.enrich(c, false); h.RevResets != 1 {
		t.Fatalf("middlebox reset: got %+v, want one destination reset", h)
	}
}

func TestBothSocketsRTTCombined(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(true)
	f.tab.sample(client(c), 10)
	f.tab.sample(client(c), 30)
	f.tab.sample(server(c), 50)
	f.tab.sample(server(c), 70)
	h := f.enrich(c, false)
	if h.RTTMinMicros != 10 || h.RTTMaxMicros != 70 || h.RTTAvgMicros != 40 || h.RTTSamples != 4 {
		t.Fatalf("got %+v, want min 10 avg 40 max 70 over 4 samples", h)
	}
}

func TestMinMaxRaceFallsBackToAverage(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	cli := client(c)
	f.tab.sample(cli, 100)
	f.enrich(c, false)
	// A sample counted without its extremes (they went with the
	// previous read): the average stands for them.
	f.tab.add(cli, func(s *bpfSockStats) { s.RttSamples++; s.RttSumUs += 80 })
	h := f.enrich(c, false)
	if h.RTTMinMicros != 80 || h.RTTMaxMicros != 80 || h.RTTAvgMicros != 80 || h.RTTSamples != 1 {
		t.Fatalf("got %+v, want 80/80/80 over 1 sample", h)
	}
	if v := value(t, f.tr.metrics.minmaxMissing); v != 1 {
		t.Fatalf("rtt_minmax_missing_total %v, want 1", v)
	}
	// Extremes of a sample counted in the next period: clamped so that
	// min <= avg <= max.
	f.tab.minmax[cli] = bpfRttMinmax{MinUs: 500, MaxUs: 500}
	f.tab.add(cli, func(s *bpfSockStats) { s.RttSamples++; s.RttSumUs += 90 })
	h = f.enrich(c, false)
	if h.RTTMinMicros != 90 || h.RTTAvgMicros != 90 || h.RTTMaxMicros != 500 {
		t.Fatalf("got %+v, want min clamped to the average 90, max 500", h)
	}
}

func TestCounterWrap(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	f.tab.add(client(c), func(s *bpfSockStats) { s.Retrans = 0xfffffffe })
	f.enrich(c, false)
	f.tab.add(client(c), func(s *bpfSockStats) { s.Retrans += 5 }) // wraps to 3
	if h := f.enrich(c, false); h.FwdRetransmits != 5 {
		t.Fatalf("got %d retransmits across the wrap, want 5", h.FwdRetransmits)
	}
}

func TestEndOfFlowDeletesAndForgets(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(true)
	other := flow.Conn{Tuple: flow.NewTuple(podA, podB, 40001, 8080, flow.ProtoTCP)}
	f.tab.add(client(c), func(s *bpfSockStats) { s.Retrans = 1 })
	f.tab.add(server(c), func(s *bpfSockStats) { s.Retrans = 1 })
	f.tab.add(client(other), func(s *bpfSockStats) { s.Retrans = 1 })
	f.enrich(c, true)
	if _, ok := f.tab.socks[client(c)]; ok {
		t.Error("client entry kept after the last record")
	}
	if _, ok := f.tab.socks[server(c)]; ok {
		t.Error("server entry kept after the last record")
	}
	if _, ok := f.tab.socks[client(other)]; !ok {
		t.Error("another connection's entry deleted")
	}
	if len(f.tr.conns) != 0 || len(f.tr.owned) != 0 {
		t.Errorf("state kept: %d conns, %d owned", len(f.tr.conns), len(f.tr.owned))
	}
	if v := value(t, f.tr.metrics.deleted.WithLabelValues(delEndOfFlow)); v != 2 {
		t.Errorf("deleted end_of_flow %v, want 2", v)
	}
	// The socket's later events (a timewait reset) start a new entry,
	// which a new record of the tuple reports from zero: nothing twice.
	f.tab.add(client(c), func(s *bpfSockStats) { s.RstSent = 1 })
	if h := f.enrich(c, false); h.FwdResets != 1 || h.FwdRetransmits != 0 {
		t.Fatalf("after the end: got %+v, want only the new reset", h)
	}
}

func TestEntryRecreatedCountsFromZero(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	cli := client(c)
	f.tab.add(cli, func(s *bpfSockStats) { s.Retrans = 10 })
	f.enrich(c, false)
	// Evicted by the LRU, then a new event recreates it.
	delete(f.tab.socks, cli)
	if h := f.enrich(c, false); h != (flow.Health{}) {
		t.Fatalf("entry gone: got %+v, want zero", h)
	}
	f.tab.socks[cli] = bpfSockStats{BornNs: 99, Retrans: 2}
	if h := f.enrich(c, false); h.FwdRetransmits != 2 {
		t.Fatalf("recreated: got %d retransmits, want 2 (the new entry's)", h.FwdRetransmits)
	}
	if v := value(t, f.tr.metrics.vanished); v != 1 {
		t.Fatalf("vanished %v, want 1", v)
	}
}

func TestTupleReusedByNewConnection(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	cli := client(c)
	f.tab.add(cli, func(s *bpfSockStats) { s.Retrans = 1 })
	f.enrich(c, false)
	// The socket closed and a new connection's socket replaced its
	// entry before the old connection's last record.
	f.tab.socks[cli] = bpfSockStats{BornNs: 500, Flags: flagReplaced, Retrans: 3}
	h := f.enrich(c, true)
	if h.FwdRetransmits != 0 {
		t.Fatalf("old connection took the new one's retransmits: %+v", h)
	}
	if _, ok := f.tab.socks[cli]; !ok {
		t.Fatal("old connection's end deleted the new connection's entry")
	}
	// The new connection (a new conntrack id) reports them.
	c2 := c
	c2.ID = 8
	if h := f.enrich(c2, false); h.FwdRetransmits != 3 {
		t.Fatalf("new connection: got %+v, want its 3 retransmits", h)
	}
}

func TestNewConntrackIDSameSocketContinues(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	f.tab.add(client(c), func(s *bpfSockStats) { s.Retrans = 4 })
	f.enrich(c, false)
	c.ID = 9 // conntrack entry recreated, same socket
	f.tab.add(client(c), func(s *bpfSockStats) { s.Retrans++ })
	if h := f.enrich(c, false); h.FwdRetransmits != 1 {
		t.Fatalf("got %d retransmits, want 1 (no double count of the first 4)", h.FwdRetransmits)
	}
}

func TestNonTCPAndUnknownSocketsUntouched(t *testing.T) {
	f := newFixture(t, Config{})
	u := flow.Record{Conn: flow.Conn{Tuple: flow.NewTuple(podA, podB, 1, 2, flow.ProtoUDP)}}
	u.Health.RTTSamples = 42
	f.tr.Enrich(&u)
	if u.Health.RTTSamples != 42 || len(f.tr.conns) != 0 {
		t.Fatalf("UDP record touched: %+v, %d conns", u.Health, len(f.tr.conns))
	}
	if h := f.enrich(conn(false), false); h != (flow.Health{}) {
		t.Fatalf("no socket on this node: got %+v", h)
	}
	// Nothing kept for it: connections this node only forwards must not
	// push out those with sockets here.
	if len(f.tr.conns) != 0 || f.tr.order.Len() != 0 {
		t.Fatalf("state kept for a connection without a local socket: %d conns", len(f.tr.conns))
	}
	// Its socket appears later: counted from its start.
	f.tab.add(client(conn(false)), func(s *bpfSockStats) { s.Retrans = 2 })
	if h := f.enrich(conn(false), false); h.FwdRetransmits != 2 {
		t.Fatalf("socket appearing later: got %+v, want its 2 retransmits", h)
	}
}

func TestSNATForm(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	c.ProxySnatIP, c.ProxySnatPort = snat.As16(), 30000
	// The backend's socket sees the translated source.
	srv := sockKey(flow.NewTuple(podB, snat, 8080, 30000, flow.ProtoTCP))
	f.tab.add(srv, func(s *bpfSockStats) { s.Retrans = 2 })
	if h := f.enrich(c, false); h.RevRetransmits != 2 {
		t.Fatalf("got %+v, want the SNATed server socket's 2 retransmits as reverse", h)
	}
}

func TestCapacityForgetsOldestWithEntries(t *testing.T) {
	f := newFixture(t, Config{MaxConnections: 2})
	var cs []flow.Conn
	for i := range 3 {
		c := flow.Conn{Tuple: flow.NewTuple(podA, podB, uint16(50000+i), 8080, flow.ProtoTCP)}
		f.tab.add(client(c), func(s *bpfSockStats) { s.Retrans = 1 })
		cs = append(cs, c)
		f.mono++
		f.enrich(c, false)
	}
	if len(f.tr.conns) != 2 {
		t.Fatalf("%d conns kept, want 2", len(f.tr.conns))
	}
	if _, ok := f.tab.socks[client(cs[0])]; ok {
		t.Fatal("the forgotten connection's entry was kept (its next record would count it twice)")
	}
	if v := value(t, f.tr.metrics.forgotten.WithLabelValues(forgetCapacity)); v != 1 {
		t.Fatalf("forgotten capacity %v, want 1", v)
	}
}

func TestSweep(t *testing.T) {
	f := newFixture(t, Config{ClosedGrace: time.Minute, StaleAfter: 10 * time.Minute})
	c := conn(false)
	taken := client(c)
	f.tab.add(taken, func(s *bpfSockStats) { s.Retrans = 1; s.ClosedNs = uint64(f.mono) })
	f.enrich(c, false)
	untaken := sockKey(flow.NewTuple(podA, podB, 1234, 80, flow.ProtoTCP))
	f.tab.add(untaken, func(s *bpfSockStats) { s.ClosedNs = uint64(f.mono) })
	open := sockKey(flow.NewTuple(podA, podB, 1235, 80, flow.ProtoTCP))
	f.tab.add(open, func(*bpfSockStats) {})
	orphan := sockKey(flow.NewTuple(podA, podB, 1236, 80, flow.ProtoTCP))
	f.tab.minmax[orphan] = bpfRttMinmax{MinUs: 1, MaxUs: 1}

	f.mono += int64(30 * time.Second)
	prev := f.tr.sweep(nil)
	if len(f.tab.socks) != 3 {
		t.Fatalf("swept within the grace: %d entries left, want 3", len(f.tab.socks))
	}
	f.mono += int64(time.Minute)
	f.tr.sweep(prev)
	if _, ok := f.tab.socks[untaken]; ok {
		t.Error("closed untaken entry not swept")
	}
	if _, ok := f.tab.socks[taken]; !ok {
		t.Error("closed entry a connection holds was swept")
	}
	if _, ok := f.tab.socks[open]; !ok {
		t.Error("open entry swept")
	}
	if _, ok := f.tab.minmax[orphan]; ok {
		t.Error("orphan min/max entry kept after two sweeps")
	}
	if v := value(t, f.tr.metrics.deleted.WithLabelValues(delSwept)); v != 1 {
		t.Errorf("swept %v, want 1", v)
	}
	// An entry gone without anyone deleting it: the LRU evicted it.
	delete(f.tab.socks, open)
	f.tr.sweep(nil)
	if v := value(t, f.tr.metrics.evicted); v != 1 {
		t.Errorf("evicted estimate %v, want 1", v)
	}
	// Stale: the connection is forgotten with its entry.
	f.mono += int64(10 * time.Minute)
	f.tr.sweep(nil)
	if len(f.tr.conns) != 0 {
		t.Fatal("stale connection kept")
	}
	if _, ok := f.tab.socks[taken]; ok {
		t.Error("stale connection's entry kept")
	}
}

func TestConfigErrorsNameField(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{MapEntries: 3}, "mapEntries 3: must be between 16 and 16777216"},
		{Config{MapEntries: 1 << 30}, "mapEntries 1073741824: must be between 16 and 16777216"},
		{Config{MaxConnections: -1}, "maxConnections -1: must be positive"},
		{Config{ClosedGrace: -time.Second}, "closedGrace -1s: must be positive"},
		{Config{SweepInterval: -time.Second}, "sweepInterval -1s: must be positive"},
	} {
		err := tc.cfg.complete()
		if err == nil || err.Error() != tc.want {
			t.Errorf("%+v: got %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// value reads a counter or gauge.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// TestEnrichSteadyStateAllocs: a record of a known connection costs no
// allocation in Enrich itself (the agent calls it for every record).
func TestEnrichSteadyStateAllocs(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(true)
	f.tab.add(client(c), func(*bpfSockStats) {})
	f.tab.add(server(c), func(*bpfSockStats) {})
	r := flow.Record{Conn: c}
	f.tr.Enrich(&r)
	allocs := testing.AllocsPerRun(100, func() {
		f.tab.sample(client(c), 10)
		f.tr.Enrich(&r)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per Enrich, want 0", allocs)
	}
	if r.Health.RTTSamples != 1 {
		t.Fatalf("last record %+v, want its one sample", r.Health)
	}
}
