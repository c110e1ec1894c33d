package expirequeue

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Release empties the queue (Len 0) and zeroes its memory gauge, but
// flowlens_expirequeue_size keeps the deadlines that were queued.
func TestReviewReleaseZeroesSizeGauge(t *testing.T) {
	reg := prometheus.NewRegistry()
	q, err := New(Config{}, reg)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeSource()
	for h := Handle(0); h < 10; h++ {
		f.add(q, h, 0, false)
	}
	if err := q.Release(); err != nil {
		t.Fatal(err)
	}
	got := gather(t, reg)
	if got["flowlens_expirequeue_memory_bytes"] != 0 {
		t.Fatalf("memory gauge %v after Release", got["flowlens_expirequeue_memory_bytes"])
	}
	if got["flowlens_expirequeue_size"] != float64(q.Len()) {
		t.Errorf("flowlens_expirequeue_size = %v after Release, Len() = %d", got["flowlens_expirequeue_size"], q.Len())
	}
}
