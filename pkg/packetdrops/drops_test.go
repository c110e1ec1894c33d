package packetdrops

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/btf"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Reason values of a made-up kernel: the names are what matters, and the
// numbering differs on purpose from any real kernel's.
const (
	rNetfilter = 40
	rNoSocket  = 7
	rQdisc     = 90
)

func fakeNames() *reasonNames {
	return newReasonNames([]btf.EnumValue{
		{Name: "SKB_NOT_DROPPED_YET", Value: 0},
		{Name: "SKB_CONSUMED", Value: 1},
		{Name: "SKB_DROP_REASON_NOT_SPECIFIED", Value: 2},
		{Name: "SKB_DROP_REASON_NO_SOCKET", Value: rNoSocket},
		{Name: "SKB_DROP_REASON_NETFILTER_DROP", Value: rNetfilter},
		{Name: "SKB_DROP_REASON_QDISC_DROP", Value: rQdisc},
		{Name: "SKB_DROP_REASON_MAX", Value: 128},
		{Name: "SKB_DROP_REASON_SUBSYS_MASK", Value: 0xffff0000},
	}, []btf.EnumValue{
		{Name: "SKB_DROP_REASON_SUBSYS_CORE", Value: 0},
		{Name: "SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE", Value: 1},
		{Name: "SKB_DROP_REASON_SUBSYS_OPENVSWITCH", Value: 3},
		{Name: "SKB_DROP_REASON_SUBSYS_NUM", Value: 4},
	})
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestDrops(t *testing.T, cfg Config) (*Drops, *fakeClock, *metrics) {
	t.Helper()
	if err := cfg.complete(); err != nil {
		t.Fatal(err)
	}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	return newDrops(cfg, fakeNames(), m, clk.now), clk, m
}

func tuple(src, dst string, sport, dport uint16, proto uint8) flow.Tuple {
	return flow.NewTuple(netip.MustParseAddr(src), netip.MustParseAddr(dst), sport, dport, proto)
}

// dnatConn is a client 10.0.0.1:40000 that dialled the Service
// 10.96.0.10:80, DNATed to the endpoint 10.0.1.5:8080.
func dnatConn() flow.Conn {
	return flow.Conn{
		Tuple:       tuple("10.0.0.1", "10.0.1.5", 40000, 8080, flow.ProtoTCP),
		OrigDstIP:   netip.MustParseAddr("10.96.0.10").As16(),
		OrigDstPort: 80,
	}
}

func counterValue(t *testing.T, vec *prometheus.CounterVec, reason string) float64 {
	t.Helper()
	return value(t, vec.WithLabelValues(reason))
}

// value reads a counter or gauge.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	if pb.Counter != nil {
		return pb.Counter.GetValue()
	}
	return pb.Gauge.GetValue()
}

func TestEnrichAttributesFormsPerDirection(t *testing.T) {
	d, _, m := newTestDrops(t, Config{})
	c := dnatConn()
	forms, n := c.Forms()
	if n != 2 {
		t.Fatalf("dnat conn has %d forms, want 2", n)
	}
	// Before DNAT (to the VIP) and after it: both the original direction.
	d.handle(event{tuple: forms[1], reason: rNetfilter})
	d.handle(event{tuple: forms[1], reason: rNetfilter})
	d.handle(event{tuple: forms[0], reason: rNetfilter})
	// The endpoint's reply, and the reply un-DNATed (from the VIP).
	d.handle(event{tuple: forms[0].Reverse(), reason: rNoSocket})
	d.handle(event{tuple: forms[1].Reverse(), reason: rQdisc})
	// Another connection's drop.
	other := tuple("10.0.0.1", "10.0.1.5", 40001, 8080, flow.ProtoTCP)
	d.handle(event{tuple: other, reason: rNetfilter})

	r := flow.Record{Conn: c}
	d.Enrich(&r)
	if r.Health.FwdDrops != 3 || r.Health.RevDrops != 2 {
		t.Errorf("drops fwd %d rev %d, want 3 and 2", r.Health.FwdDrops, r.Health.RevDrops)
	}
	if r.Health.DropReason != "NETFILTER_DROP" {
		t.Errorf("reason %q, want NETFILTER_DROP (3 of 5)", r.Health.DropReason)
	}
	// Taken: the next record of the connection carries none of them.
	r2 := flow.Record{Conn: c}
	d.Enrich(&r2)
	if r2.Health.FwdDrops != 0 || r2.Health.RevDrops != 0 || r2.Health.DropReason != "" {
		t.Errorf("second record got %+v, want no drops", r2.Health)
	}
	for reason, want := range map[string]float64{"NETFILTER_DROP": 3, "NO_SOCKET": 1, "QDISC_DROP": 1} {
		if got := counterValue(t, m.attributed, reason); got != want {
			t.Errorf("attributed{%s} = %v, want %v", reason, got, want)
		}
	}
	// The other connection's drop is still pending, and taken by it.
	if got := d.tab.len(); got != 1 {
		t.Errorf("%d tuples pending, want 1 (the other connection's)", got)
	}
	ro := flow.Record{Conn: flow.Conn{Tuple: other}}
	d.Enrich(&ro)
	if ro.Health.FwdDrops != 1 || ro.Health.RevDrops != 0 {
		t.Errorf("other connection fwd %d rev %d, want 1 and 0", ro.Health.FwdDrops, ro.Health.RevDrops)
	}
}

