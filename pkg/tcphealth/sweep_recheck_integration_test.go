//go:build integration

package tcphealth

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
)

// TestDeleteClosedOnKernelMaps: the sweep's conditional delete on the real
// (LRU hash) maps leaves an entry that is not the closed one it was told
// of exactly as it was, min/max included, and deletes the one it was told
// of with its min/max. The tuple is from a documentation range no test
// socket uses.
func TestDeleteClosedOnKernelMaps(t *testing.T) {
	tr := newTestTracker(t)
	mt := newMapTable(&tr.objs.bpfMaps)
	k := sockKey(flow.NewTuple(netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), 41000, 8080, flow.ProtoTCP))
	t.Cleanup(func() { _, _ = mt.delete(&k) })
	put := func(v bpfSockStats) {
		t.Helper()
		if err := tr.objs.Socks.Update(&k, &v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		if err := tr.objs.Minmax.Update(&k, &bpfRttMinmax{MinUs: 5, MaxUs: 9}, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	closed := bpfSockStats{BornNs: 100, ClosedNs: 200, Retrans: 1}
	live := bpfSockStats{BornNs: 300, Flags: flagReplaced, Retrans: 2}

	// The walk saw the closed entry born at 100; a new connection's
	// replaced it since.
	put(live)
	deleted, err := mt.deleteClosed(&k, closed.BornNs)
	if err != nil || deleted {
		t.Fatalf("deleteClosed of a replaced entry: %v, %v; want not deleted, no error", deleted, err)
	}
	var v bpfSockStats
	if err := tr.objs.Socks.Lookup(&k, &v); err != nil || v != live {
		t.Fatalf("replaced entry after deleteClosed: %+v, %v; want %+v", v, err, live)
	}
	var mm bpfRttMinmax
	if err := tr.objs.Minmax.Lookup(&k, &mm); err != nil || mm.MinUs != 5 || mm.MaxUs != 9 {
		t.Fatalf("replaced entry's min/max after deleteClosed: %+v, %v", mm, err)
	}
	// The same born but open (cannot come from the kernel, which sets
	// closed_ns once) is not deleted either.
	put(bpfSockStats{BornNs: 100, Retrans: 3})
	if deleted, err := mt.deleteClosed(&k, closed.BornNs); err != nil || deleted {
		t.Fatalf("deleteClosed of an open entry: %v, %v; want not deleted, no error", deleted, err)
	}

	put(closed)
	deleted, err = mt.deleteClosed(&k, closed.BornNs)
	if err != nil || !deleted {
		t.Fatalf("deleteClosed of the closed entry: %v, %v; want deleted", deleted, err)
	}
	if err := tr.objs.Socks.Lookup(&k, &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("closed entry after deleteClosed: %+v, %v", v, err)
	}
	if err := tr.objs.Minmax.Lookup(&k, &mm); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("closed entry's min/max after deleteClosed: %+v, %v", mm, err)
	}
	if deleted, err := mt.deleteClosed(&k, closed.BornNs); err != nil || deleted {
		t.Fatalf("deleteClosed of a missing entry: %v, %v; want not deleted, no error", deleted, err)
	}
}

// TestReplacedEntryStartsWithoutOldExtremes: a new connection reusing the
// tuple of a closed, untaken entry replaces it in the kernel (flagged), and
// the old entry's RTT min/max (here an impossible 1..999999 µs put in after
// the close) do not reach the new connection's period.
func TestReplacedEntryStartsWithoutOldExtremes(t *testing.T) {
	tr := newTestTracker(t)
	_, pa, pb := newNode(t, false)
	a := listenIn(t, pb.NetnsPath, netip.AddrPortFrom(pb.IPv4, 0).String())
	local := netip.AddrPortFrom(pa.IPv4, 30000+uint16(time.Now().UnixNano()%10000))
	dial := func() *net.TCPConn {
		t.Helper()
		var c net.Conn
		if err := netns.Do(pa.NetnsPath, func() error {
			var err error
			d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(local)}
			c, err = d.Dial("tcp", netip.AddrPortFrom(pb.IPv4, a.port).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}
	k := sockKey(flow.NewTuple(local.Addr(), pb.IPv4, local.Port(), a.port, flow.ProtoTCP))

	cli := dial()
	srv := a.accept(t)
	exchange(t, cli, srv, 2, 10)
	if err := cli.SetLinger(0); err != nil { // straight to CLOSE: the port is free again
		t.Fatal(err)
	}
	cli.Close()
	srv.Close()
	waitEntry(t, tr, k, func(v bpfSockStats) bool { return v.ClosedNs != 0 }, "first connection's entry closed")
	var old bpfSockStats
	if err := tr.objs.Socks.Lookup(&k, &old); err != nil {
		t.Fatal(err)
	}
	if err := tr.objs.Minmax.Update(&k, &bpfRttMinmax{MinUs: 1, MaxUs: 999999}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}

	cli = dial()
	srv = a.accept(t)
	exchange(t, cli, srv, 2, 10)
	waitEntry(t, tr, k, func(v bpfSockStats) bool {
		return v.BornNs != old.BornNs && v.Flags&flagReplaced != 0 && v.ClosedNs == 0 && v.RttSamples > 0
	}, "second connection's entry: replaced, open, with samples")
	var mm bpfRttMinmax
	if err := tr.objs.Minmax.Lookup(&k, &mm); err != nil {
		t.Fatalf("second connection's min/max: %v", err)
	}
	if mm.MinUs <= 1 || mm.MaxUs >= 999999 {
		t.Fatalf("second connection's min/max %+v include the first one's", mm)
	}
}
