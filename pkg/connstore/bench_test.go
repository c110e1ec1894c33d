package connstore

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
)

// synthConn returns the i-th of a set of distinct DNATed connections, the
// costlier kind: it is indexed twice (tuple and client-side VIP tuple).
func synthConn(i int) flow.Conn {
	var src, dst, orig [16]byte
	src[10], src[11] = 0xff, 0xff
	dst, orig = src, src
	binary.BigEndian.PutUint32(src[12:], 0x0a000000|uint32(i>>8)) // 10.x.y.z
	binary.BigEndian.PutUint32(dst[12:], 0x0a800000|uint32(i%251))
	binary.BigEndian.PutUint32(orig[12:], 0x0a600000|uint32(i%97))
	return flow.Conn{
		Tuple:       flow.Tuple{SrcIP: src, DstIP: dst, SrcPort: uint16(30000 + i&0xff), DstPort: 8080, Proto: flow.ProtoTCP},
		OrigDstIP:   orig,
		OrigDstPort: 80,
		ID:          uint32(i + 1),
		Fwd:         flow.Counters{Packets: 1, Bytes: 100},
		Rev:         flow.Counters{Packets: 1, Bytes: 100},
	}
}

func newBenchStore(tb testing.TB, n int, emit func(*flow.Record)) (*Store, *expirequeue.Queue) {
	tb.Helper()
	q, err := expirequeue.New(expirequeue.Config{}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := New(Config{MaxConnections: n, Scheduler: q, Emit: emit}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { release(tb, s, q) })
	return s, q
}

// release gives back the memory a store and its queue hold outside the Go
// heap; releasing twice does nothing.
func release(tb testing.TB, s *Store, q *expirequeue.Queue) {
	tb.Helper()
	if err := s.Release(); err != nil {
		tb.Error(err)
	}
	if err := q.Release(); err != nil {
		tb.Error(err)
	}
}

func TestUpsertExistingDoesNotAllocate(t *testing.T) {
	s, _ := newBenchStore(t, 1000, func(*flow.Record) {})
	conns := make([]flow.Conn, 1000)
	for i := range conns {
		conns[i] = synthConn(i)
		s.Upsert(&conns[i], t0)
	}
	i := 0
	allocs := testing.AllocsPerRun(10_000, func() {
		c := &conns[i%len(conns)]
		c.Fwd.Packets++
		c.Fwd.Bytes += 100
		s.Upsert(c, t0.Add(time.Duration(i)))
		i++
	})
	if allocs != 0 {
		t.Fatalf("Upsert of an existing connection allocates %.1f times, want 0", allocs)
	}
}

// BenchmarkStoreUpsertExisting updates every connection of a 100k store
// once per op, as one dump does; allocs/op is therefore per 100k updates.
// Baseline: assigning the same Conns into a plain map[flow.Tuple]flow.Conn of
// the same size.
func BenchmarkStoreUpsertExisting(b *testing.B) {
	const n = 100_000
	s, _ := newBenchStore(b, n, func(*flow.Record) {})
	conns := make([]flow.Conn, n)
	base := make(map[flow.Tuple]flow.Conn, n)
	for i := range conns {
		conns[i] = synthConn(i)
		s.Upsert(&conns[i], t0)
		base[conns[i].Tuple] = conns[i]
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		for j := range conns {
			c := &conns[j]
			c.Fwd.Packets++
			s.Upsert(c, now)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(n*b.N), "ns/upsert")

	start = time.Now()
	for i := 0; i < b.N; i++ {
		for j := range conns {
			c := &conns[j]
			c.Fwd.Packets++
			base[c.Tuple] = *c
		}
	}
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(n*b.N), "baseline-map-ns/upsert")
}

// BenchmarkDrain100k times one Expire over 100k due connections (no per-call
// cap), each producing a record, into a sink that takes everything: the
// store's and queue's share of a backlog only. Whether a backlog reaches a
// collector without loss, through the real exporter and its bounded buffer,
// is test/agentbench's BenchmarkIdleTable (1M first records at start-up,
// dropped counted) and pkg/agent's TestStartupBacklogReachesASlowCollector.
// Baseline: ranging over a plain map[flow.Tuple]flow.Conn of 100k and
// building the same record.
func BenchmarkDrain100k(b *testing.B) {
	const n = 100_000
	for _, kind := range []string{"active", "closed"} {
		b.Run(kind, func(b *testing.B) {
			var emitted int
			emit := func(*flow.Record) { emitted++ }
			var elapsed time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				s, q := newBenchStore(b, n, emit)
				for j := 0; j < n; j++ {
					c := synthConn(j)
					s.Upsert(&c, t0)
					if kind == "closed" {
						s.Close(&c, t0)
					}
				}
				emitted = 0
				b.StartTimer()
				start := time.Now()
				if _, err := q.Expire(t0.Add(expirequeue.DefaultActiveTimeout), s, taking(emit)); err != nil {
					b.Fatal(err)
				}
				elapsed += time.Since(start)
				b.StopTimer()
				if emitted != n {
					b.Fatalf("drained %d records, want %d", emitted, n)
				}
				release(b, s, q)
			}
			b.ReportMetric(float64(n*b.N)/elapsed.Seconds(), "records/s")

			m := make(map[flow.Tuple]flow.Conn, n)
			for j := 0; j < n; j++ {
				c := synthConn(j)
				m[c.Tuple] = c
			}
			runtime.GC() // the stores built above must not be collected in the timed loop
			var rec flow.Record
			start := time.Now()
			for i := 0; i < b.N; i++ {
				for _, c := range m {
					rec = flow.Record{Conn: c, EndReason: flow.EndActiveTimeout}
					emit(&rec)
				}
			}
			b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "baseline-map-range-records/s")
		})
	}
}

