//go:build integration

package conntrack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	ct "github.com/ti-mo/conntrack"

	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
)

func TestMain(m *testing.M) {
	code := m.Run()
	cleanupBenchTable()
	os.Exit(code)
}

// need fails the test when a program the integration tests use is missing.
func need(t testing.TB, progs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("integration tests need root (network namespaces, conntrack)")
	}
	for _, p := range progs {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s not found: run hack/install-deps.sh (apt-get install iproute2 iptables conntrack)", p)
		}
	}
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// family holds the addresses of one IP version of the test network.
type family struct {
	name                      string
	client, server, vip       netip.Addr
	iptables                  string
	prefixLen, minHdr, maxHdr uint64 // header bytes per packet (IP + TCP without/with full options)
}

var families = []family{
	{"IPv4", netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.19.0.10"), "iptables", 24, 20 + 20, 20 + 60},
	{"IPv6", netip.MustParseAddr("fd00:18::1"), netip.MustParseAddr("fd00:18::2"), netip.MustParseAddr("fd00:96::10"), "ip6tables", 64, 40 + 20, 40 + 60},
}

const (
	vipPort    = 80
	serverPort = 8080
	connMark   = 0x42
)

// testNet is a client namespace (where conntrack and the DNAT rule live, as
// on a node running kube-proxy) joined by a veth to a server namespace.
type testNet struct {
	clientName, clientPath string
	serverPath             string
}

func newTestNet(t *testing.T) *testNet {
	t.Helper()
	need(t, "ip", "iptables", "ip6tables", "conntrack")
	cn, cp := conntracktest.NetNS(t, "cli")
	sn, sp := conntracktest.NetNS(t, "srv")
	run(t, "ip", "-n", cn, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", sn)
	for _, ns := range []struct{ name, dev string }{{cn, "veth0"}, {sn, "veth1"}} {
		run(t, "ip", "-n", ns.name, "link", "set", "lo", "up")
		run(t, "ip", "-n", ns.name, "link", "set", ns.dev, "up")
	}
	for _, f := range families {
		run(t, "ip", "-n", cn, "addr", "add", fmt.Sprintf("%s/%d", f.client, f.prefixLen), "dev", "veth0", "nodad")
		run(t, "ip", "-n", sn, "addr", "add", fmt.Sprintf("%s/%d", f.server, f.prefixLen), "dev", "veth1", "nodad")
		// The VIP only has to route somewhere for the output lookup that
		// precedes DNAT.
		vipNet := netip.PrefixFrom(f.vip, f.vip.BitLen()).String()
		run(t, "ip", "-n", cn, "route", "add", vipNet, "via", f.server.String())
		ep := f.server.String()
		if f.server.Is6() {
			ep = "[" + ep + "]"
		}
		run(t, "ip", "netns", "exec", cn, f.iptables, "-t", "nat", "-A", "OUTPUT", "-d", f.vip.String(),
			"-p", "tcp", "--dport", fmt.Sprint(vipPort), "-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", ep, serverPort))
		run(t, "ip", "netns", "exec", cn, f.iptables, "-t", "mangle", "-A", "OUTPUT", "-d", f.vip.String(),
			"-j", "CONNMARK", "--set-mark", fmt.Sprint(connMark))
	}
	return &testNet{clientName: cn, clientPath: cp, serverPath: sp}
}

// tcpConn is one client connection through the VIP that has carried exactly
// sent bytes to the server and received bytes back.
type tcpConn struct {
	client     net.Conn
	server     net.Conn
	clientPort uint16
}

func (c *tcpConn) close() {
	c.client.Close()
	c.server.Close()
}

func (n *testNet) connect(t *testing.T, f family, sent, received int) *tcpConn {
	t.Helper()
	var ln net.Listener
	err := netns.Do(n.serverPath, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(f.server, serverPort).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in server netns: %v", err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	acceptErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acceptErr <- err
			return
		}
		accepted <- c
	}()
	var cli net.Conn
	err = netns.Do(n.clientPath, func() error {
		var err error
		cli, err = net.DialTimeout("tcp", netip.AddrPortFrom(f.vip, vipPort).String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial VIP from client netns: %v", err)
	}
	var srv net.Conn
	select {
	case srv = <-accepted:
	case err := <-acceptErr:
		t.Fatalf("accept: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("server accepted nothing within 5s")
	}
	c := &tcpConn{client: cli, server: srv, clientPort: uint16(cli.LocalAddr().(*net.TCPAddr).Port)}
	t.Cleanup(c.close)

	go cli.Write(make([]byte, sent))
	if _, err := io.ReadFull(srv, make([]byte, sent)); err != nil {
		t.Fatalf("server read %d bytes: %v", sent, err)
	}
	go srv.Write(make([]byte, received))
	if _, err := io.ReadFull(cli, make([]byte, received)); err != nil {
		t.Fatalf("client read %d bytes: %v", received, err)
	}
	return c
}

func newSource(t *testing.T, cfg Config) *Source {
	t.Helper()
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dumpAll(t *testing.T, s *Source) []flow.Conn {
	t.Helper()
	var out []flow.Conn
	if err := s.Dump(func(c *flow.Conn) { out = append(out, *c) }); err != nil {
		t.Fatalf("Dump: %v", err)
	}
	return out
}

func findBySrcPort(conns []flow.Conn, f family, port uint16) (flow.Conn, bool) {
	for _, c := range conns {
		if c.Tuple.SrcPort == port && c.Tuple.Src() == f.client && c.Tuple.Proto == flow.ProtoTCP {
			return c, true
		}
	}
	return flow.Conn{}, false
}

// checkCounters asserts that a direction carried payload bytes in packets
// whose headers fit the family's header size range.
func checkCounters(t *testing.T, dir string, c flow.Counters, payload uint64, minPkts uint64, f family) {
	t.Helper()
	if c.Packets < minPkts {
		t.Errorf("%s packets = %d, want >= %d", dir, c.Packets, minPkts)
	}
	lo, hi := payload+c.Packets*f.minHdr, payload+c.Packets*f.maxHdr
	if c.Bytes < lo || c.Bytes > hi {
		t.Errorf("%s bytes = %d for %d packets carrying %d payload bytes, want in [%d, %d]", dir, c.Bytes, c.Packets, payload, lo, hi)
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

func TestDumpReportsDNATedTCPWithCounters(t *testing.T) {
	n := newTestNet(t)
	src := newSource(t, Config{NetNSPath: n.clientPath})
	if err := src.EnableAccounting(); err != nil {
		t.Fatalf("EnableAccounting: %v", err)
	}
	const sent, received = 100_000, 30_000
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			before := time.Now().UnixNano()
			c := n.connect(t, f, sent, received)
			got, ok := findBySrcPort(dumpAll(t, src), f, c.clientPort)
			if !ok {
				t.Fatalf("connection from %s port %d not in dump", f.client, c.clientPort)
			}
			t.Logf("dumped %v orig dst %v:%d fwd %+v rev %+v", got.Tuple, got.OrigDst(), got.OrigDstPort, got.Fwd, got.Rev)
			want := flow.NewTuple(f.client, f.server, c.clientPort, serverPort, flow.ProtoTCP)
			if got.Tuple != want {
				t.Errorf("Tuple = %v, want %v (endpoint, not VIP)", got.Tuple, want)
			}
			if got.OrigDst() != f.vip || got.OrigDstPort != vipPort || !got.IsDNATed() {
				t.Errorf("OrigDst = %v:%d, want VIP %v:%d", got.OrigDst(), got.OrigDstPort, f.vip, vipPort)
			}
			if got.TCPState != flow.TCPStateEstablished {
				t.Errorf("TCPState = %v, want ESTABLISHED", got.TCPState)
			}
			if got.Mark != connMark || got.ID == 0 || got.Status&0x2 == 0 {
				t.Errorf("mark %#x id %d status %#x, want mark %#x, an id, SEEN_REPLY", got.Mark, got.ID, got.Status, connMark)
			}
			if now := time.Now().UnixNano(); got.StartNanos < before || got.StartNanos > now || got.StopNanos != 0 {
				t.Errorf("start %d stop %d, want start in [%d, %d] and no stop", got.StartNanos, got.StopNanos, before, now)
			}
			checkCounters(t, "Fwd", got.Fwd, sent, 3, f)
			checkCounters(t, "Rev", got.Rev, received, 2, f)
		})
	}
}

func TestDumpFiltersByZoneAndMark(t *testing.T) {
	need(t, "ip")
	_, path := conntracktest.NetNS(t, "flt")
	var entries []conntracktest.Entry
	for i, zm := range []struct {
		zone uint16
		mark uint32
	}{{0, 0}, {5, 0}, {5, 0x142}, {7, 0x42}, {7, 0x43}} {
		e := conntracktest.SyntheticEntry(i + 1) // +1: entry 0 is DNATed, irrelevant here
		e.Zone, e.Mark = zm.zone, zm.mark
		entries = append(entries, e)
	}
	if err := conntracktest.Insert(path, entries...); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		cfg        Config
		want       []uint16 // zones*1000+mark&0xfff of expected entries
		kernelSide bool     // the kernel must have filtered: nothing dropped in user space
	}{
		{"no filter returns every zone", Config{}, []uint16{0, 5000, 5322, 7066, 7067}, true},
		{"a single zone is filtered by the kernel", Config{Zones: []uint16{5}}, []uint16{5000, 5322}, true},
		{"several zones are filtered in user space", Config{Zones: []uint16{0, 7}}, []uint16{0, 7066, 7067}, false},
		{"mark under mask is filtered by the kernel", Config{Mark: 0x42, MarkMask: 0xff}, []uint16{5322, 7066}, true},
		{"zone and mark combine", Config{Zones: []uint16{7}, Mark: 0x42, MarkMask: 0xff}, []uint16{7066}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.NetNSPath = path
			src := newSource(t, tt.cfg)
			m := src.m
			var got []uint16
			for _, c := range dumpAll(t, src) {
				got = append(got, c.Zone*1000+uint16(c.Mark&0xfff))
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("dumped zone/mark keys %v, want %v", got, tt.want)
			}
			if filtered := counterValue(t, m.entriesFiltered); tt.kernelSide && filtered != 0 {
				t.Errorf("%v entries filtered in user space, want the kernel to have filtered them", filtered)
			} else if !tt.kernelSide && filtered == 0 {
				t.Error("no entry filtered in user space, yet the kernel cannot filter several zones")
			}
		})
	}
}

// tiMoConn maps a ti-mo Flow the way pkg/flow says a Conn is filled.
func tiMoConn(f ct.Flow) flow.Conn {
	c := flow.Conn{
		Tuple: flow.NewTuple(f.TupleOrig.IP.SourceAddress, f.TupleReply.IP.SourceAddress,
			f.TupleOrig.Proto.SourcePort, f.TupleReply.Proto.SourcePort, f.TupleOrig.Proto.Protocol),
		OrigDstIP: f.TupleOrig.IP.DestinationAddress.As16(), OrigDstPort: f.TupleOrig.Proto.DestinationPort,
		Zone: f.Zone, Mark: f.Mark, ID: f.ID, Status: uint32(f.Status),
		Fwd: flow.Counters{Packets: f.CountersOrig.Packets, Bytes: f.CountersOrig.Bytes},
		Rev: flow.Counters{Packets: f.CountersReply.Packets, Bytes: f.CountersReply.Bytes},
	}
	if f.ProtoInfo.TCP != nil {
		c.TCPState = flow.TCPState(f.ProtoInfo.TCP.State)
	}
	if !f.Timestamp.Start.IsZero() {
		c.StartNanos = f.Timestamp.Start.UnixNano()
	}
	if !f.Timestamp.Stop.IsZero() {
		c.StopNanos = f.Timestamp.Stop.UnixNano()
	}
	// Source NAT, as Antrea's agent derives it from the same two tuples:
	// replies go elsewhere than to the original source.
	if f.TupleReply.IP.DestinationAddress != f.TupleOrig.IP.SourceAddress ||
		f.TupleReply.Proto.DestinationPort != f.TupleOrig.Proto.SourcePort {
		c.ProxySnatIP, c.ProxySnatPort = f.TupleReply.IP.DestinationAddress.As16(), f.TupleReply.Proto.DestinationPort
	}
	if p := f.TupleOrig.Proto; p.Protocol == flow.ProtoICMP || p.Protocol == flow.ProtoICMPv6 {
		c.Tuple.SrcPort = p.ICMPID
		c.Tuple.DstPort = uint16(p.ICMPType)<<8 | uint16(p.ICMPCode)
		c.OrigDstPort = c.Tuple.DstPort
		c.ProxySnatPort = 0
	}
	return c
}

func TestDumpMatchesTiMoConntrack(t *testing.T) {
	n := newTestNet(t)
	src := newSource(t, Config{NetNSPath: n.clientPath})
	if err := src.EnableAccounting(); err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		n.connect(t, f, 5000, 7000)
	}
	if err := conntracktest.Insert(n.clientPath, fixtureEntries...); err != nil {
		t.Fatal(err)
	}
	if err := conntracktest.Populate(n.clientPath, 2000); err != nil {
		t.Fatal(err)
	}
	ours := map[uint32]flow.Conn{}
	for _, c := range dumpAll(t, src) {
		ours[c.ID] = c
	}
	var theirs []ct.Flow
	err := netns.Do(n.clientPath, func() error {
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		theirs, err = c.Dump(nil)
		return err
	})
	if err != nil {
		t.Fatalf("ti-mo dump: %v", err)
	}
	if want := 2 + len(fixtureEntries) + 2000; len(ours) < want || len(theirs) != len(ours) {
		t.Fatalf("ours has %d entries, ti-mo %d; want both equal and >= %d", len(ours), len(theirs), want)
	}
	diffs := 0
	for _, f := range theirs {
		want := tiMoConn(f)
		got, ok := ours[f.ID]
		if !ok {
			t.Errorf("ti-mo entry %v (id %d) missing from our dump", want.Tuple, f.ID)
		} else if got != want {
			t.Errorf("entry id %d differs:\n ours %+v\nti-mo %+v", f.ID, got, want)
		}
		if diffs++; t.Failed() && diffs > 5 {
			t.Fatal("too many differences")
		}
	}
}

