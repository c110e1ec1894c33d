//go:build integration

package bpfcounters

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
	"github.com/flowlens/flowlens/test/netnstest"
)

// fillUDP fills the conntrack entry of a client UDP socket, as at its NEW
// event (no start time).
func (e *env) fillUDP(t *testing.T, local netip.AddrPort) (ct, filled flow.Conn, res FillResult) {
	t.Helper()
	var ok bool
	deadline := time.Now().Add(3 * time.Second)
	for {
		if ct, ok = e.ctConn(t, flow.ProtoUDP, local); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no conntrack entry for %s", local)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ct.StartNanos = 0
	filled = ct
	res, err := e.c.Fill(&filled)
	if err != nil {
		t.Fatal(err)
	}
	return ct, filled, res
}

// TestFragmentsAreLossy: a datagram sent in fragments makes its connection
// lossy over IPv4 and IPv6, one that fits does not.
func TestFragmentsAreLossy(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run("ipv6="+strconv.FormatBool(v6), func(t *testing.T) {
			e := newEnv(t, Config{}, v6)
			if _, err := e.server.ListenUDP(5353); err != nil {
				t.Fatal(err)
			}
			dst := e.server.Addr(5353)
			if v6 {
				dst = e.server.Addr6(5353)
			}
			send := func(size int) netip.AddrPort {
				c, err := e.client.DialUDP(dst)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := c.Write(make([]byte, size)); err != nil { // first 4 bytes 0: no reply
					t.Fatal(err)
				}
				return localOf(t, c.LocalAddr().String())
			}
			whole, fragmented := send(1000), send(8000)
			time.Sleep(200 * time.Millisecond)
			ct, filled, res := e.fillUDP(t, whole)
			if !res.Seen || res.Lossy || filled.Fwd != ct.Fwd {
				t.Errorf("unfragmented datagram: seen %v lossy %v fwd %+v, conntrack %+v; want seen, not lossy, equal",
					res.Seen, res.Lossy, filled.Fwd, ct.Fwd)
			}
			ct, filled, res = e.fillUDP(t, fragmented)
			if !res.Seen || !res.Lossy {
				t.Errorf("fragmented datagram: seen %v lossy %v (fwd %+v, conntrack %+v); want seen and lossy",
					res.Seen, res.Lossy, filled.Fwd, ct.Fwd)
			}
			if filled.Fwd.Bytes >= ct.Fwd.Bytes {
				t.Errorf("fragmented datagram: eBPF counted %d bytes under the ports, conntrack %d: the test sent no fragments",
					filled.Fwd.Bytes, ct.Fwd.Bytes)
			}
		})
	}
}

// TestIPv6DestinationOptionsAreLossy: a UDP datagram behind an IPv6
// destination-options header is counted under its ports (the header is
// walked) and its connection is lossy.
func TestIPv6DestinationOptionsAreLossy(t *testing.T) {
	e := newEnv(t, Config{}, true)
	if _, err := e.server.ListenUDP(5353); err != nil {
		t.Fatal(err)
	}
	c, err := e.client.DialUDP(e.server.Addr6(5353))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// One 8-byte header holding a PadN option of 4 bytes.
	opts := []byte{0, 0, 1, 4, 0, 0, 0, 0}
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, string(opts))
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("set IPV6_DSTOPTS: %v", serr)
	}
	for range 3 {
		if _, err := c.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	ct, filled, res := e.fillUDP(t, localOf(t, c.LocalAddr().String()))
	if !res.Seen || !res.Lossy {
		t.Errorf("datagrams with destination options: seen %v lossy %v; want seen (named through the header) and lossy", res.Seen, res.Lossy)
	}
	if filled.Fwd.Packets != ct.Fwd.Packets {
		t.Errorf("packets under the ports %d, conntrack %d", filled.Fwd.Packets, ct.Fwd.Packets)
	}
}

