package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
)

// testConfig is the default configuration with a JSON lines sink, no
// /metrics server, and shorter waits.
func testConfig(t testing.TB, listen ...string) *aggregatorconfig.Config {
	t.Helper()
	cfg := aggregatorconfig.Default()
	cfg.AggregatorID = "test-agg"
	cfg.Listen = listen
	cfg.MetricsAddress = ""
	cfg.Correlation.CorrelationWait = aggregatorconfig.Duration(500 * time.Millisecond)
	cfg.Sinks.JSONL.Enabled = true
	cfg.Sinks.JSONL.Path = filepath.Join(t.TempDir(), "flows.jsonl")
	cfg.Sinks.JSONL.CommitInterval = aggregatorconfig.Duration(20 * time.Millisecond)
	cfg.ShutdownTimeout = aggregatorconfig.Duration(30 * time.Second)
	return &cfg
}

func TestTwoAgentsHalvesBecomeOneRecordOverIPFIX(t *testing.T) {
	for _, transport := range []ipfixexport.Transport{ipfixexport.TCP, ipfixexport.UDP} {
		t.Run(string(transport), func(t *testing.T) {
			ra := startAggregator(t, testConfig(t, string(transport)+"://127.0.0.1:0"))
			addr := ra.addr(t, string(transport))
			nodeA := startAgent(t, addr, transport, 1)
			nodeB := startAgent(t, addr, transport, 2)
			const n = 50
			start := time.Now().Add(-time.Minute).Truncate(time.Second)
			for i := 0; i < n; i++ {
				src, dst := halves(i, start)
				nodeA.export(t, src)
				nodeB.export(t, dst)
			}
			lone, _ := halves(n, start) // its server's node never reports
			nodeA.export(t, lone)
			nodeA.export(t, intraNode(1, start))

			recs := ra.capture.waitFor(t, n+2, 20*time.Second)
			byStatus := map[correlate.Status]int{}
			for _, r := range recs {
				byStatus[r.Correlation]++
				switch r.Correlation {
				case correlate.StatusCorrelated:
					if r.Destination.PodName != "server" || !strings.HasPrefix(r.Source.PodName, "client-") {
						t.Errorf("correlated record lacks a side: %+v / %+v", r.Source, r.Destination)
					}
					if r.L7.AppProtocolName != "http" || !json.Valid([]byte(r.L7.HTTPVals)) || !strings.Contains(r.L7.HTTPVals, "GET /c") ||
						r.L7.DNSQueryName != "web.ns-b.svc" || r.L7.TLSServerName != "server.example" {
						t.Errorf("L7 = %+v: the empty half wiped the full one", r.L7)
					}
					if r.FromSource.Fwd.Packets != 10 || r.FromDestination.Fwd.Packets != 9 {
						t.Errorf("per-node packets %d/%d, want 10/9", r.FromSource.Fwd.Packets, r.FromDestination.Fwd.Packets)
					}
					if r.FromSource.Exporter == r.FromDestination.Exporter {
						t.Errorf("both sides credited to exporter %s", r.FromSource.Exporter)
					}
				case correlate.StatusUnmatched:
					if r.Source.PodName != lone.Source.PodName {
						t.Errorf("unmatched record is %+v, want the lone half", r.Source)
					}
				}
			}
			want := map[correlate.Status]int{correlate.StatusCorrelated: n, correlate.StatusUnmatched: 1, correlate.StatusNotRequired: 1}
			for s, c := range want {
				if byStatus[s] != c {
					t.Errorf("%d %v records, want %d (all: %v)", byStatus[s], s, c, byStatus)
				}
			}
		})
	}
}

func TestMalformedInputIsCountedAndOtherAgentsUnaffected(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:0", "udp://127.0.0.1:0")
	ra := startAggregator(t, cfg)
	tcpAddr, udpAddr := ra.addr(t, "tcp"), ra.addr(t, "udp")
	good := startAgent(t, tcpAddr, ipfixexport.TCP, 7)
	start := time.Now().Add(-time.Minute).Truncate(time.Second)

	tmpl, data := validMessages(t, 9, intraNode(900, start))
	garbage := []struct {
		name    string
		network string
		msgs    [][]byte
	}{
		{"random bytes over TCP", "tcp", [][]byte{[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")}},
		{"truncated message over TCP", "tcp", [][]byte{data[:len(data)/2]}},
		{"data before its template over TCP", "tcp", [][]byte{data}},
		{"wrong version over UDP", "udp", [][]byte{append([]byte{0, 9}, data[2:]...)}},
		{"length beyond datagram over UDP", "udp", [][]byte{tmpl[:20]}},
		{"set length overruns message over UDP", "udp", [][]byte{ipfixMessage(9, 1, []byte{1, 0, 0xff, 0xff, 1, 2})}},
		{"empty datagram", "udp", [][]byte{{}}},
	}
	for i := 0; i < 20; i++ {
		good.export(t, intraNode(i, start))
	}
	for _, g := range garbage {
		c := dial(t, g.network, map[string]string{"tcp": tcpAddr, "udp": udpAddr}[g.network])
		for _, m := range g.msgs {
			if _, err := c.Write(m); err != nil {
				t.Fatalf("%s: write: %v", g.name, err)
			}
		}
		if g.network == "tcp" {
			c.Close()
		}
	}
	for i := 20; i < 40; i++ {
		good.export(t, intraNode(i, start))
	}
	// A template withdrawn-and-resent agent: a new connection with its own
	// templates keeps working alongside.
	c := dial(t, "tcp", tcpAddr)
	for _, m := range [][]byte{tmpl, data} {
		if _, err := c.Write(m); err != nil {
			t.Fatal(err)
		}
	}
	recs := ra.capture.waitFor(t, 41, 20*time.Second)
	seen := map[uint16]bool{}
	for _, r := range recs {
		if r.FlowType != flow.FlowTypeIntraNode {
			t.Errorf("unexpected record %+v", r.Record)
		}
		seen[r.Tuple.SrcPort] = true
	}
	if len(seen) != 41 {
		t.Errorf("%d distinct connections arrived, want 41", len(seen))
	}
	if got := counterSum(t, ra.reg, "flowlens_ipfix_collector_errors_total"); got < 4 {
		t.Errorf("collector errors = %v, want the malformed input counted", got)
	}
	if got := counterSum(t, ra.reg, "flowlens_aggregator_input_records_total"); got != 41 {
		t.Errorf("input records = %v, want 41", got)
	}
}