// collector gathers events for one test.
type collector struct {
	mu     sync.Mutex
	events []Event
	conns  []flow.Conn
}

func (c *collector) add(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, Event{Type: ev.Type})
	if ev.Conn != nil {
		c.conns = append(c.conns, *ev.Conn)
	} else {
		c.conns = append(c.conns, flow.Conn{})
	}
}

// waitFor polls until pred holds over the collected events or 5 s pass.
func (c *collector) waitFor(t *testing.T, what string, pred func(EventType, flow.Conn) bool) flow.Conn {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for i, ev := range c.events {
			if cn := c.conns[i]; pred(ev.Type, cn) {
				c.mu.Unlock()
				return cn
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s event within 5s", what)
	return flow.Conn{}
}

// listen runs s.Listen until the test ends and returns once the
// subscription is live: it inserts probe entries until one's NEW event comes
// back. Probe events are not passed to fn.
func listen(t *testing.T, s *Source, fn func(Event)) {
	t.Helper()
	probeSrc := netip.MustParseAddr("203.0.113.1")
	seen := make(chan struct{})
	var once sync.Once
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Listen(ctx, func(ev Event) {
			if ev.Conn != nil && ev.Conn.Tuple.Src() == probeSrc {
				once.Do(func() { close(seen) })
				return
			}
			fn(ev)
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Listen returned %v after cancel, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Listen did not return within 5s of cancel")
		}
	})
	for port := uint16(1); ; port++ {
		probe := conntracktest.Entry{Proto: flow.ProtoUDP, Timeout: 5,
			OrigSrc: probeSrc, OrigDst: netip.MustParseAddr("203.0.113.2"), OrigSrcPort: port, OrigDstPort: 9,
			ReplySrc: netip.MustParseAddr("203.0.113.2"), ReplyDst: probeSrc, ReplySrcPort: 9, ReplyDstPort: port}
		if err := conntracktest.Insert(s.cfg.NetNSPath, probe); err != nil {
			t.Fatalf("insert probe entry: %v", err)
		}
		select {
		case <-seen:
			return
		case err := <-done:
			t.Fatalf("Listen ended before subscribing: %v", err)
		case <-time.After(100 * time.Millisecond):
			if port == 50 {
				t.Fatal("no event for any of 50 probe entries: Listen is not receiving")
			}
		}
	}
}

func TestListenReportsNewAndDestroyWithFinalCounters(t *testing.T) {
	n := newTestNet(t)
	src := newSource(t, Config{NetNSPath: n.clientPath})
	m := src.m
	if err := src.EnableAccounting(); err != nil {
		t.Fatal(err)
	}
	var col collector
	listen(t, src, col.add)
	const sent, received = 20_000, 10_000
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			c := n.connect(t, f, sent, received)
			port := c.clientPort
			match := func(typ EventType) func(EventType, flow.Conn) bool {
				return func(et EventType, cn flow.Conn) bool {
					return et == typ && cn.Tuple.SrcPort == port && cn.Tuple.Src() == f.client
				}
			}
			nw := col.waitFor(t, "NEW", match(EventNew))
			if nw.Tuple.Dst() != f.server || nw.OrigDst() != f.vip {
				t.Errorf("NEW tuple %v orig dst %v, want endpoint %v and VIP %v", nw.Tuple, nw.OrigDst(), f.server, f.vip)
			}
			c.close()
			fam := "ipv4"
			if f.client.Is6() {
				fam = "ipv6"
			}
			// Closed connections linger in TIME_WAIT; deleting the entry makes
			// the kernel send DESTROY now instead of minutes later.
			run(t, "ip", "netns", "exec", n.clientName, "conntrack", "-D", "-f", fam, "-p", "tcp", "--sport", fmt.Sprint(port))
			d := col.waitFor(t, "DESTROY", match(EventDestroy))
			checkCounters(t, "Fwd", d.Fwd, sent, 3, f)
			checkCounters(t, "Rev", d.Rev, received, 2, f)
			if d.StopNanos == 0 || d.StopNanos < d.StartNanos || d.ID != nw.ID {
				t.Errorf("DESTROY id %d start %d stop %d, want NEW's id %d and stop >= start > 0", d.ID, d.StartNanos, d.StopNanos, nw.ID)
			}
		})
	}
	if v := counterValue(t, m.events[EventDestroy]); v < 2 {
		t.Errorf("destroy events counted %v, want >= 2", v)
	}
}