// synthMixed is synthConn with only every third connection DNATed, the
// mix of test/agentbench's idle table.
func synthMixed(i int) flow.Conn {
	c := synthConn(i)
	if i%3 != 0 {
		c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort
	}
	return c
}

// BenchmarkMemoryPerConnection measures the resident memory (RSS, Go heap
// and mappings) a store and its queue add for n connections: all DNATed
// (each indexed twice, with an ext slot), or one in three as in
// test/agentbench's idle table. "bytes/conn" is the store just filled,
// every connection with a deadline and its first record pending;
// "idle-bytes/conn" after every connection was exported as idle (the
// idle-table scenario: no deadline, no base counters kept). "heap-bytes/
// conn" is the Go heap's part of the former, which the garbage collector's
// heap goal multiplies. Only the store's share: the agent's whole-process
// RSS per connection (runtime, export buffer, everything) is
// test/agentbench's BenchmarkIdleTable. Baselines: the bare size of a
// flow.Conn plus its key, and the measured heap of a plain
// map[flow.Tuple]flow.Conn holding the same connections.
func BenchmarkMemoryPerConnection(b *testing.B) {
	for _, kind := range []struct {
		name string
		conn func(int) flow.Conn
	}{{"dnat", synthConn}, {"mixed", synthMixed}} {
		for _, n := range []int{100_000, 1_000_000} {
			b.Run(kind.name+"/"+itoa(n), func(b *testing.B) {
				var perConn, idlePerConn, heapPerConn float64
				for i := 0; i < b.N; i++ {
					rss0, heap0 := residentBytes(b), heapInUse()
					s, q := newBenchStore(b, n, func(*flow.Record) {})
					for j := 0; j < n; j++ {
						c := kind.conn(j)
						s.Upsert(&c, t0)
					}
					heapPerConn = float64(heapInUse()-heap0) / float64(n)
					perConn = float64(residentBytes(b)-rss0) / float64(n)
					if s.Len() != n || q.Len() != n {
						b.Fatalf("store holds %d, queue %d; want %d each", s.Len(), q.Len(), n)
					}
					exported, err := q.Expire(t0.Add(expirequeue.DefaultIdleTimeout), s, taking(func(*flow.Record) {}))
					if err != nil || exported != n || q.Len() != 0 {
						b.Fatalf("idle round exported %d (%v), queue left %d; want %d and 0", exported, err, q.Len(), n)
					}
					idlePerConn = float64(residentBytes(b)-rss0) / float64(n)
					release(b, s, q)
				}
				b.StopTimer()
				b.ReportMetric(perConn, "bytes/conn")
				b.ReportMetric(idlePerConn, "idle-bytes/conn")
				b.ReportMetric(heapPerConn, "heap-bytes/conn")

				before := heapInUse()
				m := make(map[flow.Tuple]flow.Conn)
				for j := 0; j < n; j++ {
					c := kind.conn(j)
					m[c.Tuple] = c
				}
				b.ReportMetric(float64(heapInUse()-before)/float64(n), "baseline-map-bytes/conn")
				runtime.KeepAlive(m)
				b.ReportMetric(float64(unsafe.Sizeof(flow.Conn{})+unsafe.Sizeof(flow.Tuple{})), "baseline-conn+key-bytes/conn")
			})
		}
	}
}

