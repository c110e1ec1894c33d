//go:build integration

package dnsnames

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/test/netnstest"
)

// machineCPU reads /proc/stat's first line: busy and total jiffies of all
// CPUs.
func machineCPU(b *testing.B) (busy, total uint64) {
	b.Helper()
	f, err := os.Open("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		b.Fatalf("/proc/stat: empty: %v", sc.Err())
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 8 || fields[0] != "cpu" {
		b.Fatalf("/proc/stat: unexpected first line %q", sc.Text())
	}
	for i, s := range fields[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat field %d: %v", i, err)
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// processCPU is this process's user+system CPU time (the load generator,
// the DNS server and Run all live in it).
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDNSResponsesCPU drives 10k answered DNS responses/s between two
// pods of a node (a client pod querying a DNS server pod) for dnsBenchDur
// without the program, then with it attached to both pods' interfaces and
// Run storing every answer, alternating within each iteration so drift on
// a shared machine hits both alike. It reports the whole machine's CPU
// (/proc/stat, in cores) and this process's (load generator + DNS server
// + Run) in each phase, their differences, and the program's own run time
// per packet from the kernel's BPF statistics.
func BenchmarkDNSResponsesCPU(b *testing.B) {
	const rate = 10000
	const dnsBenchDur = 3 * time.Second
	node := netnstest.NewNodeT(b, netnstest.Config{Name: "dnsb", Pods: []netnstest.PodSpec{{Name: "dns"}, {Name: "client"}}})
	dnsPod, client := node.Pod("dns"), node.Pod("client")
	startDNSServer(b, dnsPod, zone{"api.example.test.": {{typ: dnsmessage.TypeA, ttl: 30, data: "203.0.113.10"}}})
	// No rate bound in the way: every response is parsed and stored.
	n, err := New(Config{MaxResponsesPerSecond: 10 * rate}, nil)
	if err != nil {
		b.Fatal(err)
	}
	runNames(b, n)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()

	conn, err := client.DialUDP(dnsPod.Addr(53))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	var query []byte
	{
		bld := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
		_ = bld.StartQuestions()
		_ = bld.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("api.example.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
		if query, err = bld.Finish(); err != nil {
			b.Fatal(err)
		}
	}
	var received atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, err := conn.Read(buf); err != nil {
				return
			}
			received.Add(1)
		}
	}()

	type sample struct {
		machineCores, procCores, respPerSec float64
	}
	// drive sends rate queries per second, paced per millisecond.
	drive := func() sample {
		b.Helper()
		busy0, total0 := machineCPU(b)
		proc0 := processCPU(b)
		recv0 := received.Load()
		start := time.Now()
		sent := 0
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for now := start; now.Sub(start) < dnsBenchDur; now = <-tick.C {
			due := int(now.Sub(start).Seconds() * rate)
			for ; sent < due; sent++ {
				if _, err := conn.Write(query); err != nil {
					b.Fatal(err)
				}
			}
		}
		time.Sleep(50 * time.Millisecond) // the last responses
		wall := time.Since(start)
		busy1, total1 := machineCPU(b)
		proc1 := processCPU(b)
		ncpu := float64(len(n.percpu))
		return sample{
			machineCores: float64(busy1-busy0) / float64(total1-total0) * ncpu,
			procCores:    (proc1 - proc0).Seconds() / wall.Seconds(),
			respPerSec:   float64(received.Load()-recv0) / wall.Seconds(),
		}
	}
	ifs := attachAll(b, n, node)
	setAttached := func(on bool) {
		for _, idx := range ifs {
			f := n.Detach
			if on {
				f = n.Attach
			}
			if err := f(idx, node.NetnsPath); err != nil {
				b.Fatal(err)
			}
		}
	}
	setAttached(false)
	drive() // warm-up: sockets, page faults, the server's buffers

	var off, on sample
	add := func(acc *sample, s sample) {
		acc.machineCores += s.machineCores
		acc.procCores += s.procCores
		acc.respPerSec += s.respPerSec
	}
	st0, err := n.objs.DnsToPod.Stats()
	if err != nil {
		b.Fatal(err)
	}
	n.syncStats()
	events0 := value(n.metrics.kernel[statEvents])
	iters := 0
	for b.Loop() {
		if iters%2 == 0 {
			add(&off, drive())
			setAttached(true)
			add(&on, drive())
			setAttached(false)
		} else {
			setAttached(true)
			add(&on, drive())
			setAttached(false)
			add(&off, drive())
		}
		iters++
	}
	st1, err := n.objs.DnsToPod.Stats()
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	n.syncStats()
	k := float64(iters)
	b.ReportMetric(off.respPerSec/k, "resp/s-without")
	b.ReportMetric(on.respPerSec/k, "resp/s-with")
	b.ReportMetric(off.machineCores/k, "machine-cores-without")
	b.ReportMetric(on.machineCores/k, "machine-cores-with")
	b.ReportMetric((on.machineCores-off.machineCores)/k, "machine-cores-added")
	b.ReportMetric(off.procCores/k, "proc-cores-without")
	b.ReportMetric(on.procCores/k, "proc-cores-with")
	b.ReportMetric((on.procCores-off.procCores)/k, "proc-cores-added")
	runs := st1.RunCount - st0.RunCount
	if runs > 0 {
		b.ReportMetric(float64((st1.Runtime-st0.Runtime).Nanoseconds())/float64(runs), "bpf-ns/packet")
	}
	events := value(n.metrics.kernel[statEvents]) - events0
	b.ReportMetric(events/k/dnsBenchDur.Seconds(), "ring-events/s")
	// The program saw and passed up the responses of the attached phases.
	wantEvents := 0.9 * on.respPerSec * dnsBenchDur.Seconds()
	if events < wantEvents {
		b.Fatalf("%v ring events, want at least %v: responses were not passed up", events, wantEvents)
	}
	if lost := value(n.metrics.kernel[statRingFull]) + value(n.metrics.kernel[statRateLimited]); lost != 0 {
		b.Errorf("%v responses lost to the ring or the rate bound at %d/s", lost, rate)
	}
	if got := value(n.metrics.parseErrors); got != 0 {
		b.Errorf("%v parse errors", got)
	}
	if on.respPerSec/k < 0.9*rate {
		b.Logf("only %.0f responses/s reached the client with the program attached (target %d): the machine is loaded", on.respPerSec/k, rate)
	}
}

// BenchmarkTCOverhead measures TCP throughput between two pods of a node
// without the program and with it attached at egress of both pods' host
// interfaces (the data and its ACKs each cross one), alternating within
// each iteration. Every packet runs the program's header checks; none is
// a DNS response.
func BenchmarkTCOverhead(b *testing.B) {
	const bytes = 1 << 30
	node := netnstest.NewNodeT(b, netnstest.Config{Name: "dnstp", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	src, dst := node.Pod("a"), node.Pod("b")
	srv, err := dst.ListenTCP(8080)
	if err != nil {
		b.Fatal(err)
	}
	n, err := New(Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	runNames(b, n)
	ifs := attachAll(b, n, node)
	setAttached := func(on bool) {
		for _, idx := range ifs {
			f := n.Detach
			if on {
				f = n.Attach
			}
			if err := f(idx, node.NetnsPath); err != nil {
				b.Fatal(err)
			}
		}
	}
	transfer := func() time.Duration {
		start := time.Now()
		if _, err := netnstest.SendExactly(src, srv.Addr(), bytes, 0); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	setAttached(false)
	transfer() // warm-up
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	st0, err := n.objs.DnsToPod.Stats()
	if err != nil {
		b.Fatal(err)
	}
	var off, on time.Duration
	iters := 0
	for b.Loop() {
		runOff := func() { setAttached(false); off += transfer() }
		runOn := func() { setAttached(true); on += transfer() }
		if iters%2 == 0 {
			runOff()
			runOn()
		} else {
			runOn()
			runOff()
		}
		iters++
	}
	setAttached(false)
	gbps := func(d time.Duration) float64 { return float64(bytes) * 8 * float64(iters) / d.Seconds() / 1e9 }
	offG, onG := gbps(off), gbps(on)
	b.ReportMetric(offG, "Gbit/s-without")
	b.ReportMetric(onG, "Gbit/s-with")
	b.ReportMetric((offG-onG)/offG*100, "loss-%")
	st1, err := n.objs.DnsToPod.Stats()
	if err != nil {
		b.Fatal(err)
	}
	runs := st1.RunCount - st0.RunCount
	if runs == 0 {
		b.Fatal("the program never ran on the transfer's packets")
	}
	b.ReportMetric(float64((st1.Runtime-st0.Runtime).Nanoseconds())/float64(runs), "bpf-ns/packet")
	// The program ran on the transfer's packets: TCP is not passed up.
	n.syncStats()
	if got := value(n.metrics.kernel[statEvents]); got != 0 {
		b.Errorf("%v ring events from a TCP transfer", got)
	}
}
