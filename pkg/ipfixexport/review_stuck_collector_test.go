package ipfixexport

import (
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// REVIEW: a collector whose process hangs (deadlock, SIGSTOP, a long GC)
// keeps its listening socket: the kernel completes every connection into
// the listen backlog, but nothing is read. The exporter connects (downSince
// reset to zero), its writes stall, WriteTimeout tears the connection down,
// it reconnects after ReconnectMin, and so on: it is never "unreachable
// for BackpressureTimeout", so a full buffer refuses records for as long as
// the collector hangs. The agent loop's exportWaiting (replaced or evicted
// connections, shutdown) retries such a record every millisecond with no
// bound: the loop stops (no events, no counters read) and shutdown hangs.
// backpressure.go claims the wait is bounded by BackpressureTimeout plus
// WriteTimeout; here it is not.
func TestReviewHungCollectorMakesTheBufferRefuseForever(t *testing.T) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	l, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The hung process: it never calls accept nor reads; the kernel's
	// backlog completes the handshakes. (Accepting and not reading is the
	// same to the exporter; we accept so connections do not pile up.)
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

	const backpressure = 500 * time.Millisecond
	const writeTimeout = 300 * time.Millisecond
	reg := prometheus.NewRegistry()
	e, _ := startExporter(t, Config{Address: l.Addr().String(), Transport: TCP, BufferRecords: 50,
		FlushInterval: 5 * time.Millisecond, WriteTimeout: writeTimeout, BackpressureTimeout: backpressure,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 50 * time.Millisecond}, reg)

	// Offer records the way exportWaiting does: retry each refused one.
	deadline := time.Now().Add(6 * time.Second)
	longest, streakStart := time.Duration(0), time.Time{}
	for i := uint64(0); time.Now().Before(deadline); i++ {
		r := testRecord(i, false)
		for !e.Export(&r) {
			if streakStart.IsZero() {
				streakStart = time.Now()
			}
			if d := time.Since(streakStart); d > longest {
				longest = d
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		streakStart = time.Time{}
	}
	dropped := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full")
	t.Logf("longest wait for one record %v; buffer_full drops %v", longest, dropped)
	if bound := backpressure + writeTimeout + time.Second; longest > bound {
		t.Errorf("one record waited %v for a hung collector; the documented bound is BackpressureTimeout+WriteTimeout (~%v)", longest, backpressure+writeTimeout)
	}
}
