//go:build integration

package packetdrops

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/test/netnstest"
)

// BenchmarkDropsCPU measures CPU while ~100k packets/s are dropped by an
// nft rule between two pods (each drop one kfree_skb tracepoint event),
// without the program and with it attached (default Config: events over
// the per-CPU bound are only counted in the kernel).
//
// Three figures: the whole machine's busy CPU (/proc/stat), this
// process's (the flood's sender with the kernel work done in its system
// calls, and the ring reader), and the program's own run time per event
// as the kernel accounts it (BPF run-time stats). The first two are
// measured in short phases in pairs, the order alternating, and the cost
// is the median of the per-pair differences: on a shared machine the
// other load moves both phases of a pair alike more than it moves long
// phases apart. The machine figure still carries that other load.
func BenchmarkDropsCPU(b *testing.B) {
	const (
		rate              = 100_000 // drops/s asked of the generator
		phase             = time.Second
		pairsPerIteration = 4
	)
	node := netnstest.NewNodeT(b, netnstest.Config{Name: "pdbench", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	pa, pb := node.Pod("a"), node.Pod("b")
	nft(b, node, fmt.Sprintf(`table inet %[1]s {
	counter c {}
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip saddr %[2]s udp dport 9996 counter name c drop
	}
}
`, nftTestTable, pa.IPv4))
	c, err := pa.DialUDP(pb.Addr(9996))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	d, reg, _ := startDrops(b, Config{}, nil)
	attached := true
	setAttached := func(on bool) {
		if on == attached {
			return
		}
		if on {
			l, err := link.AttachTracing(link.TracingOptions{Program: d.objs.KfreeSkbDrop, AttachType: ebpf.AttachTraceRawTp})
			if err != nil {
				b.Fatal(err)
			}
			d.lnk = l
		} else if err := d.lnk.Close(); err != nil {
			b.Fatal(err)
		}
		attached = on
	}
	ncpu := float64(len(d.percpu))
	// measure floods for one phase: machine and process CPU in cores,
	// and the drops per second the rule counted.
	measure := func() (machine, self, dropsPerSec float64) {
		b.Helper()
		before := nftCounter(b, node, "c")
		busy0, total0 := procStat(b)
		self0 := selfCPU(b)
		start := time.Now()
		flood(b, c, phase, rate)
		busy1, total1 := procStat(b)
		self1 := selfCPU(b)
		elapsed := time.Since(start)
		dropped := nftCounter(b, node, "c") - before
		return float64(busy1-busy0) / float64(total1-total0) * ncpu,
			(self1 - self0).Seconds() / elapsed.Seconds(),
			float64(dropped) / elapsed.Seconds()
	}
	// Counted while this handle is open only.
	st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF run-time stats: %v", err)
	}
	defer st.Close()
	ps0, err := d.objs.KfreeSkbDrop.Stats()
	if err != nil {
		b.Fatal(err)
	}
	var machineDiff, selfDiff []float64
	var sum [3][2]float64 // machine, self, rate; [without, with]
	pairs := 0
	for b.Loop() {
		for range pairsPerIteration {
			var m, s, r [2]float64
			first := pairs % 2
			for _, with := range []int{first, 1 - first} {
				setAttached(with == 1)
				m[with], s[with], r[with] = measure()
			}
			per100k := r[1] / 100_000
			machineDiff = append(machineDiff, (m[1]-m[0])/per100k)
			selfDiff = append(selfDiff, (s[1]-s[0])/per100k)
			for i, v := range [][2]float64{m, s, r} {
				sum[i][0] += v[0]
				sum[i][1] += v[1]
			}
			pairs++
		}
	}
	setAttached(true)
	ps1, err := d.objs.KfreeSkbDrop.Stats()
	if err != nil {
		b.Fatal(err)
	}
	if runs := ps1.RunCount - ps0.RunCount; runs > 0 {
		perEvent := float64(ps1.Runtime-ps0.Runtime) / float64(runs)
		b.ReportMetric(perEvent, "bpf-ns/event")
		// One core's share at 100k events/s: ns/event * 1e5 / 1e9, in %.
		b.ReportMetric(perEvent*1e5/1e9*100, "bpf-%core-per-100k-events/s")
	}
	np := float64(pairs)
	b.ReportMetric(sum[0][0]/np*100, "machine-%core-without")
	b.ReportMetric(sum[0][1]/np*100, "machine-%core-with")
	b.ReportMetric(median(machineDiff)*100, "machine-%core-per-100k-events/s")
	b.ReportMetric(sum[1][0]/np*100, "proc-%core-without")
	b.ReportMetric(sum[1][1]/np*100, "proc-%core-with")
	b.ReportMetric(median(selfDiff)*100, "proc-%core-per-100k-events/s")
	b.ReportMetric(sum[2][0]/np, "drops/s-without")
	b.ReportMetric(sum[2][1]/np, "drops/s-with")
	if sum[0][0]/np > 0.9*ncpu {
		b.Logf("the machine was saturated without the program (%.0f%% of %v cores busy): its figures cannot show the cost; see bpf-ns/event", sum[0][0]/np/ncpu*100, ncpu)
	}
	b.Logf("per-pair differences, %%core per 100k events/s: machine %v, process %v", scaled(machineDiff), scaled(selfDiff))
	// The program did see the flood while attached.
	time.Sleep(1500 * time.Millisecond)
	if got, want := metric(b, reg, "flowlens_packetdrops_total", "NETFILTER_DROP"), sum[2][1]*phase.Seconds()*0.9; got < want {
		b.Fatalf("flowlens_packetdrops_total{NETFILTER_DROP} = %v, want at least %v", got, want)
	}
}

// flood sends small datagrams on c at about rate per second for dur.
func flood(b *testing.B, c *net.UDPConn, dur time.Duration, rate float64) {
	buf := make([]byte, 16)
	start := time.Now()
	sent := 0
	for {
		el := time.Since(start)
		if el >= dur {
			return
		}
		for want := int(el.Seconds() * rate); sent < want; sent++ {
			if _, err := c.Write(buf); err != nil {
				b.Fatalf("flood: %v", err)
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// procStat returns the machine's busy and total CPU time (jiffies, all
// CPUs) from /proc/stat.
func procStat(b *testing.B) (busy, total uint64) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[0] != "cpu" {
			continue
		}
		// user nice system idle iowait irq softirq steal (guest time is
		// already in user).
		for i, s := range fields[1:] {
			if i >= 8 {
				break
			}
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += v
			if i != 3 && i != 4 {
				busy += v
			}
		}
		return busy, total
	}
	b.Fatal("no cpu line in /proc/stat")
	return 0, 0
}

// selfCPU is this process's user and system CPU time so far.
func selfCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func scaled(v []float64) []string {
	out := make([]string, len(v))
	for i, x := range v {
		out[i] = strconv.FormatFloat(x*100, 'f', 1, 64)
	}
	return out
}
