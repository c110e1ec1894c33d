package agent

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/eve"
)

func TestHandoffBlocksWhenFullAndCountsWhatItDiscards(t *testing.T) {
	reg := prometheus.NewRegistry()
	h, err := NewHandoff(1, reg)
	if err != nil {
		t.Fatal(err)
	}
	h.Handle(eve.Event{TxID: 1}) // fits

	// The channel is full: the reader waits for the loop.
	returned := make(chan struct{})
	go func() {
		h.Handle(eve.Event{TxID: 2})
		close(returned)
	}()
	select {
	case <-returned:
		t.Fatal("Handle returned with the channel full: the event would be lost")
	case <-time.After(50 * time.Millisecond):
	}
	if ev := <-h.Events(); ev.TxID != 1 {
		t.Fatalf("first event %d, want 1", ev.TxID)
	}
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("Handle did not return once the loop took an event")
	}
	if got := counterValue(t, h.waits); got != 1 {
		t.Errorf("waits = %v, want 1", got)
	}

	// The loop stopped: a waiting Handle returns, and every event not
	// handed over is counted.
	returned2 := make(chan struct{})
	go func() {
		h.Handle(eve.Event{TxID: 3}) // channel full (2 is in it): waits
		close(returned2)
	}()
	time.Sleep(20 * time.Millisecond) // most likely waiting by now; either way it is discarded
	h.Close()
	<-returned2
	h.Handle(eve.Event{TxID: 4}) // after Close
	h.DiscardRemaining()         // event 2
	if got := counterValue(t, h.discarded); got != 3 {
		t.Errorf("discarded = %v, want 3 (events 2, 3, 4)", got)
	}
	if _, err := NewHandoff(1, reg); err == nil {
		t.Error("a second handoff registered the same metrics without error")
	}
}
