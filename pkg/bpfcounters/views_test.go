package bpfcounters

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

type fakeTable struct {
	m       map[bpfFlowKey]bpfFlowVal
	deleted []bpfFlowKey
	err     error
	lookups int
}

func (f *fakeTable) lookup(k *bpfFlowKey, v *bpfFlowVal) (bool, error) {
	f.lookups++
	if f.err != nil {
		return false, f.err
	}
	val, ok := f.m[*k]
	if ok {
		*v = val
	}
	return ok, nil
}

func (f *fakeTable) deleteKeys(ks []bpfFlowKey) error {
	for i := range ks {
		f.delete(&ks[i])
	}
	return nil
}

func (f *fakeTable) delete(k *bpfFlowKey) error {
	f.deleted = append(f.deleted, *k)
	delete(f.m, *k)
	return nil
}

func newFake(t *testing.T) (*Counters, *fakeTable) {
	t.Helper()
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	ft := &fakeTable{m: map[bpfFlowKey]bpfFlowVal{}}
	return &Counters{table: ft, cache: &cachedTable{vals: map[bpfFlowKey]bpfFlowVal{}, prev: map[bpfFlowKey]bpfFlowVal{}, base: ft}, metrics: m, lossy: map[bpfFlowKey]int64{}, attachedAt: map[uint32]int64{}}, ft
}

var (
	client  = netip.MustParseAddr("10.244.0.2")
	server  = netip.MustParseAddr("10.244.0.3")
	vip     = netip.MustParseAddr("10.96.0.10")
	snatIP  = netip.MustParseAddr("10.244.0.1")
	client6 = netip.MustParseAddr("fd00:10:244::2")
	vip6    = netip.MustParseAddr("fd00:10:96::a")
	server6 = netip.MustParseAddr("fd00:10:244::3")
)

// dnatConn is client:40000 -> vip:80 DNATed to server:8080.
func dnatConn(src, dst, orig netip.Addr) flow.Conn {
	c := flow.Conn{Tuple: flow.NewTuple(src, dst, 40000, 8080, flow.ProtoTCP)}
	c.OrigDstIP, c.OrigDstPort = orig.As16(), 80
	return c
}

func wire(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, proto, hook uint8) bpfFlowKey {
	return keyOf(flow.NewTuple(src, dst, sport, dport, proto), hook)
}

func TestViewsOfDNAT(t *testing.T) {
	for _, fam := range []struct {
		name             string
		cl, srv, vipAddr netip.Addr
	}{{"ipv4", client, server, vip}, {"ipv6", client6, server6, vip6}} {
		t.Run(fam.name, func(t *testing.T) {
			c := dnatConn(fam.cl, fam.srv, fam.vipAddr)
			v := viewsOf(&c)
			want := connViews{
				fwd: [2]bpfFlowKey{
					wire(fam.cl, 40000, fam.vipAddr, 80, flow.ProtoTCP, hookFromPod),
					wire(fam.cl, 40000, fam.srv, 8080, flow.ProtoTCP, hookToPod),
				},
				rev: [2]bpfFlowKey{
					wire(fam.srv, 8080, fam.cl, 40000, flow.ProtoTCP, hookFromPod),
					wire(fam.vipAddr, 80, fam.cl, 40000, flow.ProtoTCP, hookToPod),
				},
			}
			if v != want {
				t.Errorf("views\n got %+v\nwant %+v", v, want)
			}
		})
	}
}

func TestViewsOfSNATAndICMP(t *testing.T) {
	c := dnatConn(client, server, vip)
	c.ProxySnatIP, c.ProxySnatPort = snatIP.As16(), 61000
	v := viewsOf(&c)
	if got, want := v.fwd[1], wire(snatIP, 61000, server, 8080, flow.ProtoTCP, hookToPod); got != want {
		t.Errorf("SNAT fwd receiver view %s, want %s", viewOf(&got), viewOf(&want))
	}
	if got, want := v.rev[0], wire(server, 8080, snatIP, 61000, flow.ProtoTCP, hookFromPod); got != want {
		t.Errorf("SNAT rev sender view %s, want %s", viewOf(&got), viewOf(&want))
	}
	if got, want := v.fwd[0], wire(client, 40000, vip, 80, flow.ProtoTCP, hookFromPod); got != want {
		t.Errorf("SNAT fwd sender view %s, want %s", viewOf(&got), viewOf(&want))
	}

	// ICMP echo as pkg/conntrack decodes it: SrcPort = id, DstPort = 8<<8.
	ic := flow.Conn{Tuple: flow.NewTuple(client, server, 0x1234, 0x0800, flow.ProtoICMP)}
	ic.OrigDstIP, ic.OrigDstPort = server.As16(), 0x0800
	ic.ProxySnatIP = snatIP.As16() // ICMP: the identifier stays
	v = viewsOf(&ic)
	if got, want := v.fwd[0], wire(client, 0x1234, server, 0x0800, flow.ProtoICMP, hookFromPod); got != want {
		t.Errorf("ICMP request view %s, want %s", viewOf(&got), viewOf(&want))
	}
	// The reply carries the request's type in sport and the id in dport
	// (icmp_ports in bpf/counters.c).
	if got, want := v.rev[0], wire(server, 0x0800, snatIP, 0x1234, flow.ProtoICMP, hookFromPod); got != want {
		t.Errorf("ICMP reply view %s, want %s", viewOf(&got), viewOf(&want))
	}
}

