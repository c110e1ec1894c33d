package ipfixexport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// hungCollector listens and completes every connection but never reads
// (a collector process that hangs while its kernel still accepts). Its
// receive buffer is small: a large one takes a new batch of records on
// every reconnect, which is progress (they are read when the process
// resumes), and then a record waits one reconnect cycle, not the timeout.
func hungCollector(t *testing.T) string {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	return l.Addr().String()
}

// A producer that only asks (the agent declines a due record Accepts
// refuses, and offers it again on the next tick) sees the same bound as
// one that exports: Accepts turns true BackpressureTimeout after it first
// saw the buffer full, although the hung collector's kernel accepts every
// reconnect. Then Export takes records by dropping and counting them.
func TestAcceptsAloneStartsTheStallClockOfAHungCollector(t *testing.T) {
	const backpressure = 300 * time.Millisecond
	reg := prometheus.NewRegistry()
	e, _ := startExporter(t, Config{Address: hungCollector(t), Transport: TCP, BufferRecords: 50,
		FlushInterval: 5 * time.Millisecond, WriteTimeout: 200 * time.Millisecond, DrainTimeout: 50 * time.Millisecond,
		BackpressureTimeout: backpressure, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 40 * time.Millisecond}, reg)
	waitFor(t, 5*time.Second, "the connection", func() bool { return e.DownSince().IsZero() })

	// Ask, and export what Accepts allows, as the agent does. While the
	// socket buffers fill, records leave the buffer and a refusal streak
	// ends with a record queued; once they are full, nothing leaves, and
	// the streak must end with a drop BackpressureTimeout after it began.
	drops := func() float64 {
		return metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full")
	}
	deadline := time.Now().Add(10 * time.Second)
	var streak time.Time
	longest := time.Duration(0)
	for i := uint64(0); ; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no drop within 10s; longest refusal streak %v", longest)
		}
		r := testRecord(i, false)
		if !e.Accepts(&r) {
			if streak.IsZero() {
				streak = time.Now()
			}
			if d := time.Since(streak); d > backpressure+time.Second {
				t.Fatalf("Accepts refused for %v (BackpressureTimeout %v)", d, backpressure)
			}
			time.Sleep(2 * time.Millisecond)
			continue
		}
		var waited time.Duration
		if !streak.IsZero() {
			waited = time.Since(streak)
			longest = max(longest, waited)
		}
		before := drops()
		if !e.Export(&r) {
			t.Fatalf("record %d refused after Accepts said yes, with one producer", i)
		}
		streak = time.Time{}
		if drops() == before {
			continue // queued: the buffer had room again
		}
		if waited < backpressure {
			t.Fatalf("a record was dropped after a refusal streak of %v, shorter than BackpressureTimeout %v", waited, backpressure)
		}
		if drops() != before+1 {
			t.Fatalf("buffer_full drops went from %v to %v for one record", before, drops())
		}
		t.Logf("Accepts refused for %v, then the record was dropped and counted (BackpressureTimeout %v)", waited.Round(time.Millisecond), backpressure)
		break
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_connection_errors_total", "stage", "dial"); v != 0 {
		t.Fatalf("%v dial errors: the test meant a collector whose kernel accepts", v)
	}
}

// A connected collector that is slow but keeps reading is making
// progress: however long its full buffer refuses in all, no record waits
// BackpressureTimeout, so none is dropped and every record arrives once.
func TestSlowCollectorRefusedLongerThanTheTimeoutLosesNothing(t *testing.T) {
	var got collected
	target, _ := startCollector(t, ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, &got)
	// The slow collector: a proxy that forwards one message a millisecond,
	// slower than the producer. Not much slower: the kernel wakes a writer
	// blocked on a full send buffer once a third of it (up to tcp_wmem's
	// maximum, 4 MB) drained, and nothing leaves the exporter's buffer
	// meanwhile; at this rate that is ~100 ms, well under the timeout.
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				forwardMessages(t, slowReader{c, time.Millisecond}, target)
			}()
		}
	}()
	const backpressure = time.Second
	reg := prometheus.NewRegistry()
	// Small messages: a record leaves the buffer every few records read.
	e, _ := startExporter(t, Config{Address: ln.Addr().String(), Transport: TCP, BufferRecords: 100, MaxMessageSize: 8000,
		FlushInterval: 10 * time.Millisecond, BackpressureTimeout: backpressure}, reg)
	waitFor(t, 5*time.Second, "the connection", func() bool { return e.DownSince().IsZero() })

	// Produce until the producer spent 3×BackpressureTimeout in all
	// waiting for refused records (the socket buffers absorb a few MB
	// first).
	start := time.Now()
	var n uint64
	refusals := 0
	refusedFor := time.Duration(0)
	for ; refusedFor < 3*backpressure; n++ {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("only %v of refusals in 20s: the collector was not slower than the producer", refusedFor)
		}
		r := testRecord(n, false)
		if e.Export(&r) {
			continue
		}
		t0 := time.Now()
		for !e.Export(&r) {
			refusals++
			time.Sleep(100 * time.Microsecond)
		}
		refusedFor += time.Since(t0)
	}
	t.Logf("produced %d records in %v", n, time.Since(start).Round(time.Millisecond))
	for wait := time.Now(); uint64(len(got.snapshot())) < n; time.Sleep(10 * time.Millisecond) {
		if time.Since(wait) > 30*time.Second {
			t.Fatalf("%d of %d records received 30s after the last was exported; drops %v", len(got.snapshot()), n,
				metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full"))
		}
	}
	time.Sleep(50 * time.Millisecond)
	if s := describeSeqs(seqsOf(got.snapshot()), n); s != fmt.Sprintf("0 missing (first 0), 0 duplicated, of %d", n) {
		t.Fatalf("received %d records: %s", len(got.snapshot()), s)
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full"); v != 0 {
		t.Errorf("buffer_full drops = %v from a collector that kept reading, want 0", v)
	}
	t.Logf("%d records in %v, refused for %v in all (%d refusals), 0 dropped", n, time.Since(start).Round(time.Millisecond), refusedFor.Round(time.Millisecond), refusals)
}

// slowReader is a connection whose every Read of a message header (4
// bytes: forwardMessages reads one per message) first waits.
type slowReader struct {
	net.Conn
	wait time.Duration
}

func (s slowReader) Read(b []byte) (int, error) {
	if len(b) == 4 {
		time.Sleep(s.wait)
	}
	return s.Conn.Read(b)
}
