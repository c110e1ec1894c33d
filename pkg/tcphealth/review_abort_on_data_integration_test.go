//go:build integration

package tcphealth

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// TestReviewAbortOnDataIsNotAReceivedReset: a server that shut its socket
// down both ways (shutdown(SHUT_RDWR), FIN_WAIT2, still a full socket)
// and then gets more data from the client aborts the connection: the
// kernel calls tcp_reset() on it (which fires tcp_receive_reset although
// no RST arrived) and answers the data with an RST (tcp_send_reset). Only
// the server (the destination) sent a reset; the client sent none.
func TestReviewAbortOnDataIsNotAReceivedReset(t *testing.T) {
	tr := newTestTracker(t)
	node, pa, pb := newNode(t, false)
	a := listenIn(t, pb.NetnsPath, netip.AddrPortFrom(pb.IPv4, 0).String())
	cli, err := dialFrom(t, pa.NetnsPath, netip.AddrPortFrom(pb.IPv4, a.port))
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
	// The client sees the FIN, then sends more: the server aborts.
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
	var sv, cv bpfSockStats
	srvKey, cliKey := sockKey(c.Tuple.Reverse()), sockKey(c.Tuple)
	// The server's reset reaches the client: its next write fails.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := tr.objs.Socks.Lookup(&srvKey, &sv); err == nil && sv.RstSent == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server sent no reset: %+v", sv)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := cli.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("client write after the server's abort: %v, want ECONNRESET or EPIPE", err)
	}
	if err := tr.objs.Socks.Lookup(&cliKey, &cv); err != nil {
		t.Fatal(err)
	}
	t.Logf("server entry: rst_sent %d rst_recv %d; client entry: rst_sent %d rst_recv %d", sv.RstSent, sv.RstRecv, cv.RstSent, cv.RstRecv)
	h := enrichRecord(tr, c, true)
	t.Logf("record: %+v", h)
	if h.FwdResets != 0 || h.RevResets != 1 {
		t.Errorf("resets fwd %d rev %d, want 0 and 1: the client sent no reset", h.FwdResets, h.RevResets)
	}
}
