package correlate

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/l7"
)

func TestCountL7(t *testing.T) {
	tests := []struct {
		name string
		l    flow.L7
		want L7Counts
	}{
		{"nothing", flow.L7{}, L7Counts{}},
		{"status classes", flow.L7{HTTPVals: `{"0":{"status":200},"1":{"status":404},"2":{"status":499},"3":{"status":500},"4":{"status":503},"5":{"status":400}}`},
			L7Counts{HTTPRequests: 6, HTTP4xx: 3, HTTP5xx: 2}},
		{"no response is a request, neither class", flow.L7{HTTPVals: `{"7":{"http_method":"GET","status":0},"8":{"http_method":"GET"}}`},
			L7Counts{HTTPRequests: 2}},
		{"null and empty values are no transaction", flow.L7{HTTPVals: `{"0":null,"1":"","2":{"status":502}}`},
			L7Counts{HTTPRequests: 1, HTTP5xx: 1}},
		{"quoted status", flow.L7{HTTPVals: `{"0":{"status":"418"}}`}, L7Counts{HTTPRequests: 1, HTTP4xx: 1}},
		{"DNS NOERROR", flow.L7{DNSQueryName: "a.example", DNSResponseCode: "NOERROR"}, L7Counts{}},
		{"DNS NXDOMAIN", flow.L7{DNSQueryName: "a.example", DNSResponseCode: "NXDOMAIN"}, L7Counts{DNSErrors: 1}},
		{"DNS SERVFAIL", flow.L7{DNSQueryName: "a.example", DNSResponseCode: "SERVFAIL"}, L7Counts{DNSErrors: 1}},
		{"DNS query without response", flow.L7{DNSQueryName: "a.example"}, L7Counts{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CountL7(&tt.l)
			if err != nil || got != tt.want {
				t.Errorf("CountL7 = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	if _, err := CountL7(&flow.L7{HTTPVals: `[1,2]`}); err == nil {
		t.Error("CountL7 accepted an httpVals that is not an object")
	}
}

// A transaction both nodes logged (same id in both halves' httpVals) is
// one request of the merged row, and the row after it carries none of it.
func TestL7CountsOfACorrelatedRowCountEachTransactionOnce(t *testing.T) {
	c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
	var out collected
	src, dst := srcHalf(flow.EndActiveTimeout), dstHalf(flow.EndActiveTimeout)
	src.Record.L7.HTTPVals = `{"1":{"status":200},"2":{"status":503}}`
	dst.Record.L7.HTTPVals = `{"2":{"status":503},"3":{"status":404}}`
	c.Add(&src, t0, out.emit)
	c.Add(&dst, t0.Add(time.Second), out.emit)
	c.Flush(out.emit)
	if len(out) != 1 {
		t.Fatalf("%d rows, want 1", len(out))
	}
	if want := (L7Counts{HTTPRequests: 3, HTTP4xx: 1, HTTP5xx: 1}); out[0].L7Counts != want {
		t.Errorf("L7Counts = %+v, want %+v", out[0].L7Counts, want)
	}
}

func eveLines(t *testing.T, name string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "eve", name))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if b, err = io.ReadAll(zr); err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte{'\n'}), []byte{'\n'})
}

type eveConns map[flow.Tuple]flow.Conn

func (m eveConns) LookupConn(t flow.Tuple) (flow.Conn, bool) { c, ok := m[t]; return c, ok }

type everyoneOptsIn struct{}

func (everyoneOptsIn) L7Want(*flow.Conn) flow.L7Want { return flow.L7Source | flow.L7Destination }

// Real Suricata output (7.0.10 and 8.0.7, the files pkg/l7's tests use) goes
// through the agent's L7 stage (pkg/l7) into records, and the records
// through the correlator: the rows' counts must equal what the EVE events
// say, counted here straight from the events. Each event's record is
// exported at once, so every transaction is in exactly one row.
func TestL7CountsOfRealSuricataRecords(t *testing.T) {
	for _, name := range []string{
		"suricata-7.0.10/eve-http.json.gz", "suricata-8.0.7/eve-http.json.gz",
		"suricata-7.0.10/eve.json.gz", "suricata-8.0.7/eve.json.gz",
	} {
		t.Run(name, func(t *testing.T) {
			conns := eveConns{}
			enr, err := l7.New(l7.Config{Connections: conns, Policy: everyoneOptsIn{},
				MaxHTTPTransactions: 1 << 20, MaxHTTPBytes: 65535}, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			corr := newTestCorrelator(t, Config{})
			var out collected
			var want L7Counts
			now := t0
			for _, line := range eveLines(t, name) {
				ev, err := eve.ParseLine(line)
				if err != nil {
					continue // rejected lines (stats) carry nothing
				}
				c, ok := conns[ev.Tuple]
				if !ok {
					c = flow.Conn{Tuple: ev.Tuple, OrigDstIP: ev.Tuple.DstIP, OrigDstPort: ev.Tuple.DstPort}
					conns[c.Tuple], conns[c.Tuple.Reverse()] = c, c
				}
				// A request is an http record naming a method, URL, host or
				// status. Records with none are no request: HTTP/2 SETTINGS
				// frames (stream 0), and the empty record Suricata logs for
				// the tunnel after a CONNECT; the agent leaves them out of
				// httpVals.
				noRequest := func(h *eve.HTTP) bool {
					return h.Method == "" && h.URL == "" && h.Hostname == "" && h.Status == 0
				}
				if h := ev.HTTP; ev.Type == "http" && h != nil && !noRequest(h) {
					want.HTTPRequests++
					switch {
					case h.Status >= 500:
						want.HTTP5xx++
					case h.Status >= 400:
						want.HTTP4xx++
					}
				}
				if d := ev.DNS; ev.Type == "dns" && d != nil && d.Response && d.RCode != "" && d.RCode != "NOERROR" {
					want.DNSErrors++
				}
				enr.Ingest(ev, now)
				r := flow.Record{Conn: c, EndReason: flow.EndOfFlow, FlowType: flow.FlowTypeIntraNode, ExportNanos: now.UnixNano()}
				enr.Enrich(&r)
				corr.Add(&Input{Record: r, Exporter: "node-a"}, now, out.emit)
				now = now.Add(time.Millisecond)
			}
			corr.Flush(out.emit)
			var got L7Counts
			for _, r := range out {
				got.HTTPRequests += r.L7Counts.HTTPRequests
				got.HTTP4xx += r.L7Counts.HTTP4xx
				got.HTTP5xx += r.L7Counts.HTTP5xx
				got.DNSErrors += r.L7Counts.DNSErrors
			}
			if got != want {
				t.Errorf("summed row counts %+v, want %+v (from the EVE events)", got, want)
			}
			t.Logf("%d rows: %+v", len(out), got)
		})
	}
}
