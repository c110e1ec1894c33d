//go:build integration

package bpfcounters

import (
	"io"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/podlinks"
	"github.com/flowlens/flowlens/test/netnstest"
)

// BenchmarkTCOverhead measures TCP throughput between two pods of a node
// (pod -> host veth -> routing -> host veth -> pod) without the counters,
// then with them attached to both host veths, alternating within each
// iteration so drift on a shared machine hits both alike.
func BenchmarkTCOverhead(b *testing.B) {
	node := netnstest.NewNodeT(b, netnstest.Config{Name: "bpfb", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	src, dst := node.Pod("a"), node.Pod("b")
	srv, err := dst.ListenTCP(8080)
	if err != nil {
		b.Fatal(err)
	}
	c, err := New(Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var ifs []int
	for _, p := range []*netnstest.Pod{src, dst} {
		idx, _, err := podlinks.HostLink(node.NetnsPath, p.IPv4)
		if err != nil {
			b.Fatal(err)
		}
		ifs = append(ifs, idx)
	}
	const dur = 2 * time.Second
	measure := func() float64 {
		b.Helper()
		before := srv.Stats().BytesIn
		conn, err := src.DialTCP(dst.Addr(srv.Port()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		buf := make([]byte, 1<<20)
		// The exchange header: ask for no reply.
		if _, err := conn.Write(buf[:8]); err != nil {
			b.Fatal(err)
		}
		for time.Since(start) < dur {
			if _, err := conn.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := conn.CloseWrite(); err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, conn); err != nil { // the server's close: all was read
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		got := srv.Stats().BytesIn - before
		return float64(got) * 8 / elapsed.Seconds() / 1e9
	}
	var off, on float64
	n := 0
	attach := func(on bool) {
		for _, idx := range ifs {
			f := c.Detach
			if on {
				f = c.Attach
			}
			if err := f(idx, node.NetnsPath); err != nil {
				b.Fatal(err)
			}
		}
	}
	for b.Loop() {
		// Alternate which goes first, so warm-up and drift do not favour one.
		if n%2 == 0 {
			off += measure()
			attach(true)
			on += measure()
			attach(false)
		} else {
			attach(true)
			on += measure()
			attach(false)
			off += measure()
		}
		n++
	}
	off, on = off/float64(n), on/float64(n)
	b.ReportMetric(off, "Gbit/s-without")
	b.ReportMetric(on, "Gbit/s-with")
	b.ReportMetric((off-on)/off*100, "loss-%")
	// The counters did count the benchmark's traffic.
	var views int
	if err := c.ReadChanged(func(_ flow.Tuple, _ bool) { views++ }); err != nil {
		b.Fatal(err)
	}
	if views == 0 {
		b.Fatal("no views counted while attached")
	}
}