func TestEnrichSNATForm(t *testing.T) {
	d, _, _ := newTestDrops(t, Config{})
	c := flow.Conn{
		Tuple:         tuple("192.168.5.9", "10.0.1.5", 5555, 8080, flow.ProtoUDP),
		OrigDstIP:     netip.MustParseAddr("172.31.0.1").As16(),
		OrigDstPort:   30080,
		ProxySnatIP:   netip.MustParseAddr("172.31.0.1").As16(),
		ProxySnatPort: 61000,
	}
	forms, n := c.Forms()
	if n != 3 {
		t.Fatalf("%d forms, want 3", n)
	}
	// The endpoint's reply to the masqueraded source, dropped.
	d.handle(event{tuple: forms[2].Reverse(), reason: rQdisc})
	r := flow.Record{Conn: c}
	d.Enrich(&r)
	if r.Health.FwdDrops != 0 || r.Health.RevDrops != 1 || r.Health.DropReason != "QDISC_DROP" {
		t.Errorf("got %+v, want one reply drop QDISC_DROP", r.Health)
	}
}

func TestReasonTieGoesToSmallerValue(t *testing.T) {
	d, _, _ := newTestDrops(t, Config{})
	c := flow.Conn{Tuple: tuple("10.0.0.1", "10.0.0.2", 1, 2, flow.ProtoUDP)}
	d.handle(event{tuple: c.Tuple, reason: rNetfilter})
	d.handle(event{tuple: c.Tuple.Reverse(), reason: rNoSocket})
	r := flow.Record{Conn: c}
	d.Enrich(&r)
	if r.Health.DropReason != "NO_SOCKET" {
		t.Errorf("tie named %q, want NO_SOCKET (the smaller enum value)", r.Health.DropReason)
	}
}

func TestExpiredAndTuplelessAreUnattributed(t *testing.T) {
	d, clk, m := newTestDrops(t, Config{TTL: time.Minute})
	a := tuple("10.0.0.1", "10.0.0.2", 1000, 53, flow.ProtoUDP)
	b := tuple("10.0.0.3", "10.0.0.2", 1000, 53, flow.ProtoUDP)
	d.handle(event{tuple: a, reason: rNetfilter})
	clk.t = clk.t.Add(40 * time.Second)
	d.handle(event{tuple: b, reason: rNetfilter})
	d.handle(event{tuple: a, reason: rNetfilter}) // a's TTL runs from its first drop
	d.handle(event{reason: rQdisc, flags: evNoTuple})
	d.handle(event{reason: rQdisc, flags: evNotIP})
	d.handle(event{tuple: a, reason: rQdisc, flags: evFragment})
	if got := value(t, m.parseFail); got != 1 {
		t.Errorf("parse failures %v, want 1", got)
	}
	if got := counterValue(t, m.unattributed, "QDISC_DROP"); got != 3 {
		t.Errorf("unattributed{QDISC_DROP} = %v, want 3 (no tuple, not IP, fragment)", got)
	}
	clk.t = clk.t.Add(30 * time.Second) // a: 70 s old, b: 30 s
	d.expire()
	if got := counterValue(t, m.unattributed, "NETFILTER_DROP"); got != 2 {
		t.Errorf("unattributed{NETFILTER_DROP} = %v, want 2 (a's two drops)", got)
	}
	if got := value(t, m.entries); got != 1 {
		t.Errorf("pending tuples %v, want 1 (b)", got)
	}
	r := flow.Record{Conn: flow.Conn{Tuple: a}}
	d.Enrich(&r)
	if r.Health.FwdDrops != 0 {
		t.Errorf("expired drops exported: %+v", r.Health)
	}
	r = flow.Record{Conn: flow.Conn{Tuple: b}}
	d.Enrich(&r)
	if r.Health.FwdDrops != 1 {
		t.Errorf("b fwd drops %d, want 1", r.Health.FwdDrops)
	}
}

