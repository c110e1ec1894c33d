//go:build integration

package conntrack

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	ct "github.com/ti-mo/conntrack"

	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
)

const benchEntries = 32768

// benchTable is built once per process: the three benchmarks must read the
// same table for the comparison to mean anything.
var benchTable struct {
	path    string
	cleanup func() error
}

func benchTablePath(b *testing.B) string {
	b.Helper()
	if benchTable.path == "" {
		start := time.Now()
		path, cleanup, err := conntracktest.NewTable(benchEntries)
		if err != nil {
			b.Fatalf("build benchmark table: %v", err)
		}
		benchTable.path, benchTable.cleanup = path, cleanup
		b.Logf("built %d-entry conntrack table in %v", benchEntries, time.Since(start).Round(time.Millisecond))
	}
	return benchTable.path
}

// rawDump reads a whole dump without decoding: the floor no decoder beats.
func rawDump(sock *nlConn, buf []byte, seq uint32) (msgs int, err error) {
	if err := sock.send(dumpRequest(Config{}, seq)); err != nil {
		return 0, err
	}
	for {
		n, err := sock.recv(buf)
		if err != nil {
			return msgs, err
		}
		b := buf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(binary.NativeEndian.Uint32(b))
			if binary.NativeEndian.Uint16(b[4:]) == nlmsgDone {
				return msgs, nil
			}
			msgs++
			if l < nlmsgHdrLen || l > len(b) {
				return msgs, fmt.Errorf("bad message length %d", l)
			}
			b = b[(l+3)&^3:]
		}
	}
}

// measureFloor is the mean time of a raw dump, measured once per process so
// every benchmark compares against the same figure in the same run.
// pairedFloor times one raw dump with the benchmark timer stopped. Every
// benchmark runs one per iteration next to what it measures, so the ratio
// to the floor holds even when other work on the machine slows both.
type pairedFloor struct {
	sock  *nlConn
	buf   []byte
	seq   uint32
	total time.Duration
}

func newPairedFloor(b *testing.B, path string) *pairedFloor {
	b.Helper()
	sock, err := openNL(path, 0, dumpRcvBuf)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sock.close() })
	return &pairedFloor{sock: sock, buf: make([]byte, recvBufSize)}
}

func (p *pairedFloor) run(b *testing.B) time.Duration {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	p.seq++
	start := time.Now()
	n, err := rawDump(p.sock, p.buf, p.seq)
	if err != nil || n < benchEntries {
		b.Fatalf("raw dump: %d messages, %v", n, err)
	}
	d := time.Since(start)
	p.total += d
	return d
}

// report prints ms/op, the floor's ms/op measured alongside, and the ratio.
func (p *pairedFloor) report(b *testing.B, measured time.Duration) {
	ms := float64(measured) / float64(b.N) / 1e6
	floor := float64(p.total) / float64(b.N) / 1e6
	b.ReportMetric(ms, "ms/op")
	b.ReportMetric(floor, "floor-ms/op")
	b.ReportMetric(ms/floor, "x-floor")
}

// timed runs f and returns how long it took.
func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

func BenchmarkDumpRawFloor(b *testing.B) {
	path := benchTablePath(b)
	floor := newPairedFloor(b, path)
	sock, err := openNL(path, 0, dumpRcvBuf)
	if err != nil {
		b.Fatal(err)
	}
	defer sock.close()
	buf := make([]byte, recvBufSize)
	var measured time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		floor.run(b)
		measured += timed(func() {
			n, err := rawDump(sock, buf, uint32(i+1))
			if err != nil || n < benchEntries {
				b.Fatalf("raw dump: %d messages, %v", n, err)
			}
		})
	}
	b.StopTimer()
	floor.report(b, measured)
}

func BenchmarkDumpTiMo(b *testing.B) {
	path := benchTablePath(b)
	floor := newPairedFloor(b, path)
	var c *ct.Conn
	err := netns.Do(path, func() error {
		var err error
		c, err = ct.Dial(nil)
		return err
	})
	if err != nil {
		b.Fatalf("ti-mo dial: %v", err)
	}
	defer c.Close()
	var measured time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		floor.run(b)
		measured += timed(func() {
			flows, err := c.Dump(nil)
			if err != nil || len(flows) < benchEntries {
				b.Fatalf("ti-mo dump: %d flows, %v", len(flows), err)
			}
		})
	}
	b.StopTimer()
	floor.report(b, measured)
}

func BenchmarkDump(b *testing.B) {
	path := benchTablePath(b)
	floor := newPairedFloor(b, path)
	src, err := New(Config{NetNSPath: path}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	var sink flow.Conn
	var measured time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		floor.run(b)
		n := 0
		measured += timed(func() {
			if err := src.Dump(func(c *flow.Conn) { sink = *c; n++ }); err != nil {
				b.Fatal(err)
			}
		})
		if n < benchEntries {
			b.Fatalf("dump returned %d entries, want >= %d", n, benchEntries)
		}
	}
	b.StopTimer()
	_ = sink
	floor.report(b, measured)
}

// TestMain (integration_test.go) removes the table's namespace after the
// last benchmark: none of them can know it is the last.
func cleanupBenchTable() {
	if benchTable.cleanup != nil {
		if err := benchTable.cleanup(); err != nil {
			fmt.Println("cleanup benchmark table:", err)
		}
	}
}
