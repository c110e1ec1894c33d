package l7

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
)

// fakeConns stands in for pkg/connstore: LookupConn finds a connection
// from either orientation and from the Service VIP form, as the store does.
type fakeConns struct {
	m map[flow.Tuple]flow.Conn
}

func (f *fakeConns) add(c flow.Conn) {
	if f.m == nil {
		f.m = map[flow.Tuple]flow.Conn{}
	}
	f.m[c.Tuple] = c
	f.m[c.Tuple.Reverse()] = c
	if c.IsDNATed() {
		vip := c.Tuple
		vip.DstIP, vip.DstPort = c.OrigDstIP, c.OrigDstPort
		f.m[vip] = c
		f.m[vip.Reverse()] = c
	}
}

func (f *fakeConns) LookupConn(t flow.Tuple) (flow.Conn, bool) {
	c, ok := f.m[t]
	return c, ok
}

// fakePolicy answers per connection tuple; unknown connections want none.
type fakePolicy map[flow.Tuple]flow.L7Want

func (p fakePolicy) L7Want(c *flow.Conn) flow.L7Want { return p[c.Tuple] }

var (
	client = netip.MustParseAddr("10.0.1.5")
	server = netip.MustParseAddr("10.0.2.7")
	vip    = netip.MustParseAddr("10.96.0.10")
	t0     = time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
)

func conn(src, dst netip.Addr, sp, dp uint16) flow.Conn {
	t := flow.NewTuple(src, dst, sp, dp, flow.ProtoTCP)
	return flow.Conn{Tuple: t, OrigDstIP: t.DstIP, OrigDstPort: t.DstPort}
}

func httpEvent(t flow.Tuple, tx uint64, url string) eve.Event {
	return eve.Event{
		Tuple: t, Type: "http", AppProto: "http", TxID: tx, HasTxID: true,
		HTTP: &eve.HTTP{Hostname: "svc.example", URL: url, UserAgent: "curl/8.0", ContentType: "text/plain",
			Method: "GET", Protocol: "HTTP/1.1", Status: 200, Length: 12, TxID: tx},
	}
}

type harness struct {
	e     *Enricher
	conns *fakeConns
	pol   fakePolicy
	m     *metrics
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{conns: &fakeConns{}, pol: fakePolicy{}}
	cfg := Config{Connections: h.conns, Policy: h.pol}
	if mod != nil {
		mod(&cfg)
	}
	var err error
	// A registry of its own checks that the metrics register.
	if h.e, err = New(cfg, prometheus.NewRegistry()); err != nil {
		t.Fatalf("New: %v", err)
	}
	h.m = h.e.m
	return h
}

func value(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

func (h *harness) export(c flow.Conn, reason flow.EndReason) flow.Record {
	r := flow.Record{Conn: c, EndReason: reason, ExportNanos: t0.UnixNano()}
	h.e.Enrich(&r)
	return r
}

func TestOptInGating(t *testing.T) {
	c := conn(client, server, 40000, 80)
	tests := []struct {
		name string
		want flow.L7Want
		kept bool
	}{
		{"ingress: destination pod opted in", flow.L7Destination, true},
		{"egress: source pod opted in", flow.L7Source, true},
		{"both ends opted in", flow.L7Source | flow.L7Destination, true},
		{"no annotation: event dropped and counted", flow.L7None, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.conns.add(c)
			h.pol[c.Tuple] = tt.want
			h.e.Ingest(httpEvent(c.Tuple, 0, "/a"), t0)
			r := h.export(c, flow.EndActiveTimeout)
			if got := r.L7.HTTPVals != ""; got != tt.kept {
				t.Errorf("httpVals %q, kept=%v want %v", r.L7.HTTPVals, got, tt.kept)
			}
			wantDropped := 0.0
			if !tt.kept {
				wantDropped = 1
			}
			if got := value(t, h.m.dropped[dropNotWanted]); got != wantDropped {
				t.Errorf("not_wanted drops %v, want %v", got, wantDropped)
			}
		})
	}
}

