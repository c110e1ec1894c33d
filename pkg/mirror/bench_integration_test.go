//go:build integration

package mirror

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flowlens/flowlens/test/netnstest"
)

// BenchmarkMirrorOverhead measures TCP throughput between two routed pods
// without mirroring and with the client pod mirrored (both directions),
// alternating in the same run so both see the same machine load. Each
// iteration moves benchBytes client->server once unmirrored and once
// mirrored. The copies go to the capture veth and stop at its peer's drop
// program, with no reader on the peer: this is the mirror's own cost, not
// Suricata's.
func BenchmarkMirrorOverhead(b *testing.B) {
	for _, mech := range []string{MechanismTCX, MechanismTC} {
		b.Run(mech, func(b *testing.B) { benchMirror(b, mech) })
	}
}

const benchBytes = 256 << 20

func benchMirror(b *testing.B, mech string) {
	node := netnstest.NewNodeT(b, netnstest.Config{Name: "mbench", Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	client, server := node.Pod("client"), node.Pod("server")
	srv, err := server.ListenTCP(serverPort)
	if err != nil {
		b.Fatal(err)
	}
	m, err := New(Config{NetnsPath: node.NetnsPath, Mechanism: mech}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	// Packets that reached the capture peer: a mirrored transfer must add
	// some, an unmirrored one none, or the two figures compare nothing.
	peerRx := func() uint64 {
		l, err := m.h.LinkByName(m.cfg.PeerName)
		if err != nil {
			b.Fatal(err)
		}
		return l.Attrs().Statistics.RxPackets
	}
	transfer := func(mirrored bool) time.Duration {
		before := peerRx()
		start := time.Now()
		if _, err := netnstest.SendExactly(client, srv.Addr(), benchBytes, 0); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		// Copies of a transfer's packets are all delivered when its last
		// ACK is; a few more (the FIN's) may trail, so only the sign counts.
		if copied := peerRx() - before; mirrored == (copied == 0) {
			b.Fatalf("mirrored %v, but %d packets reached the capture peer", mirrored, copied)
		}
		return d
	}
	mirrored := []netip.Addr{client.IPv4}
	transfer(false) // warm up: connection set-up paths, page cache of the zero reader
	var base, mir time.Duration
	b.ResetTimer()
	set := func(want []netip.Addr) {
		if err := m.Reconcile(want); err != nil {
			b.Fatal(err)
		}
	}
	// The order alternates so that whatever favours the first or second
	// transfer of a pair (a fresh connection's autotuning, the scheduler)
	// does not favour one side.
	for i := 0; i < b.N; i++ {
		runBase := func() { set(nil); base += transfer(false) }
		runMir := func() { set(mirrored); mir += transfer(true) }
		if i%2 == 0 {
			runBase()
			runMir()
		} else {
			runMir()
			runBase()
		}
	}
	b.StopTimer()
	gbps := func(d time.Duration) float64 { return float64(benchBytes) * 8 * float64(b.N) / d.Seconds() / 1e9 }
	baseG, mirG := gbps(base), gbps(mir)
	b.ReportMetric(baseG, "base-Gbit/s")
	b.ReportMetric(mirG, "mirrored-Gbit/s")
	b.ReportMetric(100*(baseG-mirG)/baseG, "loss-%")
	b.ReportMetric(m.bpfStat(statCopied), "bpf-copies")
}
