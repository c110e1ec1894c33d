package ipfixexport

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// sizeLog records the size of every message a proxy forwarded.
type sizeLog struct {
	mu           sync.Mutex
	max          int
	dataMessages int
	badLength    int
}

func (s *sizeLog) add(msg []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.max = max(s.max, len(msg))
	if len(msg) < 20 || int(binary.BigEndian.Uint16(msg[2:])) != len(msg) {
		s.badLength++
		return
	}
	if binary.BigEndian.Uint16(msg[16:]) >= 256 {
		s.dataMessages++
	}
}

// sizeCheckingProxy forwards IPFIX to target, logging message sizes.
func sizeCheckingProxy(t *testing.T, network, target string, log *sizeLog) string {
	t.Helper()
	if network == "udp" {
		in, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out, err := net.Dial("udp", target)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { in.Close(); out.Close() })
		go func() {
			buf := make([]byte, 65536)
			for {
				n, _, err := in.ReadFrom(buf)
				if err != nil {
					return
				}
				log.add(buf[:n])
				_, _ = out.Write(buf[:n])
			}
		}()
		return in.LocalAddr().String()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.Dial("tcp", target)
				if err != nil {
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
						log.add(buf[:4])
						return
					}
					if _, err := io.ReadFull(in, buf[4:l]); err != nil {
						return
					}
					log.add(buf[:l])
					if _, err := out.Write(buf[:l]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestMessagesNeverExceedTheSizeLimit(t *testing.T) {
	cases := []struct {
		name      string
		transport Transport
		pathMTU   int
		maxMsg    int
		httpVals  int // bytes of httpVals per record
		records   int
		wantLimit int
		// minPerMsg is the batching expected: records per data message on
		// average, given ~400-byte records.
		minPerMsg float64
	}{
		{"UDP datagrams fit a 1500-byte path MTU to an IPv4 collector", UDP, 0, 0, 0, 200, 1472, 2},
		{"UDP datagrams fit a 9000-byte path MTU", UDP, 9000, 0, 0, 200, 8972, 10},
		{"UDP datagrams respect a smaller MaxMessageSize", UDP, 0, 1000, 0, 100, 1000, 1.5},
		{"TCP messages stay within 65535 bytes with large records", TCP, 0, 0, 6000, 200, 65535, 5},
		{"TCP messages respect MaxMessageSize", TCP, 0, 4000, 300, 200, 4000, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got collected
			target, _ := startCollector(t, ipfixcollect.Config{Network: string(tc.transport), Address: "127.0.0.1:0"}, &got)
			var log sizeLog
			addr := sizeCheckingProxy(t, string(tc.transport), target, &log)
			e, stop := startExporter(t, Config{
				Address: addr, Transport: tc.transport, PathMTU: tc.pathMTU, MaxMessageSize: tc.maxMsg,
				FlushInterval: 20 * time.Millisecond,
			}, nil)
			if e.MaxMessageSize() != tc.wantLimit {
				t.Errorf("MaxMessageSize() = %d, want %d", e.MaxMessageSize(), tc.wantLimit)
			}
			for i := range tc.records {
				r := testRecord(uint64(i), i%3 == 0)
				if tc.httpVals > 0 {
					r.L7.HTTPVals = strings.Repeat("x", tc.httpVals)
				}
				if !e.Export(&r) {
					t.Fatalf("record %d dropped", i)
				}
				if tc.transport == UDP && i%20 == 0 {
					time.Sleep(time.Millisecond) // let the collector keep up: UDP has no flow control
				}
			}
			waitFor(t, 10*time.Second, "all records", func() bool { return len(got.snapshot()) >= tc.records })
			stop()
			if s := describeSeqs(seqsOf(got.snapshot()), uint64(tc.records)); !strings.HasPrefix(s, "0 missing") || !strings.Contains(s, " 0 duplicated") {
				t.Errorf("records at the collector: %s", s)
			}
			log.mu.Lock()
			defer log.mu.Unlock()
			if log.max > tc.wantLimit {
				t.Errorf("largest message %d bytes, limit %d", log.max, tc.wantLimit)
			}
			if log.badLength > 0 {
				t.Errorf("%d messages whose header length is not their size", log.badLength)
			}
			if float64(log.dataMessages)*tc.minPerMsg > float64(tc.records) {
				t.Errorf("%d data messages for %d records: records are not batched", log.dataMessages, tc.records)
			}
		})
	}
}

func TestRecordTooLargeForAnyMessageIsDroppedAndCounted(t *testing.T) {
	var got collected
	addr, _ := startCollector(t, ipfixcollect.Config{Network: "udp", Address: "127.0.0.1:0"}, &got)
	reg := prometheus.NewRegistry()
	e, _ := startExporter(t, Config{Address: addr, Transport: UDP, FlushInterval: 20 * time.Millisecond}, reg)
	big := testRecord(1, false)
	big.L7.HTTPVals = strings.Repeat("y", 3000)
	small := testRecord(2, false)
	e.Export(&big)
	e.Export(&small)
	waitFor(t, 5*time.Second, "the small record", func() bool { return len(got.snapshot()) == 1 })
	if seq := got.snapshot()[0].Fwd.Packets; seq != 2 {
		t.Errorf("received record %d, want the small one (2)", seq)
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "too_large"); v != 1 {
		t.Errorf("too_large drops = %v, want 1", v)
	}
}

// A collector unreachable for longer than BackpressureTimeout: the full
// buffer takes further records by dropping and counting them.
func TestFullBufferDropsNewRecordsCountsThemAndKeepsTheBuffered(t *testing.T) {
	reg := prometheus.NewRegistry()
	var got collected
	col, err := ipfixcollect.New(ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := col.Addr().String()
	col.Close() // the collector is away while records are exported
	e, err := New(Config{Address: addr, Transport: TCP, BufferRecords: 10, FlushInterval: 20 * time.Millisecond,
		BackpressureTimeout: 10 * time.Millisecond}, reg)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // never connected since New: unreachable for longer than the timeout
	taken := 0
	for i := range 15 {
		r := testRecord(uint64(i), false)
		if e.Export(&r) {
			taken++
		}
	}
	if taken != 15 {
		t.Errorf("took %d of 15 records, want all (10 buffered, 5 dropped and counted)", taken)
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "buffer_full"); v != 5 {
		t.Errorf("buffer_full drops = %v, want 5", v)
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_buffered_records"); v != 10 {
		t.Errorf("buffered records gauge = %v, want 10", v)
	}
	startCollector(t, ipfixcollect.Config{Network: "tcp", Address: addr}, &got)
	startExporterRun(t, e)
	waitFor(t, 5*time.Second, "the buffered records", func() bool { return len(got.snapshot()) >= 10 })
	time.Sleep(100 * time.Millisecond)
	if s := describeSeqs(seqsOf(got.snapshot()), 10); s != "0 missing (first 0), 0 duplicated, of 10" || len(got.snapshot()) != 10 {
		t.Errorf("received %d records: %s", len(got.snapshot()), s)
	}
}

// startExporterRun runs an existing exporter until the test ends.
func startExporterRun(t *testing.T, e *Exporter) {
	t.Helper()
	ctx, cancel := contextWithCancel()
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// readMessage reads one IPFIX message from a TCP stream.
func readMessage(c net.Conn) ([]byte, error) {
	h := make([]byte, 4)
	if _, err := io.ReadFull(c, h); err != nil {
		return nil, err
	}
	l := int(binary.BigEndian.Uint16(h[2:]))
	if l < 4 {
		return nil, errors.New("bad length")
	}
	msg := make([]byte, l)
	copy(msg, h)
	_, err := io.ReadFull(c, msg[4:])
	return msg, err
}

// firstTemplateIDs reads the template messages that open a connection.
func firstTemplateIDs(t *testing.T, c net.Conn) []uint16 {
	t.Helper()
	var ids []uint16
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 2 {
		msg, err := readMessage(c)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if set := binary.BigEndian.Uint16(msg[16:]); set != 2 {
			t.Fatalf("message opens with set %d, want a template set (2)", set)
		}
		ids = append(ids, binary.BigEndian.Uint16(msg[20:]))
	}
	return ids
}

func TestEveryNewConnectionStartsWithBothTemplates(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	startExporter(t, Config{Address: ln.Addr().String(), Transport: TCP, ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond}, nil)
	for i := range 3 {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		ids := firstTemplateIDs(t, c)
		if len(ids) != 2 || ids[0] != TemplateIDv4 || ids[1] != TemplateIDv6 {
			t.Errorf("connection %d: templates %v, want [%d %d]", i, ids, TemplateIDv4, TemplateIDv6)
		}
		c.Close() // the collector goes away; the exporter must come back with templates
	}
}

func TestUDPTemplatesAreResentPeriodically(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	startExporter(t, Config{Address: pc.LocalAddr().String(), Transport: UDP, TemplateRefreshInterval: 50 * time.Millisecond}, nil)
	buf := make([]byte, 65536)
	templates := 0
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for templates < 8 {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("after %d template messages: %v", templates, err)
		}
		if n > 20 && binary.BigEndian.Uint16(buf[16:]) == 2 {
			templates++
		}
	}
}

func TestConfigValidationNamesTheBadField(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"missing address", Config{Transport: TCP}, "address"},
		{"address without port", Config{Address: "127.0.0.1", Transport: TCP}, "address"},
		{"negative template refresh count", Config{Address: "127.0.0.1:4739", Transport: UDP, TemplateRefreshMessages: -1}, "TemplateRefreshMessages"},
		{"unknown transport", Config{Address: "127.0.0.1:4739", Transport: "sctp"}, "transport"},
		{"TCP message above 65535", Config{Address: "127.0.0.1:4739", Transport: TCP, MaxMessageSize: 70000}, "MaxMessageSize"},
		{"UDP message above the path MTU", Config{Address: "127.0.0.1:4739", Transport: UDP, MaxMessageSize: 1480}, "MaxMessageSize"},
		{"UDP path MTU too small", Config{Address: "127.0.0.1:4739", Transport: UDP, PathMTU: 200}, "PathMTU"},
		{"message too small for the templates", Config{Address: "127.0.0.1:4739", Transport: TCP, MaxMessageSize: 100}, "MaxMessageSize"},
		{"negative buffer", Config{Address: "127.0.0.1:4739", Transport: TCP, BufferRecords: -1}, "BufferRecords"},
		{"backoff min above max", Config{Address: "127.0.0.1:4739", Transport: TCP, ReconnectMin: time.Minute, ReconnectMax: time.Second}, "ReconnectMin"},
		{"client cert without key", Config{Address: "127.0.0.1:4739", Transport: TLS, TLS: TLSConfig{CertFile: "c.pem"}}, "KeyFile"},
		{"TLS settings on a TCP exporter", Config{Address: "127.0.0.1:4739", Transport: TCP, TLS: TLSConfig{CAFile: "ca.pem"}}, "tls"},
		{"missing CA file", Config{Address: "127.0.0.1:4739", Transport: TLS, TLS: TLSConfig{CAFile: "/nonexistent/ca.pem"}}, "CAFile"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New() error = %v, want one naming %s", err, tc.want)
			}
		})
	}
}