func TestMatchingIgnoresOrientationAndSeesThroughServiceNAT(t *testing.T) {
	// Client dialled the VIP; the store keys the connection with the real
	// endpoint as destination.
	c := conn(client, server, 40000, 8080)
	c.OrigDstIP, c.OrigDstPort = netip.AddrFrom4(vip.As4()).As16(), 80
	tests := []struct {
		name  string
		tuple flow.Tuple
	}{
		{"client to endpoint", c.Tuple},
		{"endpoint to client (responses, Suricata 8 DNS)", c.Tuple.Reverse()},
		{"client to Service VIP (sensor before DNAT)", flow.NewTuple(client, vip, 40000, 80, flow.ProtoTCP)},
		{"Service VIP to client", flow.NewTuple(vip, client, 80, 40000, flow.ProtoTCP)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.conns.add(c)
			h.pol[c.Tuple] = flow.L7Destination
			h.e.Ingest(httpEvent(tt.tuple, 4, "/x"), t0)
			r := h.export(c, flow.EndOfFlow)
			if r.L7.AppProtocolName != "http" || !strings.Contains(r.L7.HTTPVals, `"4":`) {
				t.Errorf("L7 = %+v, want the transaction on the store's connection", r.L7)
			}
		})
	}
}

func TestHTTPValsStaysOneJSONObjectAcrossManyIngestsBetweenExports(t *testing.T) {
	// Antrea concatenated one object per poll ({..}{..}) when two polls fell
	// between exports; here any number of ingests gives one object.
	h := newHarness(t, nil)
	c := conn(client, server, 40000, 80)
	h.conns.add(c)
	h.pol[c.Tuple] = flow.L7Source | flow.L7Destination
	for round := 0; round < 3; round++ {
		for i := 0; i < 10; i++ {
			tx := uint64(round*10 + i)
			h.e.Ingest(httpEvent(c.Tuple, tx, fmt.Sprintf("/r%d/%d?secret=1", round, i)), t0)
		}
		r := h.export(c, flow.EndActiveTimeout)
		var vals map[string]map[string]any
		if err := json.Unmarshal([]byte(r.L7.HTTPVals), &vals); err != nil {
			t.Fatalf("round %d: httpVals is not one JSON object: %v\n%s", round, err, r.L7.HTTPVals)
		}
		if len(vals) != 10 {
			t.Fatalf("round %d: %d transactions, want the 10 since the previous export", round, len(vals))
		}
		for i := 0; i < 10; i++ {
			key := strconv.Itoa(round*10 + i)
			v, ok := vals[key]
			if !ok {
				t.Fatalf("round %d: no transaction %q in %s", round, key, r.L7.HTTPVals)
			}
			wantURL := fmt.Sprintf("/r%d/%d", round, i) // query string dropped by default
			if v["url"] != wantURL || v["hostname"] != "svc.example" || v["http_method"] != "GET" ||
				v["status"] != 200.0 || v["length"] != 12.0 || v["protocol"] != "HTTP/1.1" ||
				v["http_user_agent"] != "curl/8.0" || v["http_content_type"] != "text/plain" {
				t.Errorf("round %d tx %s = %v", round, key, v)
			}
		}
	}
}

func TestEnrichExportsEachTransactionOnce(t *testing.T) {
	h := newHarness(t, nil)
	c := conn(client, server, 40000, 80)
	h.conns.add(c)
	h.pol[c.Tuple] = flow.L7Destination
	h.e.Ingest(httpEvent(c.Tuple, 0, "/a"), t0)

	first := h.export(c, flow.EndActiveTimeout)
	if first.L7.HTTPVals == "" {
		t.Fatal("first record has no httpVals")
	}
	second := h.export(c, flow.EndActiveTimeout)
	if second.L7.HTTPVals != "" {
		t.Errorf("second record repeats httpVals %q", second.L7.HTTPVals)
	}
	if second.L7.AppProtocolName != "http" {
		t.Errorf("app protocol %q not kept for the connection's later records", second.L7.AppProtocolName)
	}
	final := h.export(c, flow.EndOfFlow)
	if final.L7.AppProtocolName != "http" {
		t.Errorf("final record app protocol %q", final.L7.AppProtocolName)
	}
	if got := value(t, h.m.connections); got != 0 {
		t.Errorf("%v connections hold state after the final record, want 0", got)
	}
	untouched := flow.Record{Conn: c, L7: flow.L7{AppProtocolName: "set-elsewhere"}}
	h.e.Enrich(&untouched)
	if untouched.L7.AppProtocolName != "set-elsewhere" {
		t.Errorf("record without state was modified: %+v", untouched.L7)
	}
}