// TestUnattributedLossDatesConnections: lost-key records the full ring
// dropped make the connections counted before that read lossy, not the
// ones counted after it, and are noticed once.
func TestUnattributedLossDatesConnections(t *testing.T) {
	e := newEnv(t, Config{MapEntries: 4, RingBytes: 4096}, false) // ~70 records
	if _, err := e.server.ListenUDP(5353); err != nil {
		t.Fatal(err)
	}
	round := func() {
		t.Helper()
		if err := e.c.ReadChanged(func(flow.Tuple, bool) {}); err != nil {
			t.Fatal(err)
		}
	}
	before, err := netnstest.SendUDP(e.client, e.server.Addr(5353), 100, 100) // fills the map
	if err != nil {
		t.Fatal(err)
	}
	round()
	for i := range 150 { // 300 lost keys: most records find the ring full
		if _, err := netnstest.SendUDP(e.client, e.server.Addr(5353), i+1, 0); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	round()
	if n := counterValue(e.c.metrics.unattributed); n != 0 {
		t.Errorf("unattributed losses %v in the round that saw them happen; want 0 (one round of slack)", n)
	}
	round()
	if n := counterValue(e.c.metrics.unattributed); n != 1 {
		t.Fatalf("unattributed losses %v after %v ring-full, %v lost records; want 1",
			n, counterValue(e.c.metrics.kernel[statRingFull]), counterValue(e.c.metrics.lostKeys))
	}
	if _, _, res := e.fillUDP(t, before.Local); !res.Seen || !res.Lossy {
		t.Errorf("connection counted before the loss: seen %v lossy %v; want seen and lossy", res.Seen, res.Lossy)
	}
	if _, err := e.c.Sweep(0, func(flow.Tuple) bool { return false }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	after, err := netnstest.SendUDP(e.client, e.server.Addr(5353), 100, 100)
	if err != nil {
		t.Fatal(err)
	}
	ct, filled, res := e.fillUDP(t, after.Local)
	if !res.Seen || res.Lossy || filled.Fwd != ct.Fwd || filled.Rev != ct.Rev {
		t.Errorf("connection counted after the loss: seen %v lossy %v fwd %+v rev %+v, conntrack %+v %+v; want seen, not lossy, equal",
			res.Seen, res.Lossy, filled.Fwd, filled.Rev, ct.Fwd, ct.Rev)
	}
	round()
	round()
	if n := counterValue(e.c.metrics.unattributed); n != 1 {
		t.Errorf("unattributed losses %v after quiet rounds; want still 1", n)
	}
}

// dropAll is a classifier that drops every packet: a CNI program that
// redirects or drops packets before the counters would see them.
func dropAll(t *testing.T) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 2), // TCX_DROP / TC_ACT_SHOT
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load drop program: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestCountsBeforeOtherPrograms: the counters run before a program or tc
// filter already on the interface that drops the packet.
func TestCountsBeforeOtherPrograms(t *testing.T) {
	for _, mode := range []string{AttachTCX, AttachTC} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, Config{Attach: mode}, false)
			if _, err := e.server.ListenUDP(5353); err != nil {
				t.Fatal(err)
			}
			// Resolve the gateway's address before anything drops ARP.
			if _, err := netnstest.SendUDP(e.client, e.server.Addr(5353), 10, 10); err != nil {
				t.Fatal(err)
			}
			e.mu.Lock()
			ifindex := e.attached[e.client.HostVeth]
			e.mu.Unlock()
			// Re-attach after the dropper, as when a CNI was first.
			if err := e.c.Detach(ifindex, e.node.NetnsPath); err != nil {
				t.Fatal(err)
			}
			switch mode {
			case AttachTCX:
				drop := dropAll(t)
				err := netns.Do(e.node.NetnsPath, func() error {
					l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: drop, Attach: ebpf.AttachTCXIngress})
					if err != nil {
						return err
					}
					t.Cleanup(func() { l.Close() })
					return nil
				})
				if err != nil {
					t.Fatalf("attach the dropping program: %v", err)
				}
			case AttachTC:
				// A direct-action cls_bpf filter at priority 10, as a CNI's.
				drop := dropAll(t)
				err := netns.Do(e.node.NetnsPath, func() error {
					return netlink.FilterAdd(&netlink.BpfFilter{
						FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
							Handle: 1, Priority: 10, Protocol: unix.ETH_P_ALL},
						Fd: drop.FD(), Name: "drop_all", DirectAction: true,
					})
				})
				if err != nil {
					t.Fatalf("add a dropping tc filter: %v", err)
				}
			}
			if err := e.c.Attach(ifindex, e.node.NetnsPath); err != nil {
				t.Fatal(err)
			}
			if mode == AttachTCX {
				var first ebpf.ProgramID
				err := netns.Do(e.node.NetnsPath, func() error {
					q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
					if err != nil {
						return err
					}
					if len(q.Programs) != 2 {
						t.Errorf("%d programs on ingress, want 2", len(q.Programs))
					}
					if len(q.Programs) > 0 {
						first = q.Programs[0].ID
					}
					return nil
				})
				if err != nil {
					t.Fatalf("query tcx programs: %v", err)
				}
				info, err := e.c.objs.FlowFromPod.Info()
				if err != nil {
					t.Fatal(err)
				}
				if id, _ := info.ID(); id != first {
					t.Errorf("first program on ingress %d, want the counters' %d", first, id)
				}
			}
			c, err := e.client.DialUDP(e.server.Addr(5353))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			const n = 5
			for range n {
				if _, err := c.Write(make([]byte, 100)); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(100 * time.Millisecond)
			local := c.LocalAddr().(*net.UDPAddr).AddrPort()
			k := keyOf(flow.NewTuple(local.Addr().Unmap(), e.server.IPv4, local.Port(), 5353, flow.ProtoUDP), hookFromPod)
			var v bpfFlowVal
			ok, err := e.c.table.lookup(&k, &v)
			if err != nil {
				t.Fatal(err)
			}
			if !ok || v.Packets != n {
				t.Errorf("datagrams dropped after the counters: found %v, %d packets; want %d", ok, v.Packets, n)
			}
			if _, ok := e.ctConn(t, flow.ProtoUDP, local); ok {
				t.Errorf("conntrack saw the datagrams: the dropper did not drop them")
			}
		})
	}
}
