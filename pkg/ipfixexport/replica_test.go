package ipfixexport

import (
	"net"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

func TestDownSinceFollowsTheConnection(t *testing.T) {
	t.Parallel()
	// A port nothing listens on: reserve one and close it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	created := time.Now()
	e, stopExporter := startExporter(t, Config{Address: addr, Transport: TCP,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 50 * time.Millisecond}, nil)
	if d := e.DownSince(); d.IsZero() || d.Before(created.Add(-time.Second)) || d.After(time.Now()) {
		t.Fatalf("never connected: DownSince %v, want about %v", d, created)
	}
	time.Sleep(200 * time.Millisecond) // failed attempts do not move it
	if d := e.DownSince(); d.After(created.Add(100 * time.Millisecond)) {
		t.Errorf("DownSince moved to %v while attempts kept failing", d)
	}

	var got collected
	_, stopCollector := startCollector(t, ipfixcollect.Config{Network: "tcp", Address: addr}, &got)
	waitFor(t, 5*time.Second, "connection", func() bool { return e.DownSince().IsZero() })

	beforeStop := time.Now()
	stopCollector()
	waitFor(t, 5*time.Second, "the collector's close noticed", func() bool { return !e.DownSince().IsZero() })
	if d := e.DownSince(); d.Before(beforeStop) {
		t.Errorf("DownSince %v is before the collector stopped (%v)", d, beforeStop)
	}
	stopExporter()
	if n := e.UnsentAtStop(); n != 0 {
		t.Errorf("UnsentAtStop %d with nothing exported", n)
	}
}

func TestTakeBufferedRemovesRecordsFromTheExporter(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e, err := New(Config{Address: addr, Transport: TCP, BufferRecords: 10}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(7) {
		r := testRecord(i, i%2 == 1)
		if !e.Export(&r) {
			t.Fatalf("record %d dropped", i)
		}
	}
	// Up to the room in dst, oldest first.
	got := e.TakeBuffered(make([]flow.Record, 0, 3))
	got = e.TakeBuffered(append(make([]flow.Record, 0, 10), got...))
	if len(got) != 7 {
		t.Fatalf("took %d records, want 7", len(got))
	}
	for i, r := range got {
		if r.Fwd.Packets != uint64(i) {
			t.Fatalf("record %d is seq %d: order lost", i, r.Fwd.Packets)
		}
	}
	if e.buffered() != 0 {
		t.Errorf("%v records still buffered", e.buffered())
	}
	if more := e.TakeBuffered(make([]flow.Record, 0, 10)); len(more) != 0 {
		t.Errorf("second take got %d", len(more))
	}
	// The buffer's room is back, and what was taken is not sent.
	for i := range uint64(10) {
		r := testRecord(100+i, false)
		if !e.Export(&r) {
			t.Fatalf("record %d dropped after the take", i)
		}
	}
	var col collected
	startCollector(t, ipfixcollect.Config{Network: "tcp", Address: addr}, &col)
	_, stop := startExporterFor(t, e)
	waitFor(t, 5*time.Second, "10 records", func() bool { return len(col.snapshot()) >= 10 })
	stop()
	for _, r := range col.snapshot() {
		if r.Fwd.Packets < 100 {
			t.Errorf("taken record %d was sent too", r.Fwd.Packets)
		}
	}
	if n := len(col.snapshot()); n != 10 {
		t.Errorf("collector got %d records, want 10", n)
	}
}

// startExporterFor runs an exporter already built.
func startExporterFor(t *testing.T, e *Exporter) (*Exporter, func()) {
	t.Helper()
	ctx, cancel := contextWithCancel()
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("exporter Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return e, stop
}