func TestHTTPValsBounds(t *testing.T) {
	tests := []struct {
		name      string
		maxTx     int
		maxBytes  int
		ingest    int
		wantTx    int
		truncated map[string]float64
	}{
		{name: "transaction bound", maxTx: 3, maxBytes: 65535, ingest: 5, wantTx: 3, truncated: map[string]float64{"transactions": 2}},
		{name: "byte bound", maxTx: 100, maxBytes: 600, ingest: 10, wantTx: 2, truncated: map[string]float64{"bytes": 8}},
		{name: "within bounds", maxTx: 100, maxBytes: 65535, ingest: 10, wantTx: 10, truncated: map[string]float64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.MaxHTTPTransactions, c.MaxHTTPBytes = tt.maxTx, tt.maxBytes })
			c := conn(client, server, 40000, 80)
			h.conns.add(c)
			h.pol[c.Tuple] = flow.L7Destination
			for i := 0; i < tt.ingest; i++ {
				h.e.Ingest(httpEvent(c.Tuple, uint64(i), "/"+strings.Repeat("p", 100)), t0)
			}
			r := h.export(c, flow.EndActiveTimeout)
			var vals map[string]any
			if err := json.Unmarshal([]byte(r.L7.HTTPVals), &vals); err != nil {
				t.Fatalf("httpVals invalid: %v", err)
			}
			if len(vals) != tt.wantTx {
				t.Errorf("%d transactions, want %d", len(vals), tt.wantTx)
			}
			if len(r.L7.HTTPVals) > tt.maxBytes {
				t.Errorf("httpVals %d bytes exceeds bound %d", len(r.L7.HTTPVals), tt.maxBytes)
			}
			for _, limit := range []string{"transactions", "bytes"} {
				if got := value(t, h.m.truncated[limit]); got != tt.truncated[limit] {
					t.Errorf("truncated{%s} = %v, want %v", limit, got, tt.truncated[limit])
				}
			}
			// After the export the bound applies afresh.
			h.e.Ingest(httpEvent(c.Tuple, 999, "/next"), t0)
			if r := h.export(c, flow.EndActiveTimeout); !strings.Contains(r.L7.HTTPVals, `"999":`) {
				t.Errorf("after export, new transaction missing: %q", r.L7.HTTPVals)
			}
		})
	}
}

func TestSameTransactionLoggedTwiceKeepsTheLaterRecord(t *testing.T) {
	h := newHarness(t, nil)
	c := conn(client, server, 40000, 80)
	h.conns.add(c)
	h.pol[c.Tuple] = flow.L7Destination
	ev := httpEvent(c.Tuple, 7, "/a")
	ev.HTTP.Status = 0
	h.e.Ingest(ev, t0)
	h.e.Ingest(httpEvent(c.Tuple, 7, "/a"), t0)
	r := h.export(c, flow.EndOfFlow)
	var vals map[string]map[string]any
	if err := json.Unmarshal([]byte(r.L7.HTTPVals), &vals); err != nil {
		t.Fatal(err)
	}
	if len(vals) != 1 || vals["7"]["status"] != 200.0 {
		t.Errorf("httpVals %s, want transaction 7 once with status 200", r.L7.HTTPVals)
	}
}

