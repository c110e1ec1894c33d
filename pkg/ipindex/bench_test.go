package ipindex

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

const (
	benchPods     = 10000
	benchServices = 1000
	benchNodes    = 100
)

func benchPodIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
}

func benchSvcIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
}

// buildBenchIndex fills an index the size of a mid-sized cluster: 10,000
// pods over 100 nodes, 1,000 Services with two ports each and 10 endpoints
// per Service.
func buildBenchIndex(b *testing.B) *Index {
	b.Helper()
	x, err := New(Config{LocalNode: "node-0", GracePeriod: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	for n := 0; n < benchNodes; n++ {
		x.SetHost(fmt.Sprintf("node/node-%d", n), fmt.Sprintf("node-%d", n),
			[]netip.Addr{netip.AddrFrom4([4]byte{172, 18, 0, byte(n)})})
	}
	for i := 0; i < benchPods; i++ {
		p := &Pod{
			Name: fmt.Sprintf("app-%d-7d9c5-%05d", i/10, i), Namespace: fmt.Sprintf("ns-%d", i%50),
			Node: fmt.Sprintf("node-%d", i%benchNodes), Labels: fmt.Sprintf(`{"app":"app-%d","pod-template-hash":"7d9c5"}`, i/10),
			OwnerKind: "ReplicaSet", OwnerName: fmt.Sprintf("app-%d-7d9c5", i/10),
		}
		if err := x.SetPod(fmt.Sprintf("uid-%d", i), []netip.Addr{benchPodIP(i)}, time.Time{}, p); err != nil {
			b.Fatal(err)
		}
	}
	for s := 0; s < benchServices; s++ {
		ns, name := fmt.Sprintf("ns-%d", s%50), fmt.Sprintf("svc-%d", s)
		x.SetService(ns+"/"+name, []netip.Addr{benchSvcIP(s)}, []ServicePort{
			{Port: 80, Proto: flow.ProtoTCP, Name: ns + "/" + name + ":http"},
			{Port: 9090, Proto: flow.ProtoTCP, Name: ns + "/" + name + ":metrics"},
		})
		var eps []EndpointPort
		for e := 0; e < 10; e++ {
			eps = append(eps, EndpointPort{IP: benchPodIP(s*10 + e), Port: 8080, Proto: flow.ProtoTCP, Name: ns + "/" + name + ":http"})
		}
		x.SetEndpoints(ns+"/"+name+"-abcde", eps)
	}
	return x
}

// benchRecords is a mix: ClusterIP connections between pods, pod to
// external, node to pod.
func benchRecords() []flow.Record {
	rs := make([]flow.Record, 1024)
	now := time.Now().UnixNano()
	for i := range rs {
		src := benchPodIP((i * 7919) % benchPods)
		dst := benchPodIP((i * 104729) % benchPods)
		t := flow.NewTuple(src, dst, uint16(30000+i), 8080, flow.ProtoTCP)
		c := flow.Conn{Tuple: t, OrigDstIP: t.DstIP, OrigDstPort: 8080, StartNanos: now}
		switch i % 4 {
		case 0, 1:
			c.OrigDstIP, c.OrigDstPort = benchSvcIP(i%benchServices).As16(), 80
		case 2:
			c.Tuple.DstIP = netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}).As16()
			c.OrigDstIP = c.Tuple.DstIP
		case 3:
			c.Tuple.SrcIP = netip.AddrFrom4([4]byte{172, 18, 0, byte(i % benchNodes)}).As16()
		}
		rs[i] = flow.Record{Conn: c}
	}
	return rs
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// perOp is how many lookups one benchmark iteration makes, so the figures
// mean something even under `make bench`'s -benchtime 1x.
const perOp = 16 * 1024

// baselineNs times two plain map lookups by 16-byte key per record, the
// least any IP-keyed lookup can cost, over the same records.
func baselineNs(rs []flow.Record) float64 {
	plain := make(map[[16]byte]*Pod, benchPods)
	for i := 0; i < benchPods; i++ {
		plain[benchPodIP(i).As16()] = &Pod{}
	}
	var sink int
	const n = 1 << 20
	start := time.Now()
	for i := 0; i < n; i++ {
		r := &rs[i&1023]
		if plain[r.Tuple.SrcIP] != nil {
			sink++
		}
		if plain[r.Tuple.DstIP] != nil {
			sink++
		}
	}
	runtime.KeepAlive(sink)
	return float64(time.Since(start).Nanoseconds()) / n
}

func reportPerLookup(b *testing.B, baseline float64, unit string) {
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N*perOp)
	b.ReportMetric(ns, "ns/"+unit)
	b.ReportMetric(1e9/ns, unit+"/s")
	b.ReportMetric(baseline, "baseline-2maplookups-ns")
}

// BenchmarkEnrich measures full enrichments (both ends, Service, flow type)
// on a 10,000-pod / 1,000-Service index, perOp per iteration (allocs/op is
// per perOp enrichments), against baselineNs. It also reports the index's
// heap size.
func BenchmarkEnrich(b *testing.B) {
	before := heapInUse()
	x := buildBenchIndex(b)
	after := heapInUse()
	rs := benchRecords()
	baseline := baselineNs(rs)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < perOp; j++ {
			x.Enrich(&rs[j&1023])
		}
	}
	b.StopTimer()
	reportPerLookup(b, baseline, "enrich")
	b.ReportMetric(float64(after-before)/(1<<20), "index-MiB")
	runtime.KeepAlive(x)
}

// BenchmarkEnrichParallel is BenchmarkEnrich from every core at once: what
// the shared read lock costs under contention.
func BenchmarkEnrichParallel(b *testing.B) {
	x := buildBenchIndex(b)
	baseline := baselineNs(benchRecords())
	// Enrich writes into its record, so each goroutine gets its own set,
	// made before the timer starts.
	sets := make([][]flow.Record, 4*runtime.GOMAXPROCS(0))
	for i := range sets {
		sets[i] = benchRecords()
	}
	var next atomic.Int32
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rs := sets[int(next.Add(1)-1)%len(sets)]
		for pb.Next() {
			for j := 0; j < perOp; j++ {
				x.Enrich(&rs[j&1023])
			}
		}
	})
	b.StopTimer()
	reportPerLookup(b, baseline, "enrich")
}

// BenchmarkL7Want measures the L7 policy query on the same index.
func BenchmarkL7Want(b *testing.B) {
	x := buildBenchIndex(b)
	x.SetNamespaceL7("ns-3", L7Both)
	rs := benchRecords()
	baseline := baselineNs(rs)
	var sink int
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < perOp; j++ {
			if x.L7Want(&rs[j&1023].Conn).Any() {
				sink++
			}
		}
	}
	b.StopTimer()
	reportPerLookup(b, baseline, "l7want")
	if sink == 0 {
		b.Fatal("no connection wanted L7: the benchmark measures nothing")
	}
}
