package correlate

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/flow"
)

func benchHalves(n int) (src, dst []Input) {
	src, dst = make([]Input, n), make([]Input, n)
	for i := range n {
		s, d := srcHalf(flow.EndOfFlow), dstHalf(flow.EndOfFlow)
		tup := flow.NewTuple(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), netip.MustParseAddr("10.200.0.1"), uint16(i), 8080, flow.ProtoTCP)
		s.Record.Tuple, d.Record.Tuple = tup, tup
		s.Record.Source.PodName = "client-" + string(rune('a'+i%26))
		s.Record.L7.HTTPVals = `{"0":"GET /"}`
		src[i], dst[i] = s, d
	}
	return src, dst
}

// BenchmarkPendingCorrelationMemory measures the heap one inter-node half
// holds while it waits for its peer. Baseline: the flow.Record it carries
// (the floor any design must pay) and a plain map of records.
func BenchmarkPendingCorrelationMemory(b *testing.B) {
	const n = 100_000
	src, _ := benchHalves(n)
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	b.Run("baseline=map[Tuple]flow.Record", func(b *testing.B) {
		for range b.N {
			before := heap()
			m := make(map[flow.Tuple]flow.Record)
			for i := range src {
				m[src[i].Record.Tuple] = src[i].Record
			}
			after := heap()
			b.ReportMetric(float64(after-before)/n, "bytes/pending")
			b.ReportMetric(float64(unsafe.Sizeof(flow.Record{})), "bytes/flow.Record")
			runtime.KeepAlive(m)
		}
	})
	b.Run("correlator", func(b *testing.B) {
		for range b.N {
			before := heap()
			c, _ := New(Config{CorrelationWait: time.Hour}, nil)
			for i := range src {
				c.Add(&src[i], t0, func(*Record) {})
			}
			after := heap()
			if c.Len() != n {
				b.Fatalf("pending = %d, want %d", c.Len(), n)
			}
			b.ReportMetric(float64(after-before)/n, "bytes/pending")
			runtime.KeepAlive(c)
		}
	})
}

// BenchmarkCorrelateHalves is the correlator's throughput merging pairs.
// Baseline: only inserting and deleting the tuples in a map.
func BenchmarkCorrelateHalves(b *testing.B) {
	const n = 100_000
	src, dst := benchHalves(n)
	b.Run("baseline=map-insert-delete", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			m := make(map[flow.Tuple]*flow.Record)
			start := time.Now()
			for i := range src {
				m[src[i].Record.Tuple] = &src[i].Record
			}
			for i := range dst {
				delete(m, dst[i].Record.Tuple)
			}
			b.ReportMetric(float64(2*n)/time.Since(start).Seconds(), "records/s")
		}
	})
	b.Run("correlator", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			c, _ := New(Config{}, nil)
			out := 0
			emit := func(*Record) { out++ }
			start := time.Now()
			for i := range src {
				c.Add(&src[i], t0, emit)
			}
			for i := range dst {
				c.Add(&dst[i], t0, emit)
			}
			c.Expire(t0, emit)
			el := time.Since(start)
			if out != n {
				b.Fatalf("exported %d, want %d", out, n)
			}
			b.ReportMetric(float64(2*n)/el.Seconds(), "records/s")
		}
	})
}
