package sink

import (
	"context"
	"sync"
	"testing"
	"time"
)

// inFlightWriter blocks its first Write until released, like an insert the
// server is still storing, and fails it if its context ends first: a
// destination that, like ClickHouse, may store a cancelled insert anyway.
type inFlightWriter struct {
	started  chan struct{}
	release  chan struct{}
	mu       sync.Mutex
	writes   int
	canceled int
}

func (w *inFlightWriter) Write(ctx context.Context, b *Batch) (int, error) {
	w.mu.Lock()
	w.writes++
	first := w.writes == 1
	w.mu.Unlock()
	if !first {
		return len(b.Records), nil
	}
	close(w.started)
	select {
	case <-w.release:
		return len(b.Records), nil
	case <-ctx.Done():
		w.mu.Lock()
		w.canceled++
		w.mu.Unlock()
		return 0, ctx.Err()
	}
}

func (w *inFlightWriter) Close() error { return nil }

// A write in flight when the sink is told to stop finishes (within the
// flush deadline) instead of being cut off and retried: a retry of an
// insert the server stored after all would store it twice.
func TestStopLetsTheWriteInFlightFinish(t *testing.T) {
	w := &inFlightWriter{started: make(chan struct{}), release: make(chan struct{})}
	s := newSink(t, w, Config{MaxBatch: 10, CommitInterval: time.Millisecond, FlushTimeout: 5 * time.Second})
	for _, r := range records(10) {
		s.Put(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-w.started
	cancel()
	time.Sleep(50 * time.Millisecond) // let a cut-off write fail, as it did
	close(w.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.canceled != 0 || w.writes != 1 {
		t.Errorf("writes %d, of them cancelled %d; want the one write to finish", w.writes, w.canceled)
	}
	if got := counter(t, s.m.written); got != 10 {
		t.Errorf("written = %v, want 10", got)
	}
}

// The write's extra time ends at the flush deadline: a destination that
// never answers cannot hold the shutdown up for longer.
func TestStopCutsOffAWriteAtTheFlushDeadline(t *testing.T) {
	w := &inFlightWriter{started: make(chan struct{}), release: make(chan struct{})}
	defer close(w.release)
	s := newSink(t, w, Config{MaxBatch: 10, CommitInterval: time.Millisecond, FlushTimeout: 100 * time.Millisecond})
	for _, r := range records(10) {
		s.Put(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-w.started
	stopped := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return 5s after its context ended")
	}
	if took := time.Since(stopped); took > 2*time.Second {
		t.Errorf("Run returned %v after its context ended; flush timeout is 100ms", took)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.canceled != 1 {
		t.Errorf("cancelled writes = %d, want 1", w.canceled)
	}
}