func TestFillPrefersSenderSideNeverAdds(t *testing.T) {
	c, ft := newFake(t)
	conn := dnatConn(client, server, vip)
	v := viewsOf(&conn)
	// A connection between two pods of this node: every packet is counted
	// at both pods' interfaces.
	ft.m[v.fwd[0]] = bpfFlowVal{Packets: 10, Bytes: 1000, Ifindex: 5, LastNs: 100}
	ft.m[v.fwd[1]] = bpfFlowVal{Packets: 10, Bytes: 1000, Ifindex: 6, LastNs: 101}
	ft.m[v.rev[0]] = bpfFlowVal{Packets: 7, Bytes: 700, Ifindex: 6, LastNs: 102}
	ft.m[v.rev[1]] = bpfFlowVal{Packets: 7, Bytes: 700, Ifindex: 5, LastNs: 103}
	c.attachedAt[5], c.attachedAt[6] = 1000, 2000
	conn.Rev = flow.Counters{Packets: 1}
	res, err := c.Fill(&conn)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Seen || res.Lossy || res.Finished {
		t.Errorf("result %+v, want seen, not lossy, not finished", res)
	}
	if conn.Fwd != (flow.Counters{Packets: 10, Bytes: 1000}) || conn.Rev != (flow.Counters{Packets: 7, Bytes: 700}) {
		t.Errorf("counters fwd %+v rev %+v, want 10/1000 and 7/700 (one side, never the sum)", conn.Fwd, conn.Rev)
	}
	if res.AttachedAt != 2000 {
		t.Errorf("AttachedAt %d, want 2000 (latest of ifindex 5 and 6)", res.AttachedAt)
	}

	// The sender side differs from the receiver side when only one is
	// attached since the start: the sender side wins.
	ft.m[v.fwd[1]] = bpfFlowVal{Packets: 3, Bytes: 300, Ifindex: 6}
	if _, err := c.Fill(&conn); err != nil {
		t.Fatal(err)
	}
	if conn.Fwd.Packets != 10 {
		t.Errorf("fwd packets %d, want the sender side's 10", conn.Fwd.Packets)
	}
}

func TestFillReceiverSideOnly(t *testing.T) {
	c, ft := newFake(t)
	conn := dnatConn(client, server, vip)
	v := viewsOf(&conn)
	// The client is remote: only the server pod's interface saw packets.
	ft.m[v.fwd[1]] = bpfFlowVal{Packets: 4, Bytes: 400, Ifindex: 6}
	ft.m[v.rev[0]] = bpfFlowVal{Packets: 3, Bytes: 300, Ifindex: 6}
	res, err := c.Fill(&conn)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Seen || conn.Fwd.Packets != 4 || conn.Rev.Packets != 3 {
		t.Errorf("res %+v fwd %+v rev %+v, want seen 4/3", res, conn.Fwd, conn.Rev)
	}
}