func TestTableBound(t *testing.T) {
	d, _, m := newTestDrops(t, Config{MaxTuples: 2})
	for port := uint16(1); port <= 4; port++ {
		d.handle(event{tuple: tuple("10.0.0.1", "10.0.0.2", port, 80, flow.ProtoTCP), reason: rNetfilter})
	}
	// An existing tuple still counts when the table is full.
	d.handle(event{tuple: tuple("10.0.0.1", "10.0.0.2", 1, 80, flow.ProtoTCP), reason: rNetfilter})
	if got := value(t, m.tableFull); got != 2 {
		t.Errorf("table full %v, want 2", got)
	}
	if got := counterValue(t, m.unattributed, "NETFILTER_DROP"); got != 2 {
		t.Errorf("unattributed %v, want 2", got)
	}
	r := flow.Record{Conn: flow.Conn{Tuple: tuple("10.0.0.1", "10.0.0.2", 1, 80, flow.ProtoTCP)}}
	d.Enrich(&r)
	if r.Health.FwdDrops != 2 {
		t.Errorf("fwd drops %d, want 2", r.Health.FwdDrops)
	}
}

func TestManyReasonsOneTuple(t *testing.T) {
	d, _, m := newTestDrops(t, Config{})
	c := flow.Conn{Tuple: tuple("10.0.0.1", "10.0.0.2", 1, 2, flow.ProtoTCP)}
	want := 0
	for r := uint32(10); r < 30; r++ {
		for range r - 9 {
			d.handle(event{tuple: c.Tuple, reason: r})
			want++
		}
	}
	rec := flow.Record{Conn: c}
	d.Enrich(&rec)
	if int(rec.Health.FwdDrops) != want {
		t.Errorf("fwd %d, want %d", rec.Health.FwdDrops, want)
	}
	if rec.Health.DropReason != "UNKNOWN_29" {
		t.Errorf("reason %q, want UNKNOWN_29 (the most frequent, unnamed in the fake enum)", rec.Health.DropReason)
	}
	if got := counterValue(t, m.attributed, "UNKNOWN_10"); got != 1 {
		t.Errorf("attributed{UNKNOWN_10} = %v, want 1", got)
	}
}

// TestEnrichConcurrentWithEvents runs the event side and Enrich at once
// (go test -race): every drop ends in exactly one record.
func TestEnrichConcurrentWithEvents(t *testing.T) {
	d, _, m := newTestDrops(t, Config{})
	c := flow.Conn{Tuple: tuple("10.0.0.1", "10.0.0.2", 1, 2, flow.ProtoTCP)}
	const n = 20000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			tp := c.Tuple
			if i%2 == 1 {
				tp = tp.Reverse()
			}
			d.handle(event{tuple: tp, reason: rNetfilter})
		}
	}()
	var fwd, rev uint64
	stop := make(chan struct{})
	go func() { wg.Wait(); close(stop) }()
	for done := false; !done; {
		select {
		case <-stop:
			done = true
		default:
		}
		r := flow.Record{Conn: c}
		d.Enrich(&r)
		fwd += uint64(r.Health.FwdDrops)
		rev += uint64(r.Health.RevDrops)
	}
	if fwd != n/2 || rev != n/2 {
		t.Errorf("fwd %d rev %d, want %d each", fwd, rev, n/2)
	}
	if got := counterValue(t, m.attributed, "NETFILTER_DROP"); got != n {
		t.Errorf("attributed %v, want %d", got, n)
	}
}

func TestEnrichNothingPending(t *testing.T) {
	d, _, _ := newTestDrops(t, Config{})
	r := flow.Record{Conn: dnatConn()}
	r.Health.RTTSamples = 3
	d.Enrich(&r)
	if r.Health != (flow.Health{RTTSamples: 3}) {
		t.Errorf("health changed without drops: %+v", r.Health)
	}
}

