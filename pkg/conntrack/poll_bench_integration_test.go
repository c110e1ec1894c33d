//go:build integration

package conntrack

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/connstore"
	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
)

// BenchmarkPoll is the agent's whole poll as run.go does it: dump, update
// the store, close what the dump no longer returned, and run the expire
// queue, on the same table and against the same floor as the dump
// benchmarks.
func BenchmarkPoll(b *testing.B) {
	path := benchTablePath(b)
	floor := newPairedFloor(b, path)
	src, err := New(Config{NetNSPath: path}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	queue, err := expirequeue.New(expirequeue.Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	exported := 0
	emit := func(*flow.Record) { exported++ }
	store, err := connstore.New(connstore.Config{MaxConnections: 2 * benchEntries, Scheduler: queue, Emit: emit}, nil)
	if err != nil {
		b.Fatal(err)
	}
	poll := func() {
		started := time.Now()
		if err := src.Dump(func(c *flow.Conn) { store.Upsert(c, started) }); err != nil {
			b.Fatal(err)
		}
		store.EndDump(started)
		if _, err := queue.Expire(time.Now(), store, emit); err != nil {
			b.Fatal(err)
		}
	}
	// The first poll creates every connection; the agent's steady state is
	// the polls after it, which update them.
	poll()
	if store.Len() < benchEntries {
		b.Fatalf("store holds %d connections after the first poll, want >= %d", store.Len(), benchEntries)
	}
	var measured time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		floor.run(b)
		measured += timed(poll)
	}
	b.StopTimer()
	floor.report(b, measured)
	b.ReportMetric(float64(store.Len()), "conns")
}
