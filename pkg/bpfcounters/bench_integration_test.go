//go:build integration

package bpfcounters

import (
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/podlinks"
	"github.com/flowlens/flowlens/test/netnstest"
)

// BenchmarkTCOverhead measures TCP throughput between two pods of a node
// (pod -> host veth -> routing -> host veth -> pod) without the counters,
// then with them attached to both host veths. Each iteration is a pair of
// short runs, in alternating order so that warm-up and drift do not favour
// one side; a shared two-core machine moves a single run by several per
// cent, so the loss is given as the median of the pairs' losses (robust to
// a run that a neighbour slowed), beside the loss of the means.
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
	const dur = 1500 * time.Millisecond
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
	var losses []float64
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
	pair := func() {
		var without, with float64
		if len(losses)%2 == 0 {
			without = measure()
			attach(true)
			with = measure()
			attach(false)
		} else {
			attach(true)
			with = measure()
			attach(false)
			without = measure()
		}
		off += without
		on += with
		losses = append(losses, (without-with)/without*100)
	}
	// Several pairs per iteration: make bench runs 3 iterations.
	const pairsPerIteration = 4
	for b.Loop() {
		for range pairsPerIteration {
			pair()
		}
	}
	// The programs' own run time (the kernel's BPF statistics) against
	// the machine's busy CPU time, in one more run with them: what share
	// of the transfer's CPU they take, a figure that does not move with
	// the throughput's noise. Gathering the statistics costs two clock
	// reads per program run, so it is not on during the pairs.
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	attach(true)
	p0, c0 := progRuntime(b, c), busyCPU(b)
	measure()
	progTime, busyTime := progRuntime(b, c)-p0, busyCPU(b)-c0
	attach(false)
	stats.Close()
	n := float64(len(losses))
	off, on = off/n, on/n
	slices.Sort(losses)
	median := losses[len(losses)/2]
	if len(losses)%2 == 0 {
		median = (losses[len(losses)/2-1] + median) / 2
	}
	b.ReportMetric(off, "Gbit/s-without")
	b.ReportMetric(on, "Gbit/s-with")
	b.ReportMetric(median, "loss-%")
	b.ReportMetric((off-on)/off*100, "loss-of-means-%")
	progShare := float64(progTime) / float64(busyTime) * 100
	b.ReportMetric(progShare, "prog-cpu-%")
	b.Logf("%d pairs: loss median %.2f %%, of the means %.2f %% (target < 5 %%); the programs ran %s of %s busy CPU (%.2f %%); pair losses %.1f",
		len(losses), median, (off-on)/off*100, progTime.Round(time.Millisecond), busyTime.Round(time.Millisecond), progShare, losses)
	// The counters did count the benchmark's traffic.
	var views int
	if err := c.ReadChanged(func(_ flow.Tuple, _ bool) { views++ }); err != nil {
		b.Fatal(err)
	}
	if views == 0 {
		b.Fatal("no views counted while attached")
	}
}

// progRuntime is the programs' accumulated run time (BPF statistics).
func progRuntime(b *testing.B, c *Counters) time.Duration {
	b.Helper()
	var sum time.Duration
	for _, p := range []*ebpf.Program{c.objs.FlowFromPod, c.objs.FlowToPod} {
		st, err := p.Stats()
		if err != nil {
			b.Fatalf("program statistics: %v", err)
		}
		sum += st.Runtime
	}
	return sum
}

// busyCPU is the time all CPUs spent not idle (user, system, interrupts;
// not steal) since boot, from /proc/stat.
func busyCPU(b *testing.B) time.Duration {
	b.Helper()
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		b.Fatalf("/proc/stat first line %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system irq softirq
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat field %d %q: %v", i, f[i], err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}
