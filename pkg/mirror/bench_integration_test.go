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
	transfer := func() time.Duration {
		start := time.Now()
		if _, err := netnstest.SendExactly(client, srv.Addr(), benchBytes, 0); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	mirrored := []netip.Addr{client.IPv4}
	transfer() // warm up: connection set-up paths, page cache of the zero reader
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
		runBase := func() { set(nil); base += transfer() }
		runMir := func() { set(mirrored); mir += transfer() }
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
