//go:build integration

package tcphealth

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BenchmarkTracepointCPU measures what the programs cost per tracepoint
// event: a TCP request/response load between two pods of a node (4
// connections, 64-byte messages) runs for 3 s without the programs and 3
// s with them attached, alternating within each iteration so drift on a
// shared machine hits both alike. CPU is the benchmark process's user +
// system time: the load generator, both TCP ends and the softirqs they
// raise run in its context, hence the programs too (the whole machine's
// /proc/stat is no use on a machine shared with other work). The event
// rate is the programs' own count. The overhead per event is the
// difference in CPU per request divided by the events per request;
// "cpu%-per-100k-ev/s" is what 100k events per second cost, in percent of
// one core. That difference is a few percent of the load's own cost, so a
// last phase measures the programs' run time directly with the kernel's
// BPF statistics (bpf-ns/event; the statistics' own clock reads are not
// in the paired phases).
func BenchmarkTracepointCPU(b *testing.B) {
	tr, err := New(Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	_, pa, pb := newNode(b, false)
	a := listenIn(b, pb.NetnsPath, ":0")
	const conns, size = 4, 64
	var clients []*net.TCPConn
	for range conns {
		c, err := dialFrom(b, pa.NetnsPath, pb.Addr(a.port))
		if err != nil {
			b.Fatal(err)
		}
		clients = append(clients, c)
		go echo(a.accept(b), size)
	}

	const dur = 3 * time.Second
	type sample struct {
		reqs   uint64
		procNs float64
		events uint64
	}
	measure := func() sample {
		b.Helper()
		ev0 := eventCount(b, tr)
		proc0 := processCPUNs(b)
		var reqs atomic.Uint64
		var wg sync.WaitGroup
		errs := make(chan error, conns)
		deadline := time.Now().Add(dur)
		for _, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, size)
				for time.Now().Before(deadline) {
					if _, err := c.Write(buf); err != nil {
						errs <- err
						return
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						errs <- err
						return
					}
					reqs.Add(1)
				}
			}()
		}
		wg.Wait()
		s := sample{reqs: reqs.Load(), procNs: processCPUNs(b) - proc0, events: eventCount(b, tr) - ev0}
		select {
		case err := <-errs:
			b.Fatal(err)
		default:
		}
		return s
	}
	var off, on sample
	add := func(dst *sample, s sample) {
		dst.reqs += s.reqs
		dst.procNs += s.procNs
		dst.events += s.events
	}
	// Attached by New; detach for the first "without".
	if err := tr.detach(); err != nil {
		b.Fatal(err)
	}
	n := 0
	for b.Loop() {
		withRun := func() {
			if err := tr.attach(); err != nil {
				b.Fatal(err)
			}
			add(&on, measure())
			if err := tr.detach(); err != nil {
				b.Fatal(err)
			}
		}
		if n%2 == 0 {
			add(&off, measure())
			withRun()
		} else {
			withRun()
			add(&off, measure())
		}
		n++
	}
	if on.events == 0 || on.reqs == 0 || off.reqs == 0 {
		b.Fatalf("no load measured: with %+v, without %+v", on, off)
	}
	if off.events != 0 {
		b.Fatalf("%d events counted while detached", off.events)
	}
	secs := (dur * time.Duration(n)).Seconds()
	evPerReq := float64(on.events) / float64(on.reqs)
	procOff, procOn := off.procNs/float64(off.reqs), on.procNs/float64(on.reqs)
	b.ReportMetric(float64(off.reqs)/secs, "req/s-without")
	b.ReportMetric(float64(on.reqs)/secs, "req/s-with")
	b.ReportMetric(float64(on.events)/secs, "events/s")
	b.ReportMetric(evPerReq, "events/req")
	b.ReportMetric(procOff, "cpu-ns/req-without")
	b.ReportMetric(procOn, "cpu-ns/req-with")
	b.ReportMetric((procOn-procOff)/evPerReq, "cpu-ns/event")
	// ns of CPU per event * 1e5 events/s = ns of CPU per s; /1e9 * 100 = % of a core.
	b.ReportMetric((procOn-procOff)/evPerReq*1e5/1e7, "cpu%-per-100k-ev/s")

	// The programs' own run time, from the kernel's statistics.
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable bpf statistics: %v", err)
	}
	defer stats.Close()
	if err := tr.attach(); err != nil {
		b.Fatal(err)
	}
	rt0, runs0 := programRuntime(b, tr)
	measure()
	rt1, runs1 := programRuntime(b, tr)
	if runs1 == runs0 {
		b.Fatal("no program run counted by the kernel's statistics")
	}
	perRun := float64(rt1-rt0) / float64(runs1-runs0)
	b.ReportMetric(perRun, "bpf-ns/event")
	b.ReportMetric(perRun*1e5/1e7, "bpf-cpu%-per-100k-ev/s")
}

// programRuntime sums the kernel's run time and run count of the programs.
func programRuntime(b *testing.B, tr *Tracker) (time.Duration, uint64) {
	b.Helper()
	var rt time.Duration
	var runs uint64
	for _, p := range []*ebpf.Program{tr.objs.ThTcpProbe, tr.objs.ThTcpRetransmitSkb, tr.objs.ThTcpRetransmitSynack,
		tr.objs.ThTcpSendReset, tr.objs.ThTcpReceiveReset, tr.objs.ThInetSockSetState} {
		st, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		rt += st.Runtime
		runs += st.RunCount
	}
	return rt, runs
}

// echo answers each size-byte message with one of the same size.
func echo(c *net.TCPConn, size int) {
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// eventCount is the programs' count of tracepoint events so far.
func eventCount(b *testing.B, tr *Tracker) uint64 {
	b.Helper()
	var sum uint64
	for _, slot := range []uint32{statEvProbe, statEvRetrans, statEvRstSent, statEvRstRecv, statEvState} {
		v, err := tr.table.stat(slot)
		if err != nil {
			b.Fatal(err)
		}
		sum += v
	}
	return sum
}

func processCPUNs(b *testing.B) float64 {
	b.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return float64(ru.Utime.Nano() + ru.Stime.Nano())
}
