package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/jsonl"
	"github.com/flowlens/flowlens/test/netnstest"
)

func TestAgentConfigIsAcceptedByTheAgentLoader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	// The loader checks that the namespace exists; any netns file will do.
	const netnsPath = "/proc/self/ns/net"
	inv := filepath.Join(t.TempDir(), "inventory.yaml")
	if err := os.WriteFile(inv, []byte("entries: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, eveSock := range []string{"", "/run/demo/eve.sock"} {
		o := agentOptions{netnsPath: netnsPath, collectorPort: 4739, inventory: inv, eveSocket: eveSock}
		if err := os.WriteFile(path, []byte(agentConfig(o)), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := agentconfig.Load(path)
		if err != nil {
			t.Fatalf("agent rejects the demo's config (eve socket %q): %v", eveSock, err)
		}
		if cfg.NodeName != nodeName || cfg.Conntrack.NetNS != netnsPath ||
			cfg.Export.Collector != "127.0.0.1:4739" || cfg.Export.Transport != "tcp" ||
			cfg.Inventory.File != inv || !*cfg.Export.L7DetailElements || !*cfg.Export.HealthElements {
			t.Fatalf("config read back as %+v", cfg)
		}
		wantSource := ""
		if eveSock != "" {
			wantSource = "unix_stream"
		}
		if cfg.L7.EVE.Source != wantSource || (eveSock != "" && cfg.L7.EVE.Path != eveSock) {
			t.Fatalf("l7 config read back as %+v, want source %q path %q", cfg.L7.EVE, wantSource, eveSock)
		}
	}
}

func TestAggregatorConfigNamesTheChosenSink(t *testing.T) {
	for _, o := range []aggregatorOptions{
		{listenPort: 4739, sink: sinkClickHouse, clickhouseAddr: "127.0.0.1:19000"},
		{listenPort: 4739, sink: sinkJSONL, jsonlPath: "/tmp/demo/flows.jsonl"},
	} {
		// The aggregator's own loader (package main there) reads it in the
		// integration test; here, the shape.
		var cfg struct {
			Listen []string                  `json:"listen"`
			Sinks  map[string]map[string]any `json:"sinks"`
		}
		if err := yaml.Unmarshal([]byte(aggregatorConfig(o)), &cfg); err != nil {
			t.Fatalf("%s config is not YAML: %v\n%s", o.sink, err, aggregatorConfig(o))
		}
		if len(cfg.Listen) != 1 || cfg.Listen[0] != "tcp://127.0.0.1:4739" {
			t.Errorf("%s: listen %v", o.sink, cfg.Listen)
		}
		s, ok := cfg.Sinks[o.sink]
		if !ok || len(cfg.Sinks) != 1 || s["enabled"] != true {
			t.Fatalf("%s: sinks %v", o.sink, cfg.Sinks)
		}
		if o.sink == sinkClickHouse && (s["addr"] != o.clickhouseAddr || s["table"] != chTable) {
			t.Errorf("clickhouse sink %v", s)
		}
		if o.sink == sinkJSONL && s["path"] != o.jsonlPath {
			t.Errorf("jsonl sink %v", s)
		}
	}
}

func TestChooseSink(t *testing.T) {
	for _, v := range []string{sinkClickHouse, sinkJSONL} {
		if got, why, err := chooseSink(v); got != v || why != "" || err != nil {
			t.Errorf("chooseSink(%q) = %q, %q, %v", v, got, why, err)
		}
	}
	got, why, err := chooseSink(sinkAuto)
	if err != nil || (got == sinkJSONL) != (why != "") || (got == sinkClickHouse) != clickhouseInstalled() {
		t.Errorf("chooseSink(auto) = %q, %q, %v (clickhouse installed: %v)", got, why, err, clickhouseInstalled())
	}
	if _, _, err := chooseSink("kafka"); err == nil {
		t.Error("chooseSink accepted an unknown sink")
	}
}

// rowsOf parses JSON lines the way the JSON lines reader does.
func rowsOf(t *testing.T, lines ...string) []row {
	t.Helper()
	rows, bad := parseJSONL([]byte(strings.Join(lines, "\n")))
	if bad != 0 {
		t.Fatalf("%d lines not rows: %v", bad, lines)
	}
	return rows
}

// lineOf is the JSON line the sink writes for the demo's TCP transfer
// after edit changed its record.
func lineOf(edit func(r *correlate.Record)) string {
	r := &correlate.Record{Correlation: correlate.StatusNotRequired}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("10.244.0.4"), 40000, 9000, flow.ProtoTCP)
	r.OrigDstIP, r.OrigDstPort = netip.MustParseAddr("10.96.0.2").As16(), 9000
	r.FlowType = flow.FlowTypeIntraNode
	edit(r)
	return string(sink.AppendJSON(nil, r, &sink.Meta{Aggregator: "demo", BatchID: 1}))
}