func TestExportCopiesTheRecord(t *testing.T) {
	var got collected
	addr, _ := startCollector(t, ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, &got)
	e, _ := startExporter(t, Config{Address: addr, Transport: TCP, FlushInterval: 20 * time.Millisecond}, nil)
	r := testRecord(1, false)
	want := wireView(r)
	e.Export(&r)
	r.Fwd.Packets, r.Source.PodName, r.Tuple = 999, "reused", flow.Tuple{}
	waitFor(t, 5*time.Second, "the record", func() bool { return len(got.snapshot()) == 1 })
	if g := got.snapshot()[0]; g.Fwd.Packets != want.Fwd.Packets || g.Source.PodName != want.Source.PodName || g.Tuple != want.Tuple {
		t.Errorf("received %+v, want the record as it was when exported", g)
	}
}

func TestRunReturnsOnCancelAndLaterExportsAreCountedAsDropped(t *testing.T) {
	reg := prometheus.NewRegistry()
	e, err := New(Config{Address: "127.0.0.1:1", Transport: TCP, ReconnectMin: 10 * time.Millisecond}, reg)
	if err != nil {
		t.Fatal(err)
	}
	r := testRecord(1, false)
	e.Export(&r) // never sent: nothing listens on port 1
	ctx, cancel := contextWithCancel()
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if !e.Export(&r) {
		t.Error("Export after Run returned refused the record; want it taken (dropped and counted)")
	}
	if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "shutdown"); v != 2 {
		t.Errorf("shutdown drops = %v, want 2 (one buffered, one exported after Run)", v)
	}
	if err := e.Run(context.Background()); err == nil {
		t.Error("second Run: want an error")
	}
}