func TestPendingEventsWaitForTheirConnection(t *testing.T) {
	c := conn(client, server, 40000, 80)
	t.Run("event before conntrack is matched once the connection appears", func(t *testing.T) {
		h := newHarness(t, nil)
		h.pol[c.Tuple] = flow.L7Destination
		h.e.Ingest(httpEvent(c.Tuple.Reverse(), 1, "/early"), t0)
		if h.e.Pending() != 1 {
			t.Fatalf("pending %d, want 1", h.e.Pending())
		}
		h.conns.add(c)
		h.e.Tick(t0.Add(time.Second))
		if h.e.Pending() != 0 {
			t.Errorf("pending %d after the connection appeared, want 0", h.e.Pending())
		}
		if r := h.export(c, flow.EndOfFlow); !strings.Contains(r.L7.HTTPVals, "/early") {
			t.Errorf("httpVals %q, want the early transaction", r.L7.HTTPVals)
		}
	})
	t.Run("event never matched is dropped after MaxPendingAge and counted", func(t *testing.T) {
		h := newHarness(t, func(cfg *Config) { cfg.MaxPendingAge = 2 * time.Second })
		h.e.Ingest(httpEvent(c.Tuple, 1, "/lost"), t0)
		h.e.Tick(t0.Add(time.Second))
		if h.e.Pending() != 1 {
			t.Fatalf("dropped before MaxPendingAge")
		}
		h.e.Tick(t0.Add(3 * time.Second))
		if h.e.Pending() != 0 || value(t, h.m.dropped[dropUnmatched]) != 1 {
			t.Errorf("pending %d unmatched %v, want 0 and 1", h.e.Pending(), value(t, h.m.dropped[dropUnmatched]))
		}
	})
	t.Run("full buffer drops the oldest and counts it", func(t *testing.T) {
		h := newHarness(t, func(cfg *Config) { cfg.MaxPending = 3 })
		h.pol[c.Tuple] = flow.L7Destination
		for i := 0; i < 5; i++ {
			h.e.Ingest(httpEvent(c.Tuple, uint64(i), "/"+strconv.Itoa(i)), t0)
		}
		if h.e.Pending() != 3 || value(t, h.m.dropped[dropPendingFull]) != 2 {
			t.Fatalf("pending %d, pending_full %v; want 3 and 2", h.e.Pending(), value(t, h.m.dropped[dropPendingFull]))
		}
		h.conns.add(c)
		h.e.Tick(t0)
		var vals map[string]any
		r := h.export(c, flow.EndOfFlow)
		if err := json.Unmarshal([]byte(r.L7.HTTPVals), &vals); err != nil {
			t.Fatal(err)
		}
		if _, ok := vals["0"]; ok || len(vals) != 3 {
			t.Errorf("httpVals %s, want the 3 newest transactions", r.L7.HTTPVals)
		}
	})
}

func TestEventsWithoutL7AreCountedNotStored(t *testing.T) {
	h := newHarness(t, nil)
	c := conn(client, server, 40000, 80)
	h.conns.add(c)
	h.pol[c.Tuple] = flow.L7Destination
	h.e.Ingest(eve.Event{Tuple: c.Tuple, Type: "alert"}, t0)
	if got := value(t, h.m.dropped[dropNoL7]); got != 1 {
		t.Errorf("no_l7 drops %v, want 1", got)
	}
	if h.e.Pending() != 0 || value(t, h.m.connections) != 0 {
		t.Error("an alert created state or waited in the pending buffer")
	}
}

func TestStateOfConnectionsThatStopExportingExpires(t *testing.T) {
	h := newHarness(t, func(cfg *Config) { cfg.StateMaxAge = time.Minute })
	c := conn(client, server, 40000, 80)
	h.conns.add(c)
	h.pol[c.Tuple] = flow.L7Destination
	h.e.Ingest(httpEvent(c.Tuple, 0, "/"), t0)
	h.e.Tick(t0.Add(30 * time.Second))
	if value(t, h.m.connections) != 1 {
		t.Fatal("state expired early")
	}
	h.e.Tick(t0.Add(2 * time.Minute))
	if value(t, h.m.connections) != 0 || value(t, h.m.stateExpired) != 1 {
		t.Errorf("connections %v expired %v, want 0 and 1", value(t, h.m.connections), value(t, h.m.stateExpired))
	}
}

