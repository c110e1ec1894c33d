//go:build integration

package tcphealth

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// TestUnsureResetsInKernel checks, on the real programs and both address
// families, the two cases of tcp_receive_reset in a state where the stack
// aborts on data itself:
//   - abort on data: the server shut down both ways gets more data; its
//     tcp_reset() call is cancelled by its own reset (flag cleared, no
//     reset received), while the client, in CLOSE_WAIT, receives that
//     reset (unsure, left set: a real one);
//   - a real RST in FIN_WAIT2: the client aborts (SO_LINGER 0) a
//     connection whose server shut down both ways; the server's flag stays.
//
// A record after the settle time then counts exactly one reset per
// direction that had one.
func TestUnsureResetsInKernel(t *testing.T) {
	tr := newTestTracker(t)
	node, pa, pb := newNode(t, true)
	for _, fam := range []struct {
		name     string
		cli, srv netip.Addr
	}{{"ipv4", pa.IPv4, pb.IPv4}, {"ipv6", pa.IPv6, pb.IPv6}} {
		t.Run(fam.name+"/abort on data", func(t *testing.T) {
			a := listenIn(t, pb.NetnsPath, netip.AddrPortFrom(fam.srv, 0).String())
			cli, err := dialFrom(t, pa.NetnsPath, netip.AddrPortFrom(fam.srv, a.port))
			if err != nil {
				t.Fatal(err)
			}
			srv := a.accept(t)
			exchange(t, cli, srv, 1, 10)
			if err := srv.CloseRead(); err != nil {
				t.Fatal(err)
			}
			if err := srv.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if err := cli.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
				t.Fatal(err)
			}
			if n, err := cli.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("client read after the server's FIN: %d, %v, want EOF", n, err)
			}
			if _, err := cli.Write([]byte("more")); err != nil {
				t.Fatal(err)
			}
			c := ctConn(t, node, addrPort(cli.LocalAddr()))
			waitEntry(t, tr, sockKey(c.Tuple.Reverse()), func(v bpfSockStats) bool {
				return v.RstSent == 1 && v.RstRecv == 0 && v.Flags&flagRstUnsure == 0 && v.ClosedNs != 0
			}, "server: one reset sent, none received, the unsure one cancelled, closed")
			waitEntry(t, tr, sockKey(c.Tuple), func(v bpfSockStats) bool {
				return v.RstSent == 0 && v.RstRecv == 0 && v.Flags&flagRstUnsure != 0 && v.ClosedNs != 0
			}, "client: the reset received in CLOSE_WAIT left unsure, closed")
			if _, err := cli.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Fatalf("client write after the server's abort: %v, want ECONNRESET or EPIPE", err)
			}
			time.Sleep(resetSettle + 100*time.Millisecond)
			h := enrichRecord(tr, c, false)
			t.Logf("record: %+v", h)
			if h.FwdResets != 0 || h.RevResets != 1 {
				t.Errorf("resets fwd %d rev %d, want 0 and 1", h.FwdResets, h.RevResets)
			}
			if h := enrichRecord(tr, c, true); h.FwdResets+h.RevResets != 0 {
				t.Errorf("last record: resets fwd %d rev %d, want none again", h.FwdResets, h.RevResets)
			}
		})
		t.Run(fam.name+"/rst in FIN_WAIT2", func(t *testing.T) {
			a := listenIn(t, pb.NetnsPath, netip.AddrPortFrom(fam.srv, 0).String())
			cli, err := dialFrom(t, pa.NetnsPath, netip.AddrPortFrom(fam.srv, a.port))
			if err != nil {
				t.Fatal(err)
			}
			srv := a.accept(t)
			exchange(t, cli, srv, 1, 10)
			if err := srv.CloseRead(); err != nil {
				t.Fatal(err)
			}
			if err := srv.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if err := cli.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
				t.Fatal(err)
			}
			if n, err := cli.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("client read after the server's FIN: %d, %v, want EOF", n, err)
			}
			c := ctConn(t, node, addrPort(cli.LocalAddr()))
			if err := cli.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			cli.Close()
			waitEntry(t, tr, sockKey(c.Tuple), func(v bpfSockStats) bool { return v.RstSent == 1 },
				"client: one reset sent")
			waitEntry(t, tr, sockKey(c.Tuple.Reverse()), func(v bpfSockStats) bool {
				return v.RstSent == 0 && v.RstRecv == 0 && v.Flags&flagRstUnsure != 0 && v.ClosedNs != 0
			}, "server: the reset received in FIN_WAIT2 left unsure, closed")
			time.Sleep(resetSettle + 100*time.Millisecond)
			h := enrichRecord(tr, c, true)
			t.Logf("record: %+v", h)
			if h.FwdResets != 1 || h.RevResets != 0 {
				t.Errorf("resets fwd %d rev %d, want 1 and 0", h.FwdResets, h.RevResets)
			}
		})
	}
}

// waitEntry waits up to 5 s for the socket entry of k to satisfy ok (the
// segments cross the veth pair asynchronously).
func waitEntry(t testing.TB, tr *Tracker, k bpfSockKey, ok func(bpfSockStats) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var v bpfSockStats
	for {
		err := tr.objs.Socks.Lookup(&k, &v)
		if err == nil && ok(v) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry %s %+v (%v): want %s", keyTuple(&k), v, err, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
