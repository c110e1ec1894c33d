//go:build integration

package tcphealth

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
	"github.com/flowlens/flowlens/test/netnstest"
)

// nodeIndex gives this package's test nodes an address plan of their own
// (10.244.213.0/24), away from other packages' nodes running at the same
// time: sockets are keyed by tuple alone.
const nodeIndex = 213

func newTestTracker(t testing.TB) *Tracker {
	t.Helper()
	tr, err := New(Config{}, prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tr
}

func enrichRecord(tr *Tracker, c flow.Conn, end bool) flow.Health {
	r := flow.Record{Conn: c, EndReason: flow.EndActiveTimeout}
	if end {
		r.EndReason = flow.EndOfFlow
	}
	tr.Enrich(&r)
	return r.Health
}

func newNode(t testing.TB, ipv6 bool) (*netnstest.Node, *netnstest.Pod, *netnstest.Pod) {
	t.Helper()
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "th", Index: nodeIndex, IPv6: ipv6,
		Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	return node, node.Pod("a"), node.Pod("b")
}

// acceptor is a listener in a pod whose accepted connections the test
// drives itself.
type acceptor struct {
	ln    net.Listener
	port  uint16
	conns chan *net.TCPConn
}

func listenIn(t testing.TB, path string, addr string) *acceptor {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(path, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	a := &acceptor{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port), conns: make(chan *net.TCPConn, 16)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.conns <- c.(*net.TCPConn)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return a
}

func (a *acceptor) accept(t testing.TB) *net.TCPConn {
	t.Helper()
	select {
	case c := <-a.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted")
		return nil
	}
}

func dialFrom(t testing.TB, path string, to netip.AddrPort) (*net.TCPConn, error) {
	t.Helper()
	var c net.Conn
	err := netns.Do(path, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 10 * time.Second}).Dial("tcp", to.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), nil
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// exchange does n request/response rounds of size bytes each way.
func exchange(t testing.TB, cli, srv *net.TCPConn, n, size int) {
	t.Helper()
	buf := make([]byte, size)
	for range n {
		for _, dir := range [][2]*net.TCPConn{{cli, srv}, {srv, cli}} {
			if err := dir[1].SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, err := dir[0].Write(buf); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(dir[1], buf); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// ctConn finds the connection from client in the node's conntrack table:
// the record the agent would export, with its real NAT forms.
func ctConn(t testing.TB, node *netnstest.Node, client netip.AddrPort) flow.Conn {
	t.Helper()
	src, err := conntrack.New(conntrack.Config{NetNSPath: node.NetnsPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var found []flow.Conn
	if err := src.Dump(func(c *flow.Conn) {
		if c.Tuple.Proto == flow.ProtoTCP && c.Tuple.Src() == client.Addr() && c.Tuple.SrcPort == client.Port() {
			found = append(found, *c)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 {
		t.Fatalf("conntrack has %d TCP connections from %s, want 1", len(found), client)
	}
	return found[0]
}

func tcpInfo(t testing.TB, c *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info
}

func wantEntry(t testing.TB, tr *Tracker, k bpfSockKey, ok func(bpfSockStats) bool, what string) {
	t.Helper()
	var v bpfSockStats
	if err := tr.objs.Socks.Lookup(&k, &v); err != nil {
		t.Fatalf("entry %s: %v", keyTuple(&k), err)
	}
	if !ok(v) {
		t.Errorf("entry %s %+v: want %s", keyTuple(&k), v, what)
	}
}

// settled waits until neither socket has unacknowledged data.
func settled(t testing.TB, conns ...*net.TCPConn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		busy := false
		for _, c := range conns {
			if tcpInfo(t, c).Unacked != 0 {
				busy = true
			}
		}
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("segments still unacknowledged after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func nft(t testing.TB, path, script string) {
	t.Helper()
	err := netns.Do(path, func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft: %w: %s", err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLoadAllPrograms loads and attaches every program of the object on
// this kernel: the verifier accepts them or the test fails with its log.
func TestLoadAllPrograms(t *testing.T) {
	tr := newTestTracker(t)
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	loaded := map[string]*ebpf.Program{
		bpfProgThTcpProbe:            tr.objs.ThTcpProbe,
		bpfProgThTcpRetransmitSkb:    tr.objs.ThTcpRetransmitSkb,
		bpfProgThTcpRetransmitSynack: tr.objs.ThTcpRetransmitSynack,
		bpfProgThTcpSendReset:        tr.objs.ThTcpSendReset,
		bpfProgThTcpReceiveReset:     tr.objs.ThTcpReceiveReset,
		bpfProgThInetSockSetState:    tr.objs.ThInetSockSetState,
	}
	for name := range spec.Programs {
		p, ok := loaded[name]
		if !ok {
			t.Errorf("program %s in the object is not loaded by New", name)
		} else if p == nil {
			t.Errorf("%s not loaded", name)
		}
	}
	if len(spec.Programs) != len(loaded) || len(tr.links) != len(loaded) {
		t.Errorf("object has %d programs, %d attached, want %d", len(spec.Programs), len(tr.links), len(loaded))
	}
}

// TestRTTWithAddedDelay: a 20 ms delay each way gives an RTT of about
// 40 ms on both sockets, and the client's time to establish about the
// same, in the first record only; a plain veth between two pods gives
// well under that.
func TestRTTWithAddedDelay(t *testing.T) {
	tr := newTestTracker(t)
	const oneWay = 20 * time.Millisecond
	const rtt = uint32(2 * oneWay / time.Microsecond)
	d := newDelayLine(t, oneWay)
	for _, fam := range []struct {
		name     string
		cli, srv netip.Addr
	}{{"ipv4", d.cliV4, d.srvV4}, {"ipv6", d.cliV6, d.srvV6}} {
		t.Run(fam.name, func(t *testing.T) {
			a := listenIn(t, d.srv, netip.AddrPortFrom(fam.srv, 0).String())
			cli, err := dialFrom(t, d.cli, netip.AddrPortFrom(fam.srv, a.port))
			if err != nil {
				t.Fatal(err)
			}
			srv := a.accept(t)
			local := addrPort(cli.LocalAddr())
			c := flow.Conn{Tuple: flow.NewTuple(local.Addr(), fam.srv, local.Port(), a.port, flow.ProtoTCP)}
			c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort
			exchange(t, cli, srv, 5, 100)

			h := enrichRecord(tr, c, false)
			t.Logf("first record: %+v", h)
			if h.RTTSamples == 0 {
				t.Fatal("no RTT sample")
			}
			// Never below the line's delay; a delayed ACK (40 ms), the
			// first packet's neighbour resolution (one more round
			// trip) and a busy machine's scheduling add to it.
			const most = 6 * rtt
			if h.RTTMinMicros < rtt*95/100 || h.RTTMaxMicros > most || h.RTTAvgMicros < h.RTTMinMicros || h.RTTAvgMicros > h.RTTMaxMicros {
				t.Errorf("RTT min/avg/max %d/%d/%d µs, want within [%d, %d]", h.RTTMinMicros, h.RTTAvgMicros, h.RTTMaxMicros, rtt*95/100, most)
			}
			if h.EstablishMicros < rtt*95/100 || h.EstablishMicros > most {
				t.Errorf("establish %d µs, want about %d", h.EstablishMicros, rtt)
			}
			if h.FwdResets+h.RevResets+h.ZeroWindows != 0 {
				t.Errorf("resets or zero windows on a clean line: %+v", h)
			}
			// Retransmits only where the kernel made them (a stalled
			// relay can trigger a tail loss probe).
			if h.FwdRetransmits != tcpInfo(t, cli).Total_retrans || h.RevRetransmits != tcpInfo(t, srv).Total_retrans {
				t.Errorf("retransmits %d/%d, kernel's TCP_INFO %d/%d", h.FwdRetransmits, h.RevRetransmits,
					tcpInfo(t, cli).Total_retrans, tcpInfo(t, srv).Total_retrans)
			}
			exchange(t, cli, srv, 3, 100)
			h = enrichRecord(tr, c, false)
			t.Logf("second record: %+v", h)
			if h.EstablishMicros != 0 {
				t.Errorf("establish %d µs in the second record, want 0", h.EstablishMicros)
			}
			if h.RTTSamples == 0 || h.RTTMinMicros < rtt*95/100 {
				t.Errorf("second record RTT %+v, want samples of at least %d µs", h, rtt*95/100)
			}
			enrichRecord(tr, c, true)
		})
	}
	if err := d.err(); err != nil {
		t.Fatal(err)
	}
	t.Run("plain veth", func(t *testing.T) {
		node, pa, pb := newNode(t, false)
		a := listenIn(t, pb.NetnsPath, ":0")
		cli, err := dialFrom(t, pa.NetnsPath, pb.Addr(a.port))
		if err != nil {
			t.Fatal(err)
		}
		srv := a.accept(t)
		exchange(t, cli, srv, 5, 100)
		h := enrichRecord(tr, ctConn(t, node, addrPort(cli.LocalAddr())), true)
		t.Logf("record: %+v", h)
		if h.RTTSamples == 0 || h.EstablishMicros == 0 {
			t.Fatalf("no RTT sample or establish time: %+v", h)
		}
		// Min and average, not max: on a shared machine one stalled
		// reply can make a single sample (and a retransmission) long.
		if h.RTTMinMicros >= rtt/10 || h.RTTAvgMicros >= rtt/2 {
			t.Errorf("veth RTT min %d avg %d µs, want well under the delay line's %d", h.RTTMinMicros, h.RTTAvgMicros, rtt)
		}
	})
}

// TestRetransmitsInRightDirection drops each direction's segments for a
// moment in the node: the sender's retransmits appear on its side, and
// match the kernel's own count (TCP_INFO) exactly over the records.
func TestRetransmitsInRightDirection(t *testing.T) {
	tr := newTestTracker(t)
	node, pa, pb := newNode(t, false)
	a := listenIn(t, pb.NetnsPath, ":0")
	cli, err := dialFrom(t, pa.NetnsPath, pb.Addr(a.port))
	if err != nil {
		t.Fatal(err)
	}
	srv := a.accept(t)
	exchange(t, cli, srv, 2, 10)
	c := ctConn(t, node, addrPort(cli.LocalAddr()))
	var fwd, rev uint32
	h := enrichRecord(tr, c, false)
	fwd, rev = fwd+h.FwdRetransmits, rev+h.RevRetransmits

	dropFor := func(match string, send, recv *net.TCPConn) flow.Health {
		t.Helper()
		// Start from nothing in flight either way (a delayed ACK
		// dropped by the rule would make the other side retransmit).
		settled(t, cli, srv)
		nft(t, node.NetnsPath, fmt.Sprintf(`table inet thdrop {
	chain drops {
		type filter hook forward priority -10; policy accept;
		%s drop
	}
}`, match))
		if _, err := send.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond) // past the 200 ms minimum RTO and a backoff
		nft(t, node.NetnsPath, "delete table inet thdrop\n")
		if err := recv.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(recv, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		h := enrichRecord(tr, c, false)
		fwd, rev = fwd+h.FwdRetransmits, rev+h.RevRetransmits
		return h
	}
	h = dropFor(fmt.Sprintf("ip saddr %s tcp dport %d", pa.IPv4, a.port), cli, srv)
	t.Logf("client's segments dropped: %+v", h)
	if h.FwdRetransmits == 0 || h.RevRetransmits != 0 {
		t.Errorf("client's segments dropped: %d fwd / %d rev retransmits, want some fwd and no rev", h.FwdRetransmits, h.RevRetransmits)
	}
	h = dropFor(fmt.Sprintf("ip saddr %s tcp sport %d", pb.IPv4, a.port), srv, cli)
	t.Logf("server's segments dropped: %+v", h)
	if h.RevRetransmits == 0 || h.FwdRetransmits != 0 {
		t.Errorf("server's segments dropped: %d fwd / %d rev retransmits, want some rev and no fwd", h.FwdRetransmits, h.RevRetransmits)
	}
	if got, want := fwd, tcpInfo(t, cli).Total_retrans; got != want {
		t.Errorf("client retransmits over the records %d, kernel's TCP_INFO %d", got, want)
	}
	if got, want := rev, tcpInfo(t, srv).Total_retrans; got != want {
		t.Errorf("server retransmits over the records %d, kernel's TCP_INFO %d", got, want)
	}
}

// TestResets: a server closing with SO_LINGER 0 and a connect to a closed
// port are each one reset by the destination, although both the sending
// and the receiving socket are on this node; the connection's entries are
// gone after its last record.
func TestResets(t *testing.T) {
	tr := newTestTracker(t)
	node, pa, pb := newNode(t, true)
	for _, fam := range []struct {
		name     string
		cli, srv netip.Addr
	}{{"ipv4", pa.IPv4, pb.IPv4}, {"ipv6", pa.IPv6, pb.IPv6}} {
		t.Run(fam.name+"/linger0", func(t *testing.T) {
			a := listenIn(t, pb.NetnsPath, netip.AddrPortFrom(fam.srv, 0).String())
			cli, err := dialFrom(t, pa.NetnsPath, netip.AddrPortFrom(fam.srv, a.port))
			if err != nil {
				t.Fatal(err)
			}
			srv := a.accept(t)
			exchange(t, cli, srv, 1, 10)
			if err := srv.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			srv.Close()
			if err := cli.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, err := cli.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("client read after the server's abort: %v, want ECONNRESET", err)
			}
			c := ctConn(t, node, addrPort(cli.LocalAddr()))
			// Both halves are on this node: sent by the server's
			// socket, received by the client's.
			wantEntry(t, tr, sockKey(c.Tuple.Reverse()), func(v bpfSockStats) bool { return v.RstSent == 1 }, "server sent one reset")
			wantEntry(t, tr, sockKey(c.Tuple), func(v bpfSockStats) bool { return v.RstRecv == 1 }, "client received one reset")
			h := enrichRecord(tr, c, true)
			t.Logf("record: %+v", h)
			if h.RevResets != 1 || h.FwdResets != 0 {
				t.Errorf("resets fwd %d rev %d, want 0 and 1", h.FwdResets, h.RevResets)
			}
			for _, k := range []bpfSockKey{sockKey(c.Tuple), sockKey(c.Tuple.Reverse())} {
				var v bpfSockStats
				if err := tr.objs.Socks.Lookup(&k, &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
					t.Errorf("entry %v after the last record: %v", keyTuple(&k), err)
				}
			}
		})
		t.Run(fam.name+"/closed port", func(t *testing.T) {
			const closed = 9
			// A fixed local port names the connection although the
			// connect fails (the pod's namespace has all ports free);
			// conntrack forgets such a connection at once, the agent
			// reports it from its DESTROY event with this tuple.
			local := netip.AddrPortFrom(fam.cli, 20000+uint16(time.Now().UnixNano()%10000))
			err := netns.Do(pa.NetnsPath, func() error {
				d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(local)}
				c, err := d.Dial("tcp", netip.AddrPortFrom(fam.srv, closed).String())
				if err == nil {
					c.Close()
				}
				return err
			})
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("connect to a closed port: %v, want ECONNREFUSED", err)
			}
			c := flow.Conn{Tuple: flow.NewTuple(local.Addr(), fam.srv, local.Port(), closed, flow.ProtoTCP)}
			c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort
			cs := []flow.Conn{c}
			// The stack answered with no socket: the entry is born
			// closed. The client's socket received it.
			wantEntry(t, tr, sockKey(cs[0].Tuple.Reverse()), func(v bpfSockStats) bool { return v.RstSent == 1 && v.ClosedNs != 0 },
				"answering side: one reset sent, closed")
			wantEntry(t, tr, sockKey(cs[0].Tuple), func(v bpfSockStats) bool { return v.RstRecv == 1 }, "client received one reset")
			h := enrichRecord(tr, cs[0], true)
			t.Logf("record: %+v", h)
			if h.RevResets != 1 || h.FwdResets != 0 {
				t.Errorf("resets fwd %d rev %d, want 0 and 1", h.FwdResets, h.RevResets)
			}
		})
	}
}

// TestServiceVIP: a client dialling a Service VIP has a socket named by the
// VIP; the record (real conntrack, DNATed) finds it through its forms: the
// client's time to establish appears, and does not without the VIP form.
func TestServiceVIP(t *testing.T) {
	tr := newTestTracker(t)
	node, pa, pb := newNode(t, false)
	a := listenIn(t, pb.NetnsPath, ":0")
	svc := netnstest.AddServiceT(t, node, netnstest.Service{Backend: pb, Port: 80, TargetPort: a.port})
	cli, err := dialFrom(t, pa.NetnsPath, svc.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if got := addrPort(cli.RemoteAddr()); got != svc.Addr() {
		t.Fatalf("client socket's remote %s, want the VIP %s", got, svc.Addr())
	}
	srv := a.accept(t)
	exchange(t, cli, srv, 3, 100)
	c := ctConn(t, node, addrPort(cli.LocalAddr()))
	if !c.IsDNATed() || c.OrigDst() != svc.VIP {
		t.Fatalf("conntrack connection %s orig dst %s: not DNATed to the VIP", c.Tuple, c.OrigDst())
	}
	noVIP := c
	noVIP.OrigDstIP, noVIP.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort
	h := enrichRecord(tr, noVIP, false)
	t.Logf("without the VIP form: %+v", h)
	if h.EstablishMicros != 0 {
		t.Fatalf("establish %d µs found without the VIP form: the client socket should not match", h.EstablishMicros)
	}
	if h.RTTSamples == 0 {
		t.Errorf("server socket not found: %+v", h)
	}
	h = enrichRecord(tr, c, false)
	t.Logf("with the VIP form: %+v", h)
	if h.EstablishMicros == 0 || h.RTTSamples == 0 {
		t.Errorf("client socket not matched through the VIP: %+v", h)
	}
	// The client aborts: one reset by the source, sent by the socket that
	// names the VIP and received by the server's.
	if err := cli.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	if err := srv.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server read after the client's abort: %v, want ECONNRESET", err)
	}
	h = enrichRecord(tr, c, true)
	if h.FwdResets != 1 || h.RevResets != 0 {
		t.Errorf("resets fwd %d rev %d, want 1 and 0", h.FwdResets, h.RevResets)
	}
}

// TestZeroWindow: a server that stops reading makes the client find its
// window zero.
func TestZeroWindow(t *testing.T) {
	tr := newTestTracker(t)
	node, pa, pb := newNode(t, false)
	a := listenIn(t, pb.NetnsPath, ":0")
	cli, err := dialFrom(t, pa.NetnsPath, pb.Addr(a.port))
	if err != nil {
		t.Fatal(err)
	}
	srv := a.accept(t)
	if err := srv.SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	const total = 4 << 20
	done := make(chan error, 1)
	go func() {
		if err := cli.SetWriteDeadline(time.Now().Add(20 * time.Second)); err != nil {
			done <- err
			return
		}
		_, err := cli.Write(make([]byte, total))
		done <- err
	}()
	time.Sleep(1500 * time.Millisecond) // window probes back off from 200 ms
	if err := srv.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(srv, make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	settled(t, cli, srv)
	h := enrichRecord(tr, ctConn(t, node, addrPort(cli.LocalAddr())), true)
	t.Logf("record: %+v", h)
	if h.ZeroWindows == 0 {
		t.Error("no zero window counted")
	}
	// The window shrinking under data already sent makes the client
	// retransmit: counted as the kernel counts it.
	if got, want := h.FwdRetransmits, tcpInfo(t, cli).Total_retrans; got != want {
		t.Errorf("client retransmits %d, kernel's TCP_INFO %d", got, want)
	}
}

// TestSweepAndMetrics: the tracker's own sweep deletes a closed socket's
// entry no record took, and the programs' counters reach the metrics.
func TestSweepAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr, err := New(Config{ClosedGrace: time.Nanosecond, SweepInterval: 200 * time.Millisecond}, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, pa, pb := newNode(t, false)
	a := listenIn(t, pb.NetnsPath, ":0")
	cli, err := dialFrom(t, pa.NetnsPath, pb.Addr(a.port))
	if err != nil {
		t.Fatal(err)
	}
	srv := a.accept(t)
	exchange(t, cli, srv, 2, 10)
	local := addrPort(cli.LocalAddr())
	k := sockKey(flow.NewTuple(local.Addr(), pb.IPv4, local.Port(), a.port, flow.ProtoTCP))
	wantEntry(t, tr, k, func(v bpfSockStats) bool { return v.RttSamples > 0 && v.ClosedNs == 0 }, "open with samples")
	if err := cli.SetLinger(0); err != nil { // straight to CLOSE, no TIME_WAIT
		t.Fatal(err)
	}
	cli.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var v bpfSockStats
		err := tr.objs.Socks.Lookup(&k, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("closed untaken entry still there after 5s: %+v", v)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a sweep later, the counters are copied
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "/" + l.GetValue()
			}
			got[name] = m.GetCounter().GetValue()
		}
	}
	for _, name := range []string{
		"flowlens_tcphealth_events_total/tcp_probe",
		"flowlens_tcphealth_events_total/inet_sock_set_state",
		"flowlens_tcphealth_events_total/tcp_send_reset",
		"flowlens_tcphealth_entries_created_total",
		"flowlens_tcphealth_deleted_entries_total/swept",
	} {
		if got[name] < 1 {
			t.Errorf("%s = %v, want at least 1", name, got[name])
		}
	}
	if got["flowlens_tcphealth_map_errors_total"] != 0 {
		t.Errorf("map errors: %v", got["flowlens_tcphealth_map_errors_total"])
	}
}

// TestHandshakeRetransmits drops the server's SYN-ACKs for a moment: the
// client's SYN retransmits are the source's, the server's SYN-ACK
// retransmits (sent from its request socket, before the connection's
// socket exists) the destination's, both equal to the kernel's counts.
func TestHandshakeRetransmits(t *testing.T) {
	tr := newTestTracker(t)
	node, pa, pb := newNode(t, false)
	a := listenIn(t, pb.NetnsPath, ":0")
	nft(t, node.NetnsPath, fmt.Sprintf(`table inet thdrop {
	chain drops {
		type filter hook forward priority -10; policy accept;
		ip saddr %s tcp sport %d drop
	}
}`, pb.IPv4, a.port))
	lifted := make(chan struct{})
	go func() {
		defer close(lifted)
		time.Sleep(1500 * time.Millisecond) // past the first SYN and SYN-ACK retransmits (1 s)
	}()
	type dialed struct {
		c   *net.TCPConn
		err error
	}
	res := make(chan dialed, 1)
	go func() {
		var c net.Conn
		err := netns.Do(pa.NetnsPath, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 20 * time.Second}).Dial("tcp", pb.Addr(a.port).String())
			return err
		})
		if err != nil {
			res <- dialed{err: err}
			return
		}
		res <- dialed{c: c.(*net.TCPConn)}
	}()
	<-lifted
	nft(t, node.NetnsPath, "delete table inet thdrop\n")
	d := <-res
	if d.err != nil {
		t.Fatal(d.err)
	}
	cli := d.c
	t.Cleanup(func() { cli.Close() })
	srv := a.accept(t)
	exchange(t, cli, srv, 1, 10)
	settled(t, cli, srv)
	h := enrichRecord(tr, ctConn(t, node, addrPort(cli.LocalAddr())), false)
	t.Logf("record: %+v", h)
	if h.FwdRetransmits == 0 || h.RevRetransmits == 0 {
		t.Errorf("retransmits fwd %d rev %d, want both", h.FwdRetransmits, h.RevRetransmits)
	}
	if got, want := h.FwdRetransmits, tcpInfo(t, cli).Total_retrans; got != want {
		t.Errorf("client retransmits %d, kernel's TCP_INFO %d", got, want)
	}
	if got, want := h.RevRetransmits, tcpInfo(t, srv).Total_retrans; got != want {
		t.Errorf("server retransmits %d, kernel's TCP_INFO %d", got, want)
	}
	if h.EstablishMicros < 1e6 {
		t.Errorf("establish %d µs, want over the 1 s the first SYN-ACKs were lost", h.EstablishMicros)
	}
}