func TestPrivacy(t *testing.T) {
	nsOf := func(a netip.Addr) string {
		switch a {
		case client:
			return "frontend"
		case server:
			return "backend"
		}
		return ""
	}
	c := conn(client, server, 40000, 80)
	tests := []struct {
		name   string
		def    Privacy
		perNS  map[string]Privacy
		want   flow.L7Want
		wantU  string
		wantUA string
	}{
		{name: "default drops the query string", want: flow.L7Destination, wantU: "/search", wantUA: "curl/8.0"},
		{name: "default fragment dropped too", want: flow.L7Destination, wantU: "/search", wantUA: "curl/8.0"},
		{name: "namespace keeps query", perNS: map[string]Privacy{"backend": {KeepQuery: true}}, want: flow.L7Destination, wantU: "/search?q=secret#frag", wantUA: "curl/8.0"},
		{name: "namespace drops URL", perNS: map[string]Privacy{"backend": {DropURL: true}}, want: flow.L7Destination, wantU: "", wantUA: "curl/8.0"},
		{name: "namespace drops user agent", perNS: map[string]Privacy{"backend": {DropUserAgent: true}}, want: flow.L7Destination, wantU: "/search", wantUA: ""},
		{name: "override of the end that did not opt in does not apply", perNS: map[string]Privacy{"frontend": {DropURL: true}}, want: flow.L7Destination, wantU: "/search", wantUA: "curl/8.0"},
		{name: "both ends opted in: the stricter policy wins",
			perNS: map[string]Privacy{"frontend": {KeepQuery: true, DropUserAgent: true}, "backend": {KeepQuery: true}},
			want:  flow.L7Source | flow.L7Destination, wantU: "/search?q=secret#frag", wantUA: ""},
		{name: "default policy may keep queries", def: Privacy{KeepQuery: true}, want: flow.L7Source, wantU: "/search?q=secret#frag", wantUA: "curl/8.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(cfg *Config) {
				cfg.DefaultPrivacy, cfg.NamespacePrivacy, cfg.NamespaceOf = tt.def, tt.perNS, nsOf
			})
			h.conns.add(c)
			h.pol[c.Tuple] = tt.want
			h.e.Ingest(httpEvent(c.Tuple, 0, "/search?q=secret#frag"), t0)
			r := h.export(c, flow.EndOfFlow)
			var vals map[string]map[string]any
			if err := json.Unmarshal([]byte(r.L7.HTTPVals), &vals); err != nil {
				t.Fatal(err)
			}
			if got := vals["0"]["url"]; got != tt.wantU {
				t.Errorf("url %q, want %q", got, tt.wantU)
			}
			if got := vals["0"]["http_user_agent"]; got != tt.wantUA {
				t.Errorf("user agent %q, want %q", got, tt.wantUA)
			}
		})
	}
}