func TestDecodeEvent(t *testing.T) {
	if unsafe.Sizeof(bpfDropEvent{}) != eventSize {
		t.Fatalf("struct drop_event is %d bytes, decodeEvent reads %d", unsafe.Sizeof(bpfDropEvent{}), eventSize)
	}
	mk := func(src, dst string, sport, dport uint16, proto, flags uint8, reason uint32) []byte {
		b := make([]byte, eventSize)
		s, dd := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
		copy(b[0:], s[:])
		copy(b[16:], dd[:])
		binary.LittleEndian.PutUint16(b[32:], sport)
		binary.LittleEndian.PutUint16(b[34:], dport)
		b[36], b[37] = proto, flags
		binary.LittleEndian.PutUint32(b[40:], reason)
		return b
	}
	ev, err := decodeEvent(mk("::ffff:10.0.0.1", "::ffff:10.0.0.2", 40000, 80, flow.ProtoTCP, 0, rNetfilter))
	if err != nil {
		t.Fatal(err)
	}
	if want := tuple("10.0.0.1", "10.0.0.2", 40000, 80, flow.ProtoTCP); ev.tuple != want || ev.reason != rNetfilter {
		t.Errorf("decoded %v reason %d, want %v %d", ev.tuple, ev.reason, want, rNetfilter)
	}
	// ICMP echo request id 77 and its reply: conntrack's tuple and its Reverse.
	req, _ := decodeEvent(mk("::ffff:10.0.0.1", "::ffff:10.0.0.2", 77, 8<<8, flow.ProtoICMP, 0, 2))
	rep, _ := decodeEvent(mk("::ffff:10.0.0.2", "::ffff:10.0.0.1", 77, 0<<8, flow.ProtoICMP, 0, 2))
	if req.tuple.SrcPort != 77 || req.tuple.DstPort != 8<<8 || rep.tuple != req.tuple.Reverse() {
		t.Errorf("icmp request %v reply %v: want the reply to be the request's Reverse", req.tuple, rep.tuple)
	}
	req6, _ := decodeEvent(mk("fd00::1", "fd00::2", 9, 128<<8, flow.ProtoICMPv6, 0, 2))
	rep6, _ := decodeEvent(mk("fd00::2", "fd00::1", 9, 129<<8, flow.ProtoICMPv6, 0, 2))
	if rep6.tuple != req6.tuple.Reverse() {
		t.Errorf("icmpv6 request %v reply %v: want Reverse", req6.tuple, rep6.tuple)
	}
	unr, _ := decodeEvent(mk("::ffff:10.0.0.2", "::ffff:10.0.0.1", 0, 3<<8|3, flow.ProtoICMP, 0, 2))
	if unr.tuple.SrcPort != 0 || unr.tuple.DstPort != 3<<8|3 {
		t.Errorf("icmp unreachable ports %d/%d, want 0/0x303", unr.tuple.SrcPort, unr.tuple.DstPort)
	}
	if _, err := decodeEvent(make([]byte, 10)); err == nil {
		t.Error("short event decoded without error")
	}
}

func TestReasonNames(t *testing.T) {
	n := fakeNames()
	for reason, want := range map[uint32]string{
		1:                 "CONSUMED",
		rNetfilter:        "NETFILTER_DROP",
		1<<16 | 5:         "SUBSYS_MAC80211_UNUSABLE",
		3<<16 | 1:         "SUBSYS_OPENVSWITCH",
		2<<16 | 1:         "SUBSYS_2",
		200:               "UNKNOWN_200",
		0xfff0 << 16:      "SUBSYS_15",
		uint32(128):       "UNKNOWN_128", // _MAX names no reason
		uint32(rNoSocket): "NO_SOCKET",
	} {
		if got := n.name(reason); got != want {
			t.Errorf("name(%#x) = %q, want %q", reason, got, want)
		}
	}
	if _, ok := n.byName["SUBSYS_MASK"]; ok {
		t.Error("SUBSYS_MASK taken for a reason")
	}
}

func TestKeepMask(t *testing.T) {
	n := fakeNames()
	mask, err := keepMask(n, []string{"NOT_SPECIFIED", "NO_SUCH_REASON_ON_THIS_KERNEL"})
	if err != nil {
		t.Fatal(err)
	}
	kept := func(s int) bool { return mask[s/64]>>(s%64)&1 == 1 }
	for s, want := range map[int]bool{0: false, 1: false, 2: false, rNoSocket: true, rNetfilter: true, 255: true} {
		if kept(s) != want {
			t.Errorf("slot %d kept %v, want %v", s, kept(s), want)
		}
	}
	if _, err := keepMask(n, []string{"SUBSYS_OPENVSWITCH"}); err == nil || !strings.Contains(err.Error(), "ignoreReasons") {
		t.Errorf("subsystem name accepted or error does not name the field: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{RingBytes: 5000}, "ringBytes"},
		{Config{RatePerCPU: -1}, "ratePerCPU"},
		{Config{Burst: -2}, "burst"},
		{Config{MaxTuples: -1}, "maxTuples"},
		{Config{TTL: time.Millisecond}, "ttl"},
		{Config{IgnoreReasons: []string{"SKB_DROP_REASON_no"}}, "ignoreReasons"},
	} {
		err := tc.cfg.complete()
		if err == nil || !strings.HasPrefix(err.Error(), tc.field) {
			t.Errorf("%+v: error %v, want one naming %s", tc.cfg, err, tc.field)
		}
	}
	var cfg Config
	if err := cfg.complete(); err != nil {
		t.Fatal(err)
	}
	if cfg.RatePerCPU != defaultRatePerCPU || cfg.TTL != defaultTTL || !slices.Equal(cfg.IgnoreReasons, DefaultIgnoreReasons()) {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	empty := Config{IgnoreReasons: []string{}}
	if err := empty.complete(); err != nil || len(empty.IgnoreReasons) != 0 {
		t.Errorf("an explicit empty ignore list became %v (%v)", empty.IgnoreReasons, err)
	}
}