// readUntilData reads UDP datagrams until one holding a data set arrives
// and returns what each held: "T" for a template set, "D" for data.
func readUntilData(t *testing.T, pc net.PacketConn, buf []byte) []string {
	t.Helper()
	var kinds []string
	for {
		_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("after %v: %v", kinds, err)
		}
		if n < 20 {
			t.Fatalf("datagram of %d bytes", n)
		}
		switch id := binary.BigEndian.Uint16(buf[16:]); id {
		case 2:
			kinds = append(kinds, "T")
		case TemplateIDv4, TemplateIDv6:
			return append(kinds, "D")
		default:
			t.Fatalf("set id %d", id)
		}
	}
}

func TestUDPTemplatesAreResentBeforeEveryNthPlusOneDataMessage(t *testing.T) {
	const every = 5
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// The time refresh is far away: only the message count can trigger.
	e, _ := startExporter(t, Config{Address: pc.LocalAddr().String(), Transport: UDP,
		FlushInterval: time.Hour, TemplateRefreshInterval: time.Hour, TemplateRefreshMessages: every}, nil)
	buf := make([]byte, 65536)
	var got, want []string
	for i := range 3*every + 2 {
		if i%every == 0 {
			want = append(want, "T", "T") // IPv4 and IPv6 template, one message each
		}
		want = append(want, "D")
		r := testRecord(uint64(i), i%2 == 1)
		e.Export(&r)
		e.Flush()
		got = append(got, readUntilData(t, pc, buf)...)
	}
	if strings.Join(got, "") != strings.Join(want, "") {
		t.Errorf("messages %s, want %s (templates before data message 1 and every %d after)", strings.Join(got, ""), strings.Join(want, ""), every)
	}
}