func TestDNSAndTLSDetails(t *testing.T) {
	c := flow.Conn{Tuple: flow.NewTuple(client, server, 5353, 53, flow.ProtoUDP)}
	c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort
	query := eve.Event{Tuple: c.Tuple, Type: "dns", AppProto: "dns",
		DNS: &eve.DNS{Version: 3, RCode: "NOERROR", Queries: []eve.DNSQuery{{Name: "api.example", Type: "AAAA"}}}}
	// Suricata 8 logs the response server to client.
	resp := eve.Event{Tuple: c.Tuple.Reverse(), Type: "dns", AppProto: "dns",
		DNS: &eve.DNS{Version: 3, Response: true, RCode: "NXDOMAIN", Queries: []eve.DNSQuery{{Name: "api.example", Type: "AAAA"}},
			Answers: []eve.DNSAnswer{{Data: "2001:db8::1"}, {Data: ""}, {Data: "2001:db8::2"}}}}
	h := newHarness(t, nil)
	h.conns.add(c)
	h.pol[c.Tuple] = flow.L7Source
	h.e.Ingest(query, t0)
	h.e.Ingest(resp, t0)
	r := h.export(c, flow.EndActiveTimeout)
	want := flow.L7{AppProtocolName: "dns", DNSQueryName: "api.example", DNSQueryType: "AAAA",
		DNSResponseCode: "NXDOMAIN", DNSAnswers: "2001:db8::1,2001:db8::2"}
	if r.L7 != want {
		t.Errorf("L7 = %+v\nwant %+v", r.L7, want)
	}
	if r := h.export(c, flow.EndActiveTimeout); r.L7.DNSQueryName != "" {
		t.Errorf("DNS query exported twice: %+v", r.L7)
	}

	tc := conn(client, server, 40001, 443)
	h.conns.add(tc)
	h.pol[tc.Tuple] = flow.L7Source
	h.e.Ingest(eve.Event{Tuple: tc.Tuple, Type: "tls", AppProto: "tls",
		TLS: &eve.TLS{SNI: "api.example", Version: "TLS 1.3", JA3: "j3", JA3S: "j3s", JA4: "t13d"}}, t0)
	for i, reason := range []flow.EndReason{flow.EndActiveTimeout, flow.EndOfFlow} {
		r := h.export(tc, reason)
		if r.L7.TLSServerName != "api.example" || r.L7.TLSVersion != "TLS 1.3" || r.L7.TLSJA3 != "j3" ||
			r.L7.TLSJA3S != "j3s" || r.L7.TLSJA4 != "t13d" || r.L7.AppProtocolName != "tls" {
			t.Errorf("record %d: TLS handshake missing: %+v", i, r.L7)
		}
	}
}

func TestNewRejectsBadConfigNamingTheField(t *testing.T) {
	ok := Config{Connections: &fakeConns{}, Policy: fakePolicy{}}
	tests := []struct {
		field string
		mod   func(*Config)
	}{
		{"Connections", func(c *Config) { c.Connections = nil }},
		{"Policy", func(c *Config) { c.Policy = nil }},
		{"NamespaceOf", func(c *Config) { c.NamespacePrivacy = map[string]Privacy{"a": {}} }},
		{"MaxPending", func(c *Config) { c.MaxPending = -1 }},
		{"MaxHTTPBytes", func(c *Config) { c.MaxHTTPBytes = 1 << 20 }},
		{"MaxPendingAge", func(c *Config) { c.MaxPendingAge = -time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			cfg := ok
			tt.mod(&cfg)
			if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("New = %v, want an error naming %s", err, tt.field)
			}
		})
	}
}

func TestL7OfRendersOneEvent(t *testing.T) {
	l := L7Of(httpEvent(flow.Tuple{}, 3, "/p?x=1"), Privacy{})
	if l.AppProtocolName != "http" || l.HTTPVals != `{"3":{"hostname":"svc.example","url":"/p","http_user_agent":"curl/8.0","http_content_type":"text/plain","http_method":"GET","protocol":"HTTP/1.1","status":200,"length":12}}` {
		t.Errorf("L7Of = %+v", l)
	}
}

func TestJSONStringEncodingIsAlwaysValid(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{`quote" back\slash`, `quote" back\slash`},
		{"nl\n tab\t cr\r nul\x00 del\x7f", "nl\n tab\t cr\r nul\x00 del\x7f"},
		{"bad utf8 \xff\xfe", "bad utf8 \uFFFD\uFFFD"},
		{"emoji 🙂 and \u2028", "emoji 🙂 and \u2028"},
		{"\\xff literal", "\\xff literal"},
	}
	for _, tt := range tests {
		b := appendJSONString(nil, tt.in)
		var back string
		if err := json.Unmarshal(b, &back); err != nil {
			t.Errorf("%q encoded as invalid JSON %s: %v", tt.in, b, err)
			continue
		}
		if back != tt.want {
			t.Errorf("%q round-tripped to %q, want %q", tt.in, back, tt.want)
		}
	}
}