func TestL7ColumnSummarisesEachProtocol(t *testing.T) {
	for _, tc := range []struct {
		name string
		l7   flow.L7
		want string
	}{
		{"http transactions in id order, query already dropped by the agent",
			flow.L7{AppProtocolName: "http", HTTPVals: `{"10":{"http_method":"GET","hostname":"10.96.0.0","url":"/b","status":200},"2":{"http_method":"GET","hostname":"10.96.0.0","url":"/status/404","status":404}}`},
			"http GET 10.96.0.0/status/404 404 GET 10.96.0.0/b 200"},
		{"dns question and answer",
			flow.L7{AppProtocolName: "dns", DNSQueryName: "web.demo.test", DNSQueryType: "A", DNSResponseCode: "NOERROR", DNSAnswers: "10.96.0.1"},
			"dns A web.demo.test NOERROR 10.96.0.1"},
		{"tls server name and version",
			flow.L7{AppProtocolName: "tls", TLSServerName: "secure.demo.test", TLSVersion: "TLS 1.3"},
			"tls secure.demo.test TLS 1.3"},
		{"no L7", flow.L7{}, "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows := rowsOf(t, lineOf(func(r *correlate.Record) { r.L7 = tc.l7 }))
			if got := l7Summary(&rows[0]); got != tc.want {
				t.Errorf("l7Summary = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestL7FieldsOfEarlierRowsStayWithTheConnection(t *testing.T) {
	// The active-timeout row carried the transaction; the final row of a
	// connection the aggregator saw again does not, but the table shows
	// the final one.
	active := lineOf(func(r *correlate.Record) {
		activeRecord(r)
		r.L7 = flow.L7{AppProtocolName: "http", HTTPVals: `{"0":{"http_method":"GET","hostname":"h","url":"/","status":200}}`}
	})
	final := lineOf(func(r *correlate.Record) {
		endRecord(r)
		r.L7 = flow.L7{}
	})
	v := summarize(rowsOf(t, active, final))
	r := v.latest[demoFlow().key()]
	if r == nil || !r.ended() || l7Summary(r) != "http GET h/ 200" {
		t.Fatalf("final row %+v, L7 column %q", r, l7Summary(r))
	}
}

// demoFlow is the TCP transfer the tests pretend the demo made.
func demoFlow() expected {
	backend := &netnstest.Pod{Name: "echo", Namespace: "default", IPv4: netip.MustParseAddr("10.244.0.4")}
	return expected{
		What: "tcp transfer", Proto: flow.ProtoTCP, Src: netip.MustParseAddrPort("10.244.0.2:40000"),
		Service: netnstest.Service{VIP: netip.MustParseAddr("10.96.0.2"), Port: 9000, TargetPort: 9000, Backend: backend},
		Sent:    1 << 20, Received: 64 << 10,
	}
}

// activeRecord and endRecord make an active-timeout and the final record
// of the demo's TCP transfer.
func activeRecord(r *correlate.Record) {
	r.EndReason = flow.EndActiveTimeout
	r.Fwd, r.Rev = flow.Counters{Packets: 10, Bytes: 5000}, flow.Counters{Packets: 5, Bytes: 300}
}

func endRecord(r *correlate.Record) {
	r.EndReason = flow.EndOfFlow
	r.Fwd, r.Rev = flow.Counters{Packets: 40, Bytes: 1050000}, flow.Counters{Packets: 30, Bytes: 67000}
	r.Source.PodName, r.ServicePortName = "client", "default/echo:tcp-9000"
	r.L7.AppProtocolName = "http"
}

// The JSON lines sink's own encoding must read back as the same row.
func TestJSONLSinkRowsReadBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	w, err := jsonl.New(jsonl.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	rec := &correlate.Record{Correlation: correlate.StatusNotRequired}
	rec.Tuple = flow.Tuple{Proto: flow.ProtoTCP, SrcPort: 40000, DstPort: 9000}
	rec.Tuple.SrcIP = netip.MustParseAddr("10.244.0.2").As16()
	rec.Tuple.DstIP = netip.MustParseAddr("10.244.0.4").As16()
	rec.OrigDstIP, rec.OrigDstPort = netip.MustParseAddr("10.96.0.2").As16(), 9000
	rec.EndReason, rec.Fwd.Bytes, rec.Fwd.Packets = flow.EndOfFlow, 1050000, 40
	rec.L7.HTTPVals = `{"0":{"http_method":"GET","hostname":"h","url":"/","status":200}}`
	if _, err := w.Write(context.Background(), &sink.Batch{Records: []*correlate.Record{rec}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	jr := &jsonlReader{path: path}
	rows, err := jr.read(context.Background())
	if err != nil || len(rows) != 1 || jr.bad != 0 {
		t.Fatalf("read %d rows, %d bad, err %v", len(rows), jr.bad, err)
	}
	r := &rows[0]
	if r.key() != demoFlow().key() || !r.ended() || r.dst() != demoFlow().Dst() || service(r) != "10.96.0.2:9000" ||
		l7Summary(r) != "GET h/ 200" || r.Str("correlation") != "not-required" {
		t.Fatalf("row read back as %+v", r)
	}
}

func TestSummarizeKeepsTheLatestRowPerConnection(t *testing.T) {
	// The end row is stored before a stale active one (a retried batch):
	// the table must still show the final totals.
	rows, bad := parseJSONL([]byte(lineOf(endRecord) + "\nnot json\n" + lineOf(activeRecord) + "\n[]\n" +
		`{"sourceIP":"10.244.0.2","flowEndReason":"end-of-flow"}` + "\n"))
	if len(rows) != 2 || bad != 3 {
		t.Fatalf("%d rows, %d bad, want 2 and 3 (not JSON, not an object, a column of the wrong type)", len(rows), bad)
	}
	v := summarize(rows)
	r, ok := v.latest[demoFlow().key()]
	if !ok {
		t.Fatalf("row not matched to the demo's connection; have %v", v.latest)
	}
	if r.Num("octetTotalCount") != 1050000 || !r.ended() || endName(r) != "end-of-flow" || v.rows[demoFlow().key()] != 2 || v.total != 2 {
		t.Fatalf("latest row is %+v (view %+v)", r, v)
	}
	if seen, ended := progress([]expected{demoFlow()}, v.latest); seen != 1 || ended != 1 {
		t.Fatalf("progress %d/%d", seen, ended)
	}
}

func TestTableShowsServiceCountersAndMissingFlows(t *testing.T) {
	v := summarize(rowsOf(t, lineOf(activeRecord), lineOf(endRecord)))
	other := demoFlow()
	other.Src = netip.MustParseAddrPort("10.244.0.2:40001")
	other.What = "lost one"
	var out bytes.Buffer
	missing := printTable(&out, []expected{demoFlow(), other}, &v, func(a netip.Addr) string {
		if a == netip.MustParseAddr("10.244.0.4") {
			return "echo"
		}
		return ""
	})
	got := out.String()
	if missing != 1 {
		t.Errorf("missing = %d, want 1", missing)
	}
	for _, want := range []string{"client 10.244.0.2:40000", "echo 10.244.0.4:9000", "10.96.0.2:9000 (default/echo:tcp-9000)", "1.0Mi", "65Ki",
		"end-of-flow", "http", "not-required", "NO ROW", "CORRELATION"} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}

func TestListensOn(t *testing.T) {
	proc := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
`
	if !listensOn([]byte(proc), "0100007F:1F90") {
		t.Error("listening socket not found")
	}
	if listensOn([]byte(proc), "0100007F:1F91") {
		t.Error("established socket taken for a listener")
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 9999: "9999", 65536: "64Ki", 1 << 20: "1.0Mi", 20 << 20: "20Mi"} {
		if got := size(n); got != want {
			t.Errorf("size(%d) = %q, want %q", n, got, want)
		}
	}
}

// The RTT, DROPS and NAME columns sum every row of a connection (each row
// carries its own period) and show "-" where nothing was measured.
func TestTableShowsHealthOverAllRowsOfAConnection(t *testing.T) {
	active := lineOf(func(r *correlate.Record) {
		activeRecord(r)
		r.Health = flow.Health{RTTMinMicros: 100, RTTAvgMicros: 200, RTTMaxMicros: 900, RTTSamples: 3, FwdDrops: 2, DropReason: "NETFILTER_DROP"}
		r.DestinationName = "echo.demo.test"
	})
	final := lineOf(func(r *correlate.Record) {
		endRecord(r)
		r.Health = flow.Health{RTTMinMicros: 300, RTTAvgMicros: 400, RTTMaxMicros: 1500, RTTSamples: 1, RevDrops: 5, DropReason: "TCP_OFO_DROP"}
	})
	v := summarize(rowsOf(t, active, final))
	other := demoFlow()
	other.Src = netip.MustParseAddrPort("10.244.0.2:40001")
	otherLine := lineOf(func(r *correlate.Record) {
		endRecord(r)
		r.Tuple.SrcPort = 40001
	})
	v2 := summarize(rowsOf(t, active, final, otherLine))
	var out bytes.Buffer
	printTable(&out, []expected{demoFlow(), other}, &v2, func(netip.Addr) string { return "" })
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "RTT AVG/MAX") || !strings.Contains(lines[0], "DROPS") || !strings.Contains(lines[0], "NAME") {
		t.Fatalf("table:\n%s", out.String())
	}
	// Mean over 4 samples (200×3 + 400)/4 = 250µs, the largest 1.5ms;
	// 2 dropped one way, 5 the other, the reason of the most.
	for _, want := range []string{"250µs/1.5ms", "2 > / 5 < TCP_OFO_DROP", "echo.demo.test"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row lacks %q: %s", want, lines[1])
		}
	}
	if h := v.health[demoFlow().key()]; h.rtt() != "250µs/1.5ms" {
		t.Errorf("rtt %q", h.rtt())
	}
	// The other connection measured nothing: "-" in each of the three
	// columns (tabwriter aligns them under their headers), not zeros.
	for _, col := range []string{"RTT AVG/MAX", "DROPS", "NAME"} {
		i := strings.Index(lines[0], col)
		if i < 0 || i+2 > len(lines[2]) || lines[2][i:i+2] != "- " {
			t.Errorf("row without health: column %s does not show -:\n%s\n%s", col, lines[0], lines[2])
		}
	}
	var nilHealth *connHealth
	if nilHealth.rtt() != "-" || nilHealth.drops() != "-" || nilHealth.destName() != "-" {
		t.Error("a connection without rows should show -")
	}
}
