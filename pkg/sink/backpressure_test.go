package sink

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
)

// slowWriter takes every batch, but only after delay: a destination slower
// than the producer.
type slowWriter struct {
	delay time.Duration
	mu    sync.Mutex
	got   []*correlate.Record
}

func (w *slowWriter) Write(_ context.Context, b *Batch) (int, error) {
	time.Sleep(w.delay)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got = append(w.got, b.Records...)
	return len(b.Records), nil
}

func (w *slowWriter) Close() error { return nil }

func (w *slowWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.got)
}

// A producer much faster than the destination, through a queue far
// smaller than what it sends: Put waits instead of dropping, so every
// record arrives, once and in order (issue 9 item 4: 31k-74k of 1M lost).
func TestSlowSinkSlowsThePutterAndLosesNothing(t *testing.T) {
	const total, queue = 1_000_000, 10_000
	w := &slowWriter{delay: 2 * time.Millisecond}
	s := newSink(t, w, Config{QueueRecords: queue, MaxBatch: queue / 2, CommitInterval: 5 * time.Millisecond, MaxBlock: 5 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	// A pool larger than the queue: a record delivered twice, out of
	// order or not at all shows as the wrong pointer at its position.
	recs := records(3 * queue)
	start := time.Now()
	for i := range total {
		s.Put(recs[i%len(recs)])
	}
	putTime := time.Since(start)
	deadline := time.Now().Add(30 * time.Second)
	for w.count() < total && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := w.count(); got != total {
		t.Fatalf("delivered %d of %d", got, total)
	}
	for i, r := range w.got {
		if r != recs[i%len(recs)] {
			t.Fatalf("record %d delivered out of order or twice", i)
		}
	}
	for reason := range numDropReasons {
		if n := counter(t, s.m.dropped[reason]); n != 0 {
			t.Errorf("dropped %v records (%s)", n, reason)
		}
	}
	// total/MaxBatch writes of 2 ms each: the producer must have waited
	// for them, and the metric says so.
	if blocked := counter(t, s.m.blocked); blocked <= 0 || putTime < 100*time.Millisecond {
		t.Errorf("Put blocked %.3fs in all, producer took %s: no backpressure", blocked, putTime)
	}
	t.Logf("%d records through a %d-record queue in %s, Put blocked %.2fs", total, queue, putTime, counter(t, s.m.blocked))
}

// stuckWriter never completes a write until released.
type stuckWriter struct{ release chan struct{} }

func (w *stuckWriter) Write(ctx context.Context, b *Batch) (int, error) {
	select {
	case <-w.release:
		return len(b.Records), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (w *stuckWriter) Close() error { return nil }

func TestBlockedSinkDropsAfterMaxBlockAndCounts(t *testing.T) {
	const maxBlock = 150 * time.Millisecond
	w := &stuckWriter{release: make(chan struct{})}
	s := newSink(t, w, Config{QueueRecords: 4, MaxBatch: 4, CommitInterval: time.Millisecond, MaxBlock: maxBlock, FlushTimeout: 10 * time.Millisecond})
	start(t, s)
	for _, r := range records(4) {
		s.Put(r)
	}
	if err := s.Healthy(); err != nil {
		t.Errorf("Healthy before anything was dropped: %v", err)
	}
	// The first Put on the full queue waits maxBlock, then drops.
	began := time.Now()
	s.Put(&correlate.Record{})
	if waited := time.Since(began); waited < maxBlock || waited > maxBlock+time.Second {
		t.Errorf("first Put on a full queue returned after %s, want about maxBlock %s", waited, maxBlock)
	}
	// The queue is still full: later records are dropped at once, not
	// each after maxBlock (that would stall every other sink).
	began = time.Now()
	for range 3 {
		s.Put(&correlate.Record{})
	}
	if waited := time.Since(began); waited > maxBlock/2 {
		t.Errorf("Puts after maxBlock waited %s; want an immediate drop", waited)
	}
	if got := counter(t, s.m.dropped[dropBlocked]); got != 4 {
		t.Errorf("dropped{blocked_timeout} = %v, want 4", got)
	}
	if err := s.Healthy(); err == nil || !strings.Contains(err.Error(), "queue full") {
		t.Errorf("Healthy while dropping = %v, want a queue-full error", err)
	}
	// Once the destination takes the batch, there is room and Put queues
	// again without dropping.
	close(w.release)
	deadline := time.Now().Add(5 * time.Second)
	for s.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	s.Put(&correlate.Record{})
	if got := counter(t, s.m.dropped[dropBlocked]); got != 4 {
		t.Errorf("dropped after the queue drained: %v, want still 4", got)
	}
	if err := s.Healthy(); err != nil {
		t.Errorf("Healthy after draining: %v", err)
	}
}

// A Put waiting on a full queue when the sink stops must not hang: the
// aggregator stops its sinks after shutdownTimeout even when the
// correlator is still flushing into them.
func TestPutWaitingOnAStoppingSinkReturnsAndCounts(t *testing.T) {
	w := &stuckWriter{release: make(chan struct{})}
	s := newSink(t, w, Config{QueueRecords: 2, MaxBatch: 2, CommitInterval: time.Millisecond, MaxBlock: time.Hour, FlushTimeout: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	for _, r := range records(2) {
		s.Put(r)
	}
	putDone := make(chan struct{})
	go func() {
		s.Put(&correlate.Record{})
		close(putDone)
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case <-putDone:
	case <-time.After(5 * time.Second):
		t.Fatal("Put still blocked after the sink stopped")
	}
	// 2 left in the queue at shutdown, and the one Put after it.
	if got := counter(t, s.m.dropped[dropShutdown]); got != 3 {
		t.Errorf("dropped{shutdown} = %v, want 3", got)
	}
}