func TestListenReportsOverrunAndKeepsListening(t *testing.T) {
	need(t, "ip")
	_, path := conntracktest.NetNS(t, "ovr")
	// A tiny buffer and a consumer stuck on its first event guarantee the
	// kernel drops NEW events for the entries inserted meanwhile.
	src := newSource(t, Config{NetNSPath: path, EventBufferBytes: 4096})
	m := src.m
	if err := src.EnableAccounting(); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var once sync.Once
	var col collector
	listen(t, src, func(ev Event) {
		once.Do(func() { <-release })
		col.add(ev)
	})
	if err := conntracktest.Populate(path, 2000); err != nil {
		t.Fatal(err)
	}
	close(release)
	col.waitFor(t, "overrun", func(et EventType, _ flow.Conn) bool { return et == EventOverrun })
	if v := counterValue(t, m.eventOverruns); v < 1 {
		t.Errorf("overruns counted %v, want >= 1", v)
	}
	// Still listening after the overrun: a new entry's event arrives.
	late := conntracktest.SyntheticEntry(5000)
	if err := conntracktest.Insert(path, late); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "NEW after overrun", func(et EventType, c flow.Conn) bool {
		return et == EventNew && c.Tuple.SrcPort == late.OrigSrcPort && c.Tuple.Src() == late.OrigSrc
	})
}