// residentBytes is this process's RSS once the garbage collector ran and
// the runtime gave back every free page: what the data held takes.
func residentBytes(tb testing.TB) int64 {
	tb.Helper()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("/proc/self/status has no VmRSS")
	return 0
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

func itoa(n int) string {
	switch {
	case n%1_000_000 == 0:
		return string(rune('0'+n/1_000_000)) + "M"
	case n%1000 == 0:
		return fmtInt(n/1000) + "k"
	}
	return fmtInt(n)
}

func fmtInt(n int) string {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(buf[i:])
		}
	}
}

// BenchmarkLookupConn looks up connections of a 100k store (one in three
// DNATed) as the L7 matcher and the counter reader do: by tuple, by its
// reverse, and through the Service VIP. Baseline: a plain
// map[flow.Tuple]flow.Conn lookup of the tuple.
func BenchmarkLookupConn(b *testing.B) {
	const n = 100_000
	s, _ := newBenchStore(b, n, func(*flow.Record) {})
	keys := make([]flow.Tuple, 0, 3*n)
	base := make(map[flow.Tuple]flow.Conn, n)
	for i := 0; i < n; i++ {
		c := synthMixed(i)
		s.Upsert(&c, t0)
		base[c.Tuple] = c
		keys = append(keys, c.Tuple, c.Tuple.Reverse())
		if c.IsDNATed() {
			keys = append(keys, flow.Tuple{SrcIP: c.Tuple.SrcIP, DstIP: c.OrigDstIP, SrcPort: c.Tuple.SrcPort, DstPort: c.OrigDstPort, Proto: c.Tuple.Proto})
		}
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	found := 0
	for i := 0; i < b.N; i++ {
		if _, ok := s.LookupConn(keys[i%len(keys)]); ok {
			found++
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if found != b.N {
		b.Fatalf("found %d of %d", found, b.N)
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N), "ns/lookup")
	start = time.Now()
	for i := 0; i < b.N; i++ {
		if _, ok := base[keys[i%len(keys)]]; ok {
			found++
		}
	}
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N), "baseline-map-ns/lookup")
}

// BenchmarkUpsertNew fills an empty store with 100k connections (one in
// three DNATed) per op, growth of the slab and indexes included, as a
// start-up dump does. Baseline: inserting them into a plain
// map[flow.Tuple]flow.Conn.
func BenchmarkUpsertNew(b *testing.B) {
	const n = 100_000
	conns := make([]flow.Conn, n)
	for i := range conns {
		conns[i] = synthMixed(i)
	}
	var elapsed, baseline time.Duration
	for i := 0; i < b.N; i++ {
		s, q := newBenchStore(b, n, func(*flow.Record) {})
		start := time.Now()
		for j := range conns {
			s.Upsert(&conns[j], t0)
		}
		elapsed += time.Since(start)
		release(b, s, q)
		start = time.Now()
		m := make(map[flow.Tuple]flow.Conn)
		for j := range conns {
			m[conns[j].Tuple] = conns[j]
		}
		baseline += time.Since(start)
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(n*b.N), "ns/insert")
	b.ReportMetric(float64(baseline.Nanoseconds())/float64(n*b.N), "baseline-map-ns/insert")
}