// A UDP collector that restarts learns the templates again from the
// refresh, by message count or by time, and decodes everything after.
func TestUDPCollectorRestartDecodesAgainWithinTheRefresh(t *testing.T) {
	cases := []struct {
		name      string
		messages  int
		interval  time.Duration
		sendEvery time.Duration
		send      int
		// maxLost bounds the data messages lost after the restart.
		maxLost int
	}{
		{"by message count (default 20)", 0, time.Hour, 0, 25, 20},
		// 10 messages 60 ms apart span 600 ms; the 200 ms refresh comes
		// within the first four.
		{"by time", 1000, 200 * time.Millisecond, 60 * time.Millisecond, 10, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before collected
			addr, stop := startCollector(t, ipfixcollect.Config{Network: "udp", Address: "127.0.0.1:0"}, &before)
			reg := prometheus.NewRegistry()
			e, _ := startExporter(t, Config{Address: addr, Transport: UDP, FlushInterval: time.Hour,
				TemplateRefreshInterval: tc.interval, TemplateRefreshMessages: tc.messages}, reg)
			sent := 0
			sendOne := func(seq uint64) {
				r := testRecord(seq, seq%2 == 1)
				e.Export(&r)
				e.Flush()
				sent++
				waitFor(t, 5*time.Second, "the record written", func() bool {
					return metricValue(t, reg, "flowlens_ipfix_exporter_records_sent_total") == float64(sent)
				})
			}
			for i := range 3 {
				sendOne(uint64(i))
			}
			waitFor(t, 5*time.Second, "3 records before the restart", func() bool { return len(before.snapshot()) == 3 })
			stop()
			// The new collector listens on the same port and knows no
			// template; nothing was sent meanwhile, so no ICMP error tells
			// the exporter to reconnect (which would resend them).
			var after collected
			startCollector(t, ipfixcollect.Config{Network: "udp", Address: addr}, &after)
			for i := range tc.send {
				if tc.sendEvery > 0 && i > 0 {
					time.Sleep(tc.sendEvery)
				}
				sendOne(uint64(100 + i))
			}
			waitFor(t, 5*time.Second, "a record decoded after the restart", func() bool { return len(after.snapshot()) > 0 })
			time.Sleep(100 * time.Millisecond)
			seqs := seqsOf(after.snapshot())
			first := -1
			for i := range tc.send {
				switch n := seqs[uint64(100+i)]; {
				case n > 1:
					t.Errorf("record %d decoded %d times", i, n)
				case n == 1 && first < 0:
					first = i
				case n == 0 && first >= 0:
					t.Errorf("record %d lost after the templates were resent (before it: %d)", i, first)
				}
			}
			if first > tc.maxLost {
				t.Errorf("first record decoded after the restart is number %d, want at most %d lost", first, tc.maxLost)
			}
			if tc.messages == 0 && first != 20-3 {
				// 3 data messages went out before the restart, so the
				// 21st since the templates is number 17 after it.
				t.Errorf("first record decoded after the restart is number %d, want 17 (the 21st data message since the templates)", first)
			}
		})
	}
}

func TestUDPTemplateRefreshDefaultsFollowRFC7011(t *testing.T) {
	e, err := New(Config{Address: "127.0.0.1:4739", Transport: UDP}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.cfg.TemplateRefreshMessages != 20 || e.cfg.TemplateRefreshInterval != 30*time.Second {
		t.Errorf("defaults: every %d messages or %v, want every 20 messages or 30s", e.cfg.TemplateRefreshMessages, e.cfg.TemplateRefreshInterval)
	}
}