func TestFillOneWayAndMissingReply(t *testing.T) {
	c, ft := newFake(t)
	conn := dnatConn(client, server, vip)
	conn.Tuple.Proto = flow.ProtoUDP
	v := viewsOf(&conn)
	ft.m[v.fwd[0]] = bpfFlowVal{Packets: 2, Bytes: 200}
	res, err := c.Fill(&conn)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Seen || conn.Fwd.Packets != 2 || conn.Rev != (flow.Counters{}) {
		t.Errorf("one-way UDP: res %+v fwd %+v rev %+v", res, conn.Fwd, conn.Rev)
	}

	// conntrack saw replies the map does not have: not seen, conn untouched.
	conn = dnatConn(client, server, vip)
	conn.Tuple.Proto = flow.ProtoUDP
	conn.Fwd, conn.Rev = flow.Counters{Packets: 9, Bytes: 9}, flow.Counters{Packets: 5, Bytes: 5}
	before := conn
	res, err = c.Fill(&conn)
	if err != nil {
		t.Fatal(err)
	}
	if res.Seen || conn != before {
		t.Errorf("missing reply view: res %+v, conn changed %v", res, conn != before)
	}

	// Nothing at all.
	other := dnatConn(client6, server6, vip6)
	if res, _ := c.Fill(&other); res.Seen {
		t.Errorf("no views: Seen")
	}
	ft.err = errors.New("boom")
	if _, err := c.Fill(&conn); err == nil {
		t.Errorf("lookup error not returned")
	}
}

func TestFillFinished(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fwd, rev uint32
		want     bool
	}{
		{"none", 0x12, 0x12, false},
		{"fin one way", 0x11, 0x10, false},
		{"fin both", 0x11, 0x11, true},
		{"rst reply", 0x10, 0x14, true},
		{"rst fwd", 0x14, 0x10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, ft := newFake(t)
			conn := dnatConn(client, server, vip)
			v := viewsOf(&conn)
			ft.m[v.fwd[0]] = bpfFlowVal{Packets: 1, TcpFlags: tc.fwd}
			ft.m[v.rev[0]] = bpfFlowVal{Packets: 1, TcpFlags: tc.rev}
			res, err := c.Fill(&conn)
			if err != nil {
				t.Fatal(err)
			}
			if res.Finished != tc.want {
				t.Errorf("Finished %v, want %v", res.Finished, tc.want)
			}
		})
	}
}

func TestFillLossyAndForget(t *testing.T) {
	c, ft := newFake(t)
	conn := dnatConn(client, server, vip)
	conn.StartNanos = 5000
	v := viewsOf(&conn)
	ft.m[v.fwd[0]] = bpfFlowVal{Packets: 1}
	ft.m[v.rev[0]] = bpfFlowVal{Packets: 1}
	if res, _ := c.Fill(&conn); res.Lossy {
		t.Fatalf("lossy without loss")
	}
	c.markLossy(&v.rev[1]) // the client-side view of the replies was lost
	if res, _ := c.Fill(&conn); !res.Lossy {
		t.Errorf("a lost view did not make the connection lossy")
	}
	if err := c.Forget(&conn); err != nil {
		t.Fatal(err)
	}
	if len(ft.deleted) != 4 || len(ft.m) != 0 || len(c.lossy) != 0 {
		t.Errorf("Forget deleted %d keys, %d left, %d lossy; want 4, 0, 0", len(ft.deleted), len(ft.m), len(c.lossy))
	}

	// A loss no key was named for: connections open at that time are
	// lossy, later ones are not.
	ft.m[v.fwd[0]] = bpfFlowVal{Packets: 1}
	c.lossAll = 6000
	if res, _ := c.Fill(&conn); !res.Lossy {
		t.Errorf("connection started before an unattributed loss: not lossy")
	}
	conn.StartNanos = 7000
	if res, _ := c.Fill(&conn); res.Lossy {
		t.Errorf("connection started after an unattributed loss: lossy")
	}
	conn.StartNanos = 0
	if res, _ := c.Fill(&conn); !res.Lossy {
		t.Errorf("connection of unknown start: not lossy after an unattributed loss")
	}
}

func TestLossySetBounded(t *testing.T) {
	c, _ := newFake(t)
	var k bpfFlowKey
	for i := 0; i < maxLossyKeys+10; i++ {
		k.Sport, k.Dport = uint16(i), uint16(i>>16)
		c.markLossy(&k)
	}
	if len(c.lossy) != maxLossyKeys {
		t.Errorf("lossy set %d, want bounded at %d", len(c.lossy), maxLossyKeys)
	}
	if c.lossAll == 0 {
		t.Errorf("overflowing the lossy set did not mark an unattributed loss")
	}
}

func TestConfigComplete(t *testing.T) {
	cfg := Config{}
	if err := cfg.complete(); err != nil || cfg.MapEntries != defaultMapEntries || cfg.RingBytes != defaultRingBytes || cfg.Attach != AttachAuto {
		t.Errorf("defaults %+v, %v", cfg, err)
	}
	for _, bad := range []Config{{MapEntries: -1}, {RingBytes: 5000}, {Attach: "xdp"}} {
		if err := bad.complete(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