// An EventStream that nobody drains lets the kernel queue events; a
// buffer that overflows meanwhile is reported by the next Drain, which
// also returns what the buffer kept, and the stream goes on.
func TestEventStreamQueuesUntilDrainedAndReportsOverrun(t *testing.T) {
	need(t, "ip")
	_, path := conntracktest.NetNS(t, "evs")
	src := newSource(t, Config{NetNSPath: path, EventBufferBytes: 4096})
	if err := src.EnableAccounting(); err != nil {
		t.Fatal(err)
	}
	es, err := src.OpenEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	first := conntracktest.SyntheticEntry(6000) // outside Populate's range
	if err := conntracktest.Insert(path, first); err != nil {
		t.Fatal(err)
	}
	isNew := func(e conntracktest.Entry) func(Event) bool {
		return func(ev Event) bool {
			return ev.Type == EventNew && ev.Conn.Tuple.SrcPort == e.OrigSrcPort && ev.Conn.Tuple.Src() == e.OrigSrc
		}
	}
	drainUntil := func(what string, want func(Event) bool) (types map[EventType]int) {
		t.Helper()
		types = map[EventType]int{}
		deadline := time.Now().Add(5 * time.Second)
		for found := false; !found; {
			if err := es.Drain(0, func(ev Event) {
				types[ev.Type]++
				found = found || want(ev)
			}); err != nil {
				t.Fatal(err)
			}
			if !found && time.Now().After(deadline) {
				t.Fatalf("%s not drained within 5s (drained %v)", what, types)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return types
	}
	drainUntil("the first entry's NEW", isNew(first))
	if err := conntracktest.Populate(path, 2000); err != nil {
		t.Fatal(err)
	}
	types := drainUntil("an overrun", func(ev Event) bool { return ev.Type == EventOverrun })
	if types[EventNew] == 0 || types[EventNew] >= 2000 {
		t.Errorf("drained %d NEW of 2000 inserted with a 4 KiB buffer, want some and not all", types[EventNew])
	}
	if v := counterValue(t, src.m.eventOverruns); v < 1 {
		t.Errorf("overruns counted %v, want >= 1", v)
	}
	late := conntracktest.SyntheticEntry(5000)
	if err := conntracktest.Insert(path, late); err != nil {
		t.Fatal(err)
	}
	drainUntil("a NEW after the overrun", isNew(late))
}

func TestEnableAccountingSetsSysctlsInItsNamespaceOnly(t *testing.T) {
	need(t, "ip")
	_, path := conntracktest.NetNS(t, "acct")
	hostBefore, err := netns.ReadSysctl("", "net.netfilter.nf_conntrack_timestamp")
	if err != nil {
		t.Fatal(err)
	}
	if err := newSource(t, Config{NetNSPath: path}).EnableAccounting(); err != nil {
		t.Fatalf("EnableAccounting: %v", err)
	}
	for _, s := range accountingSysctls {
		if v, err := netns.ReadSysctl(path, s); err != nil || v != "1" {
			t.Errorf("%s = %q (%v), want 1", s, v, err)
		}
	}
	if after, _ := netns.ReadSysctl("", "net.netfilter.nf_conntrack_timestamp"); after != hostBefore {
		t.Errorf("host nf_conntrack_timestamp changed from %s to %s", hostBefore, after)
	}
}

func TestDumpOfDeletedNamespaceFailsAndCounts(t *testing.T) {
	src := newSource(t, Config{NetNSPath: "/proc/self/ns/net", DumpTimeout: time.Second})
	// Sanity: dumping works, then a closed socket is reopened transparently.
	if err := src.Dump(func(*flow.Conn) {}); err != nil {
		t.Fatal(err)
	}
	src.Close()
	if err := src.Dump(func(*flow.Conn) {}); err != nil {
		t.Fatalf("Dump after Close: %v", err)
	}
	// A namespace deleted after New (its pod went away) fails the dump.
	_, path, cleanup, err := conntracktest.NewNetNS("gone")
	if err != nil {
		t.Fatal(err)
	}
	bad := newSource(t, Config{NetNSPath: path})
	if err := cleanup(); err != nil {
		t.Fatal(err)
	}
	err = bad.Dump(func(*flow.Conn) {})
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dump of a deleted netns = %v, want a not-exist error", err)
	}
	if v := counterValue(t, bad.m.dumpErrors); v != 1 {
		t.Errorf("dump errors = %v, want 1", v)
	}
}
