package ipfixexport

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// forwardMessages copies whole IPFIX messages from in to a new connection
// to target until in fails; a message cut short is not forwarded, as a
// collector could not decode it either.
func forwardMessages(t *testing.T, in net.Conn, target string) {
	out, err := net.Dial("tcp", target)
	if err != nil {
		t.Errorf("proxy dial: %v", err)
		return
	}
	defer out.Close()
	buf := make([]byte, 65536)
	for {
		if _, err := io.ReadFull(in, buf[:4]); err != nil {
			return
		}
		l := int(binary.BigEndian.Uint16(buf[2:]))
		if l < 4 {
			return
		}
		if _, err := io.ReadFull(in, buf[4:l]); err != nil {
			return
		}
		if _, err := out.Write(buf[:l]); err != nil {
			return
		}
	}
}

// A collector that stops reading makes the exporter's writes time out; the
// exporter aborts the connection and sends again whatever the collector's
// kernel had not acknowledged. What the collector had received (it reads
// its backlog afterwards) plus what was sent again is every record, once.
func TestStalledCollectorGetsUnacknowledgedRecordsResentOnce(t *testing.T) {
	t.Parallel()
	var got collected
	target, _ := startCollector(t, ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, &got)
	// A small receive buffer on the collector side keeps most of what the
	// exporter wrote unacknowledged in the exporter's send queue.
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	stalled := make(chan net.Conn, 1)
	reconnected := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			switch i {
			case 0:
				stalled <- c // read nothing until the exporter gave up
				continue
			case 1:
				close(reconnected)
			}
			go forwardMessages(t, c, target)
		}
	}()

	const n = 20000
	reg := prometheus.NewRegistry()
	e, stop := startExporter(t, Config{
		// Small messages: the few tens of kilobytes a stalled send queue
		// holds are then many messages.
		Address: ln.Addr().String(), Transport: TCP, BufferRecords: n, MaxMessageSize: 2000,
		WriteTimeout: 300 * time.Millisecond, DrainTimeout: 200 * time.Millisecond,
		FlushInterval: 50 * time.Millisecond, ReconnectMin: 50 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
	}, reg)
	for i := range n {
		r := testRecord(uint64(i), i%5 == 0)
		if !e.Export(&r) {
			t.Fatalf("record %d dropped", i)
		}
	}
	c := <-stalled
	select {
	case <-reconnected: // the exporter gave up on the stalled connection
	case <-time.After(20 * time.Second):
		t.Fatal("the exporter never gave up on the stalled connection")
	}
	forwardMessages(t, c, target) // the backlog the collector's kernel had accepted
	c.Close()
	e.Flush()
	waitFor(t, 20*time.Second, "every record", func() bool { return len(got.snapshot()) >= n })
	time.Sleep(200 * time.Millisecond)
	stop()
	if s := describeSeqs(seqsOf(got.snapshot()), n); !strings.HasPrefix(s, "0 missing") || !strings.Contains(s, " 0 duplicated") || len(got.snapshot()) != n {
		t.Errorf("%s; %d records received", s, len(got.snapshot()))
	}
	// More than a few messages' worth (~4 records each) means messages the
	// write had completed, not only the one cut short, were sent again.
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_resent_total"); v < 20 {
		t.Errorf("%v records resent: the stall left too little unacknowledged data for the test to prove anything", v)
	} else {
		t.Logf("resent %v records after the stall", v)
	}
}
