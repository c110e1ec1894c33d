package expirequeue

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// The deadline array of a large backlog is mapped outside the Go heap,
// grows by half, and once the connections have gone idle it shrinks back:
// an idle table holds no deadline memory. Deadlines keep their order
// across every resize.
func TestDeadlineArrayGrowsMappedAndShrinksWhenIdle(t *testing.T) {
	const n = 200_000 // 3.2 MB of deadlines: mapped
	reg := prometheus.NewRegistry()
	q, err := New(Config{ActiveTimeout: 5 * time.Second, IdleTimeout: 15 * time.Second}, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Release(); err != nil {
			t.Error(err)
		}
	})
	f := newFakeSource()
	caps := []int{}
	for h := Handle(0); h < n; h++ {
		// Connections first seen over 10 s: their idle deadlines follow
		// that order.
		f.add(q, h, time.Duration(h)*10*time.Second/n, false)
		if c := cap(q.items); len(caps) == 0 || caps[len(caps)-1] != c {
			caps = append(caps, c)
		}
	}
	for i := 1; i < len(caps); i++ {
		if want := caps[i-1] + caps[i-1]/2; caps[i] != want {
			t.Fatalf("deadline array grew from %d to %d, want %d", caps[i-1], caps[i], want)
		}
	}
	if !q.mem.Mapped() {
		t.Fatalf("%d deadlines (%d bytes) not mapped", q.Len(), cap(q.items)*16)
	}
	if got := gather(t, reg)["flowlens_expirequeue_memory_bytes"]; got != float64(cap(q.items)*16) {
		t.Fatalf("memory gauge %v, want %d", got, cap(q.items)*16)
	}
	// Half of them go idle: the array shrinks only below a quarter.
	if _, err := q.Expire(t0.Add(20*time.Second), f, take); err != nil {
		t.Fatal(err)
	}
	exported := len(f.exports)
	if exported == 0 || exported == n {
		t.Fatalf("%d idle exports at 20 s, want some but not all", exported)
	}
	for i := 1; i < len(f.exports); i++ {
		if f.exports[i].h < f.exports[i-1].h {
			t.Fatalf("export %d of handle %d after handle %d: deadlines out of order", i, f.exports[i].h, f.exports[i-1].h)
		}
	}
	if _, err := q.Expire(t0.Add(30*time.Second), f, take); err != nil {
		t.Fatal(err)
	}
	if len(f.exports) != n || q.Len() != 0 {
		t.Fatalf("%d exports, %d deadlines left; want %d and 0", len(f.exports), q.Len(), n)
	}
	if cap(q.items) != minItems || q.mem.Mapped() {
		t.Fatalf("idle queue: array of %d (mapped %v), want %d on the heap", cap(q.items), q.mem.Mapped(), minItems)
	}
	if got := gather(t, reg)["flowlens_expirequeue_memory_bytes"]; got != minItems*16 {
		t.Fatalf("memory gauge %v when idle, want %d", got, minItems*16)
	}
	// It still works at its small size.
	f.move(q, 7, 40*time.Second)
	if _, err := q.Expire(t0.Add(60*time.Second), f, take); err != nil {
		t.Fatal(err)
	}
	if last := f.exports[len(f.exports)-1]; last.h != 7 || last.reason != flow.EndIdleTimeout {
		t.Fatalf("last export %+v, want handle 7 idle", last)
	}
}

// A queue that hovers around one size does not resize back and forth.
func TestDeadlineArrayShrinkHasHysteresis(t *testing.T) {
	q, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeSource()
	for h := Handle(0); h < 4096; h++ {
		f.add(q, h, 0, false)
	}
	c := cap(q.items)
	// A third of the array in use: below half, above a quarter.
	q.items = q.items[:c/3]
	q.shrink()
	if cap(q.items) != c {
		t.Fatalf("array of %d with %d queued shrank to %d; want it kept", c, q.Len(), cap(q.items))
	}
	q.items = q.items[:c/5]
	q.shrink()
	if cap(q.items) >= c || cap(q.items) < 2*q.Len() {
		t.Fatalf("array of %d with %d queued became %d; want smaller, at least twice the queued", c, q.Len(), cap(q.items))
	}
}
