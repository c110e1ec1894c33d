//go:build integration

package bpfcounters

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// REVIEW: a UDP datagram larger than the MTU leaves the pod in fragments.
// Conntrack reassembles it and counts it once with its full length; the
// program counts the first fragment under the connection's ports and the
// others under ports 0, a key no connection owns. Fill reports the
// connection seen and not lossy with a fraction of its bytes, so the agent
// exports the fraction: bytes lost with nothing counted as lost.
func TestReviewFragmentedUDPIsUndercountedSilently(t *testing.T) {
	e := newEnv(t, Config{}, false)
	if _, err := e.server.ListenUDP(5353); err != nil {
		t.Fatal(err)
	}
	c, err := e.client.DialUDP(e.server.Addr(5353))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := make([]byte, 8000)
	binary.BigEndian.PutUint32(out, 0) // no reply wanted
	for range 3 {
		if _, err := c.Write(out); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	local := localOf(t, c.LocalAddr().String())
	ct, ok := e.ctConn(t, flow.ProtoUDP, local)
	if !ok {
		t.Fatalf("no conntrack entry for %s", local)
	}
	filled := ct
	res, err := e.c.Fill(&filled)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("conntrack fwd %+v; eBPF seen %v lossy %v fwd %+v; fragments counted %v",
		ct.Fwd, res.Seen, res.Lossy, filled.Fwd, counterValue(e.c.metrics.kernel[statFragment]))
	if res.Seen && !res.Lossy && filled.Fwd != ct.Fwd {
		t.Errorf("Fill reports fwd %+v as complete (seen, not lossy); conntrack counted %+v", filled.Fwd, ct.Fwd)
	}
}

func localOf(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
