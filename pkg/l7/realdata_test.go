package l7

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/connstore"
	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
)

func testdataLines(tb testing.TB, name string) [][]byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("../../testdata/eve", name))
	if err != nil {
		tb.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		tb.Fatal(err)
	}
	if b, err = io.ReadAll(zr); err != nil {
		tb.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte{'\n'}), []byte{'\n'})
}

func parse(tb testing.TB, line []byte) eve.Event {
	tb.Helper()
	ev, err := eve.ParseLine(line)
	if err != nil {
		tb.Fatal(err)
	}
	return ev
}

func TestSuricata7And8DNSAnswersOfOppositeOrientationMatchOneConnection(t *testing.T) {
	// The same NXDOMAIN answer: 7.0.10 logs it client->server, 8.0.7
	// server->client. Both must land on the store's client->server entry.
	v7 := parse(t, testdataLines(t, "suricata-7.0.10/eve.json.gz")[214])
	v8 := parse(t, testdataLines(t, "suricata-8.0.7/eve.json.gz")[131])
	if v7.Tuple != v8.Tuple.Reverse() {
		t.Fatalf("fixtures changed: %v vs %v", v7.Tuple, v8.Tuple)
	}
	for _, ev := range []eve.Event{v7, v8} {
		h := newHarness(t, nil)
		c := flow.Conn{Tuple: v7.Tuple, OrigDstIP: v7.Tuple.DstIP, OrigDstPort: v7.Tuple.DstPort}
		h.conns.add(c)
		h.pol[c.Tuple] = flow.L7Source
		h.e.Ingest(ev, t0)
		r := h.export(c, flow.EndOfFlow)
		if r.L7.DNSQueryName != "softupdates.info" || r.L7.DNSQueryType != "A" || r.L7.DNSResponseCode != "NXDOMAIN" || r.L7.AppProtocolName != "dns" {
			t.Errorf("DNS v%d: L7 = %+v", ev.DNS.Version, r.L7)
		}
	}
}

func TestEveryHTTPRecordOfBothVersionsYieldsValidHTTPVals(t *testing.T) {
	for _, name := range []string{"suricata-7.0.10/eve-http.json.gz", "suricata-8.0.7/eve-http.json.gz"} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.MaxHTTPTransactions = 1 << 20; c.MaxHTTPBytes = 65535 })
			lines := testdataLines(t, name)
			conns := map[flow.Tuple]flow.Conn{}
			for _, l := range lines {
				ev := parse(t, l)
				c, ok := conns[ev.Tuple]
				if !ok {
					if rc, ok := conns[ev.Tuple.Reverse()]; ok {
						c = rc
					} else {
						c = flow.Conn{Tuple: ev.Tuple, OrigDstIP: ev.Tuple.DstIP, OrigDstPort: ev.Tuple.DstPort}
						conns[ev.Tuple] = c
						h.conns.add(c)
						h.pol[c.Tuple] = flow.L7Destination
					}
				}
				h.e.Ingest(ev, t0)
			}
			for _, c := range conns {
				r := h.export(c, flow.EndOfFlow)
				if r.L7.AppProtocolName != "http" && r.L7.AppProtocolName != "http2" {
					t.Errorf("%v: app protocol %q", c.Tuple, r.L7.AppProtocolName)
				}
				if r.L7.HTTPVals != "" && !json.Valid([]byte(r.L7.HTTPVals)) {
					t.Errorf("%v: invalid httpVals %s", c.Tuple, r.L7.HTTPVals)
				}
			}
			if got := value(t, h.m.matched); got != float64(len(lines)) {
				t.Errorf("matched %v of %d events", got, len(lines))
			}
		})
	}
}

// BenchmarkParseAndMatchHTTP measures the agent's per-line cost for EVE
// http records as its loop pays it, on one core (GOMAXPROCS=1, as the
// loop is one goroutine): parse, look the connection up in the real
// connection store (pkg/connstore, the one the agent uses, filled with
// the file's connections), gate, accumulate; then one Enrich per
// connection per pass over the file, as an export tick would. Each
// iteration processes every line of the Suricata 7.0.10 http file once, so
// -benchtime 1x is still a meaningful measurement. The baseline, measured
// in the same run over the same lines, is encoding/json into
// map[string]any (parsing only).
func BenchmarkParseAndMatchHTTP(b *testing.B) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	lines := testdataLines(b, "suricata-7.0.10/eve-http.json.gz")
	queue, err := expirequeue.New(expirequeue.Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	conns, err := connstore.New(connstore.Config{MaxConnections: len(lines), Scheduler: queue, Emit: func(*flow.Record) {}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	pol := fakePolicy{}
	var tuples []flow.Tuple
	now := time.Now()
	for i, l := range lines {
		ev := parse(b, l)
		if _, ok := conns.LookupConn(ev.Tuple); ok {
			continue
		}
		c := flow.Conn{Tuple: ev.Tuple, OrigDstIP: ev.Tuple.DstIP, OrigDstPort: ev.Tuple.DstPort,
			ID: uint32(i + 1), StartNanos: now.UnixNano(), TCPState: flow.TCPStateEstablished}
		conns.Upsert(&c, now)
		if _, ok := conns.LookupConn(ev.Tuple); !ok {
			b.Fatalf("store does not find connection %s just added", ev.Tuple)
		}
		pol[c.Tuple] = flow.L7Destination
		tuples = append(tuples, c.Tuple)
	}
	e, err := New(Config{Connections: conns, Policy: pol}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d lines, %d connections", len(lines), len(tuples))
	var bytesTotal int
	for _, l := range lines {
		bytesTotal += len(l) + 1
	}
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	b.SetBytes(int64(bytesTotal))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for _, l := range lines {
			ev, err := eve.ParseLine(l)
			if err != nil {
				b.Fatal(err)
			}
			e.Ingest(ev, now)
		}
		for _, t := range tuples {
			r := flow.Record{Conn: flow.Conn{Tuple: t}, EndReason: flow.EndActiveTimeout}
			e.Enrich(&r)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	n := float64(b.N * len(lines))
	b.ReportMetric(n/elapsed.Seconds(), "lines/s")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/n, "allocs/line")

	// Baseline: generic decode of the same lines.
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	start = time.Now()
	for i := 0; i < max(b.N, 1); i++ {
		for _, l := range lines {
			var m map[string]any
			if err := json.Unmarshal(l, &m); err != nil {
				b.Fatal(err)
			}
		}
	}
	elapsed = time.Since(start)
	runtime.ReadMemStats(&ms1)
	n = float64(max(b.N, 1) * len(lines))
	b.ReportMetric(n/elapsed.Seconds(), "baseline-map-lines/s")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/n, "baseline-map-allocs/line")
}
