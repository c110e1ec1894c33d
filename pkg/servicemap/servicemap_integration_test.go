//go:build integration

package servicemap_test

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/servicemap"
)

const (
	web      = "w:demo/Deployment/web"
	apiSvc   = "s:demo/api"
	external = "x:example.com"
	debugPod = "p:other/debug"
	dnsSvc   = "s:kube-system/kube-dns"
	client   = "x:203.0.113.5"
	evil     = `x:evil'); DROP TABLE flows; --\name`
)

// dataset is the fixture's rows around minute t0; srcPort identifies a
// row in the flow tests.
func dataset(t0 int64) []row {
	return []row{
		// An HTTP connection through Service demo/api, exported twice:
		// its interim row, then its final one.
		{start: t0, end: t0 + 10, reason: 2, srcIP: "10.0.0.1", srcPort: 1001, dstIP: "10.0.1.1", dstPort: 8080, proto: 6,
			srcNS: "demo", srcPod: "web-1", srcWK: "Deployment", srcWN: "web", dstNS: "demo", dstPod: "api-1", dstWK: "Deployment", dstWN: "api",
			svc: "demo/api:http", app: "http", corr: "correlated", bytes: 100, rbytes: 1000, pkts: 2, rpkts: 3, httpReq: 3, h4: 1, h5: 1,
			httpVals: `{"2":{"hostname":"api","url":"/v1/items","http_user_agent":"curl","http_content_type":"application/json","http_method":"GET","protocol":"HTTP/1.1","status":200,"length":12},` +
				`"1":{"hostname":"api","url":"/v1/login","http_user_agent":"curl","http_content_type":"","http_method":"POST","protocol":"HTTP/1.1","status":404,"length":0}}`,
			connKey: 77},
		{start: t0, end: t0 + 70, reason: 3, srcIP: "10.0.0.1", srcPort: 1001, dstIP: "10.0.1.1", dstPort: 8080, proto: 6,
			srcNS: "demo", srcPod: "web-1", srcWK: "Deployment", srcWN: "web", dstNS: "demo", dstPod: "api-1", dstWK: "Deployment", dstWN: "api",
			svc: "demo/api:http", app: "http", corr: "correlated", bytes: 50, rbytes: 500, pkts: 1, rpkts: 1, httpReq: 1, h5: 1,
			httpVals: `{"3":{"hostname":"api","url":"/v1/boom","http_user_agent":"curl","http_content_type":"","http_method":"GET","protocol":"HTTP/1.1","status":503,"length":5}}`,
			connKey:  77},
		// TLS to an external peer named by its SNI.
		{start: t0 + 20, end: t0 + 30, reason: 3, srcIP: "10.0.0.1", srcPort: 1002, dstIP: "93.184.216.34", dstPort: 443, proto: 6,
			srcNS: "demo", srcPod: "web-1", srcWK: "Deployment", srcWN: "web", app: "tls", corr: "not-required",
			bytes: 10, rbytes: 20, pkts: 1, rpkts: 1, tls: "example.com", tlsVer: "TLSv1.3", connKey: 78},
		// DNS from a pod without a workload; idle timeout ends it.
		{start: t0 + 89, end: t0 + 90, reason: 1, srcIP: "10.0.2.9", srcPort: 1003, dstIP: "10.0.3.3", dstPort: 53, proto: 17,
			srcNS: "other", srcPod: "debug", dstNS: "kube-system", dstPod: "coredns-1", dstWK: "Deployment", dstWN: "coredns",
			svc: "kube-system/kube-dns:dns", app: "dns", corr: "unmatched", bytes: 60, rbytes: 0, pkts: 1, rpkts: 0, dnsErr: 1,
			dnsQ: "nope.example.", dnsType: "A", dnsRcode: "NXDOMAIN", connKey: 79},
		// A hostile SNI is stored as data and shown as a name.
		{start: t0 + 100, end: t0 + 110, reason: 3, srcIP: "10.0.0.1", srcPort: 1004, dstIP: "198.51.100.7", dstPort: 443, proto: 6,
			srcNS: "demo", srcPod: "web-1", srcWK: "Deployment", srcWN: "web", app: "tls", corr: "not-required",
			bytes: 7, rbytes: 8, pkts: 1, rpkts: 1, tls: `evil'); DROP TABLE flows; --\name`, connKey: 80},
		// Outside [t0, t0+180): after it and before it.
		{start: t0 + 150, end: t0 + 200, reason: 3, srcIP: "203.0.113.5", srcPort: 1005, dstIP: "10.0.0.1", dstPort: 80, proto: 6,
			dstNS: "demo", dstPod: "web-1", dstWK: "Deployment", dstWN: "web", bytes: 1, rbytes: 1, pkts: 1, rpkts: 1, connKey: 81},
		{start: t0 - 50, end: t0 - 5, reason: 3, srcIP: "203.0.113.5", srcPort: 1006, dstIP: "10.0.0.1", dstPort: 80, proto: 6,
			dstNS: "demo", dstPod: "web-1", dstWK: "Deployment", dstWN: "web", bytes: 1, rbytes: 1, pkts: 1, rpkts: 1, connKey: 82},
	}
}

func edge(src, dst string, port uint16, proto uint8, app string, c servicemap.Counts) servicemap.Edge {
	return servicemap.Edge{ID: servicemap.EdgeKey{Source: src, Destination: dst, Port: port, Protocol: proto}.String(),
		Source: src, Target: dst, Port: port, Protocol: proto, AppProtocol: app, Counts: c}
}

var (
	edgeAPI = edge(web, apiSvc, 8080, 6, "http", servicemap.Counts{Bytes: 150, ReverseBytes: 1500, Packets: 3, ReversePackets: 4,
		Connections: 1, Requests: 4, HTTP4xx: 1, HTTP5xx: 2})
	edgeExt  = edge(web, external, 443, 6, "tls", servicemap.Counts{Bytes: 10, ReverseBytes: 20, Packets: 1, ReversePackets: 1, Connections: 1})
	edgeDNS  = edge(debugPod, dnsSvc, 53, 17, "dns", servicemap.Counts{Bytes: 60, Packets: 1, Connections: 1, DNSErrors: 1})
	edgeEvil = edge(web, evil, 443, 6, "tls", servicemap.Counts{Bytes: 7, ReverseBytes: 8, Packets: 1, ReversePackets: 1, Connections: 1})
)

func sortedEdges(es []servicemap.Edge) []servicemap.Edge {
	out := slices.Clone(es)
	slices.SortFunc(out, func(a, b servicemap.Edge) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func checkEdges(t *testing.T, what string, got *servicemap.Map, want ...servicemap.Edge) {
	t.Helper()
	if g, w := sortedEdges(got.Edges), sortedEdges(want); len(g)+len(w) > 0 && !reflect.DeepEqual(g, w) {
		t.Errorf("%s: edges\n got %+v\nwant %+v", what, g, w)
	}
	ids := map[string]bool{}
	for _, e := range want {
		ids[e.Source], ids[e.Target] = true, true
	}
	if len(got.Nodes) != len(ids) {
		t.Errorf("%s: %d nodes, want %d: %+v", what, len(got.Nodes), len(ids), got.Nodes)
	}
	for _, n := range got.Nodes {
		if !ids[n.ID] {
			t.Errorf("%s: unexpected node %+v", what, n)
		}
	}
}

func TestMapKnownRows(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	f.insert(t, dataset(t0)...)
	ctx := context.Background()
	for _, src := range []servicemap.Source{servicemap.SourceRaw, servicemap.SourceRollup, servicemap.SourceAuto} {
		name := []string{"auto", "raw", "rollup"}[src]
		m, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180), Source: src})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if m.Rollup != (src != servicemap.SourceRaw) {
			t.Errorf("%s: rollup = %v", name, m.Rollup)
		}
		if m.From != t0 || m.To != t0+180 || m.Truncated {
			t.Errorf("%s: from %d to %d truncated %v, want %d %d false", name, m.From, m.To, m.Truncated, t0, t0+180)
		}
		checkEdges(t, name, m, edgeAPI, edgeExt, edgeDNS, edgeEvil)

		m, err = f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180), Namespace: "kube-system", Source: src})
		if err != nil {
			t.Fatal(err)
		}
		checkEdges(t, name+" namespace kube-system", m, edgeDNS)
		m, err = f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180), Namespace: "demo", Source: src})
		if err != nil {
			t.Fatal(err)
		}
		checkEdges(t, name+" namespace demo", m, edgeAPI, edgeExt, edgeEvil)

		m, err = f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0+3600, t0+7200), Source: src})
		if err != nil {
			t.Fatal(err)
		}
		checkEdges(t, name+" empty window", m)
		if m.Nodes == nil || m.Edges == nil {
			t.Errorf("%s: empty window must give empty lists, not null", name)
		}
		// A window that sees only the row after the main one.
		m, err = f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0+180, t0+240), Source: src})
		if err != nil {
			t.Fatal(err)
		}
		checkEdges(t, name+" later window", m, edge(client, web, 80, 6, "", servicemap.Counts{Bytes: 1, ReverseBytes: 1, Packets: 1, ReversePackets: 1, Connections: 1}))
	}
	nodes := map[string]servicemap.Node{}
	m, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180)})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range m.Nodes {
		nodes[n.ID] = n
	}
	for id, want := range map[string]servicemap.Node{
		web:      {ID: web, Kind: "workload", Namespace: "demo", Name: "web", WorkloadKind: "Deployment", Label: "demo/web"},
		apiSvc:   {ID: apiSvc, Kind: "service", Namespace: "demo", Name: "api", Label: "demo/api"},
		debugPod: {ID: debugPod, Kind: "pod", Namespace: "other", Name: "debug", Label: "other/debug"},
		external: {ID: external, Kind: "external", Name: "example.com", Label: "example.com"},
	} {
		if nodes[id] != want {
			t.Errorf("node %s = %+v, want %+v", id, nodes[id], want)
		}
	}
}

// The rollup counts whole minutes: a window not aligned to minutes is
// widened, and the answer says which window it covers; raw rows answer
// the exact window.
func TestMapUnalignedWindow(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	f.insert(t, dataset(t0)...)
	ctx := context.Background()
	raw, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0+20, t0+80), Source: servicemap.SourceRaw})
	if err != nil {
		t.Fatal(err)
	}
	if raw.From != t0+20 || raw.To != t0+80 {
		t.Errorf("raw window %d..%d", raw.From, raw.To)
	}
	checkEdges(t, "raw", raw, edge(web, apiSvc, 8080, 6, "http", servicemap.Counts{Bytes: 50, ReverseBytes: 500, Packets: 1, ReversePackets: 1,
		Connections: 1, Requests: 1, HTTP5xx: 1}), edgeExt)
	ru, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0+20, t0+80), Source: servicemap.SourceRollup})
	if err != nil {
		t.Fatal(err)
	}
	if ru.From != t0 || ru.To != t0+120 {
		t.Errorf("rollup window %d..%d, want %d..%d", ru.From, ru.To, t0, t0+120)
	}
	checkEdges(t, "rollup", ru, edgeAPI, edgeExt, edgeDNS, edgeEvil)
}

// A window that starts before the rollup's view existed is answered from
// raw rows by auto, and refused when the rollup is demanded.
func TestMapBeforeRollupStart(t *testing.T) {
	f := newFixture(t)
	t0 := time.Now().Truncate(time.Minute).Add(-10 * time.Minute).Unix()
	f.insert(t, dataset(t0)...)
	ctx := context.Background()
	m, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180)})
	if err != nil {
		t.Fatal(err)
	}
	if m.Rollup {
		t.Error("auto used the rollup for a window before it started")
	}
	checkEdges(t, "auto", m, edgeAPI, edgeExt, edgeDNS, edgeEvil)
	_, err = f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180), Source: servicemap.SourceRollup})
	if !errors.Is(err, servicemap.ErrInvalid) {
		t.Errorf("rollup before its start: err %v, want ErrInvalid", err)
	}
}

func ports(p *servicemap.FlowPage) []uint16 {
	out := []uint16{}
	for _, r := range p.Rows {
		out = append(out, r.SourcePort)
	}
	return out
}

func TestFlowsFilters(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	f.insert(t, dataset(t0)...)
	ctx := context.Background()
	u8 := func(v uint8) *uint8 { return &v }
	w := win(t0, t0+180)
	for _, tc := range []struct {
		name  string
		q     servicemap.FlowQuery
		ports []uint16
	}{
		{"all by time asc", servicemap.FlowQuery{Window: w}, []uint16{1001, 1002, 1001, 1003, 1004}},
		{"all by time desc", servicemap.FlowQuery{Window: w, Desc: true}, []uint16{1004, 1003, 1001, 1002, 1001}},
		{"bytes desc", servicemap.FlowQuery{Window: w, Sort: "bytes", Desc: true}, []uint16{1001, 1003, 1001, 1002, 1004}},
		{"namespace", servicemap.FlowQuery{Window: w, Namespace: "kube-system"}, []uint16{1003}},
		{"pod", servicemap.FlowQuery{Window: w, Pod: "api-1"}, []uint16{1001, 1001}},
		{"service", servicemap.FlowQuery{Window: w, Service: "demo/api"}, []uint16{1001, 1001}},
		{"protocol", servicemap.FlowQuery{Window: w, Protocol: u8(17)}, []uint16{1003}},
		{"app protocol", servicemap.FlowQuery{Window: w, AppProtocol: "tls"}, []uint16{1002, 1004}},
		{"correlation", servicemap.FlowQuery{Window: w, Correlation: "unmatched"}, []uint16{1003}},
		{"text in URL", servicemap.FlowQuery{Window: w, Text: "/V1/BOOM"}, []uint16{1001}},
		{"text in SNI", servicemap.FlowQuery{Window: w, Text: "example.com"}, []uint16{1002}},
		{"text in DNS name", servicemap.FlowQuery{Window: w, Text: "NOPE.example"}, []uint16{1003}},
		{"text with quotes", servicemap.FlowQuery{Window: w, Text: `'); DROP TABLE flows; --\`}, []uint16{1004}},
		{"node", servicemap.FlowQuery{Window: w, Node: external}, []uint16{1002}},
		{"hostile node name", servicemap.FlowQuery{Window: w, Node: evil}, []uint16{1004}},
		{"edge", servicemap.FlowQuery{Window: w, Edge: edgeAPI.ID}, []uint16{1001, 1001}},
		{"edge to hostile name", servicemap.FlowQuery{Window: w, Edge: edgeEvil.ID}, []uint16{1004}},
		{"paged", servicemap.FlowQuery{Window: w, Limit: 2, Offset: 1}, []uint16{1002, 1001}},
		{"empty window", servicemap.FlowQuery{Window: win(t0+3600, t0+7200)}, []uint16{}},
	} {
		p, err := f.reader.Flows(ctx, tc.q)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := ports(p); !slices.Equal(got, tc.ports) {
			t.Errorf("%s: rows %v, want %v", tc.name, got, tc.ports)
		}
		wantTotal := uint64(len(tc.ports))
		if tc.name == "paged" {
			wantTotal = 5
		}
		if p.Total != wantTotal {
			t.Errorf("%s: total %d, want %d", tc.name, p.Total, wantTotal)
		}
	}
	p, err := f.reader.Flows(ctx, servicemap.FlowQuery{Window: w, Service: "demo/api", Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := servicemap.FlowRow{Key: "77-" + formatInt(t0), FlowStartSeconds: t0, FlowEndSeconds: t0 + 10, FlowEndReason: 2,
		SourceIP: "10.0.0.1", SourcePort: 1001, DestinationIP: "10.0.1.1", DestinationPort: 8080, Protocol: 6,
		SourcePodNamespace: "demo", SourcePodName: "web-1", SourceWorkload: "Deployment/web", DestinationPodNamespace: "demo",
		DestinationPodName: "api-1", DestinationWorkload: "Deployment/api", DestinationService: "demo/api:http", AppProtocol: "http",
		Correlation: "correlated", Bytes: 100, ReverseBytes: 1000, Packets: 2, ReversePackets: 3}
	if len(p.Rows) != 1 || p.Rows[0] != want {
		t.Errorf("row\n got %+v\nwant %+v", p.Rows, want)
	}
}

func formatInt(n int64) string { return strconv.FormatInt(n, 10) }

func TestFlowDetail(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	f.insert(t, dataset(t0)...)
	ctx := context.Background()
	d, err := f.reader.Flow(ctx, "77-"+formatInt(t0))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Records) != 2 {
		t.Fatalf("%d records, want 2", len(d.Records))
	}
	if d.Records[0]["flowEndSeconds"] != t0+10 || d.Records[1]["flowEndSeconds"] != t0+70 {
		t.Errorf("records not oldest first: %v, %v", d.Records[0]["flowEndSeconds"], d.Records[1]["flowEndSeconds"])
	}
	if d.Records[1]["octetDeltaCount"] != uint64(50) || d.Records[0]["correlation"] != "correlated" {
		t.Errorf("record values: %v %v", d.Records[1]["octetDeltaCount"], d.Records[0]["correlation"])
	}
	if !slices.Contains(d.Columns, "octetDeltaCountFromDestinationNode") || !slices.Contains(d.Columns, "sourceExporter") {
		t.Errorf("columns lack both halves: %v", d.Columns)
	}
	var got []string
	for _, h := range d.HTTP {
		got = append(got, h.Method+" "+h.URL+" "+formatInt(int64(h.Status)))
	}
	if want := []string{"POST /v1/login 404", "GET /v1/items 200", "GET /v1/boom 503"}; !slices.Equal(got, want) {
		t.Errorf("http %v, want %v", got, want)
	}
	if d.TLS != nil || len(d.DNS) != 0 {
		t.Errorf("tls %+v dns %+v, want none", d.TLS, d.DNS)
	}
	d, err = f.reader.Flow(ctx, "79-"+formatInt(t0+89))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.DNS) != 1 || d.DNS[0].QueryName != "nope.example." || d.DNS[0].ResponseCode != "NXDOMAIN" {
		t.Errorf("dns %+v", d.DNS)
	}
	d, err = f.reader.Flow(ctx, "78-"+formatInt(t0+20))
	if err != nil {
		t.Fatal(err)
	}
	if d.TLS == nil || d.TLS.ServerName != "example.com" || d.TLS.Version != "TLSv1.3" {
		t.Errorf("tls %+v", d.TLS)
	}
	d, err = f.reader.Flow(ctx, "999-1")
	if err != nil || len(d.Records) != 0 {
		t.Errorf("unknown key: %v, %d records", err, len(d.Records))
	}
}

// Hostile filter values are either refused (ErrInvalid) or matched as
// plain text: nothing they hold is executed, the table is intact.
func TestHostileInput(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	f.insert(t, dataset(t0)...)
	ctx := context.Background()
	before := mustQuery(t, f.srv, "SELECT count(), sum(octetDeltaCount) FROM default.flows")
	hostile := []string{
		`' OR 1=1 --`, `demo' OR '1'='1`, `\' OR 1=1 --`, `\\' OR 1=1 --`, `'; DROP TABLE flows; --`,
		`demo") OR 1=1 --`, "demo\x00' OR 1=1", `?`, `\?`, "`flows`", `' UNION ALL SELECT * FROM system.tables --`,
		"demo'\n OR 1=1", `%' OR '%'='`, strings.Repeat("x", 200),
	}
	long := strings.Repeat("'", 10*1024)
	w := win(t0, t0+180)
	for _, h := range append(hostile, long) {
		queries := []servicemap.FlowQuery{
			{Window: w, Namespace: h}, {Window: w, Pod: h}, {Window: w, Service: h}, {Window: w, AppProtocol: h},
			{Window: w, Correlation: h}, {Window: w, Text: h}, {Window: w, Node: "x:" + h}, {Window: w, Node: h},
			{Window: w, Edge: web + "|x:" + h + "|443|6"}, {Window: w, Edge: h}, {Window: w, Sort: h},
		}
		for i, q := range queries {
			p, err := f.reader.Flows(ctx, q)
			switch {
			case errors.Is(err, servicemap.ErrInvalid):
			case err != nil:
				t.Errorf("query %d with %q: server error %v (want a refusal or no rows)", i, trunc(h), err)
			case p.Total != 0 || len(p.Rows) != 0:
				t.Errorf("query %d with %q matched %d rows", i, trunc(h), p.Total)
			}
			if len(h) > 1024 && err == nil {
				t.Errorf("query %d: a 10 kB value was not refused", i)
			}
		}
		m, err := f.reader.Map(ctx, servicemap.MapQuery{Window: w, Namespace: h})
		switch {
		case errors.Is(err, servicemap.ErrInvalid):
		case err != nil:
			t.Errorf("map with %q: %v", trunc(h), err)
		case len(m.Edges) != 0:
			t.Errorf("map with namespace %q has %d edges", trunc(h), len(m.Edges))
		}
		if _, err := f.reader.Flow(ctx, h); !errors.Is(err, servicemap.ErrInvalid) {
			t.Errorf("flow key %q: err %v, want ErrInvalid", trunc(h), err)
		}
	}
	if after := mustQuery(t, f.srv, "SELECT count(), sum(octetDeltaCount) FROM default.flows"); after != before {
		t.Errorf("table changed: %s -> %s", before, after)
	}
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// The rollup's totals equal the raw table's over the same (minute
// aligned) window, for many rows spread over many minutes and edges,
// inserted in several blocks (several parts the AggregatingMergeTree has
// not merged, and merged ones after OPTIMIZE). Connections are compared
// with the table's exact distinct count: per edge (a few thousand here)
// the uniq states are exact.
func TestRollupTotalsEqualRaw(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	for block := 0; block < 4; block++ {
		mustQuery(t, f.srv, generateSQL(t0, 50000, block*50000, 3*3600))
	}
	ctx := context.Background()
	check := func(when string, from, to int64, ns string) {
		t.Helper()
		raw, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(from, to), Namespace: ns, Source: servicemap.SourceRaw})
		if err != nil {
			t.Fatal(err)
		}
		ru, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(from, to), Namespace: ns, Source: servicemap.SourceRollup})
		if err != nil {
			t.Fatal(err)
		}
		if len(raw.Edges) < 50 {
			t.Fatalf("%s: only %d edges: the generated rows are not what the test means", when, len(raw.Edges))
		}
		if g, w := sortedEdges(ru.Edges), sortedEdges(raw.Edges); !reflect.DeepEqual(g, w) {
			t.Errorf("%s %d..%d ns %q: rollup and raw differ (%d vs %d edges)", when, from, to, ns, len(g), len(w))
		}
		// And both equal the table's own sums.
		cond := "flowEndSeconds >= toDateTime(" + formatInt(from) + ") AND flowEndSeconds < toDateTime(" + formatInt(to) + ")"
		if ns != "" {
			cond += " AND (sourcePodNamespace = " + lit(ns) + " OR destinationPodNamespace = " + lit(ns) +
				" OR replaceRegexpOne(destinationServicePortName, '/.*$', '') = " + lit(ns) + ")"
		}
		want := mustQuery(t, f.srv, "SELECT sum(octetDeltaCount), sum(reverseOctetDeltaCount), sum(packetDeltaCount), uniqExact(connectionKey, flowStartSeconds), sum(httpRequests), sum(http5xx) FROM default.flows WHERE "+cond)
		var c servicemap.Counts
		for _, e := range ru.Edges {
			c.Bytes += e.Bytes
			c.ReverseBytes += e.ReverseBytes
			c.Packets += e.Packets
			c.Connections += e.Connections
			c.Requests += e.Requests
			c.HTTP5xx += e.HTTP5xx
		}
		got := strings.Join([]string{formatInt(int64(c.Bytes)), formatInt(int64(c.ReverseBytes)), formatInt(int64(c.Packets)),
			formatInt(int64(c.Connections)), formatInt(int64(c.Requests)), formatInt(int64(c.HTTP5xx))}, "\t")
		if got != want {
			t.Errorf("%s: rollup sums %s, table %s", when, got, want)
		}
	}
	check("unmerged", t0, t0+3*3600, "")
	check("unmerged", t0+600, t0+3600, "ns3")
	mustQuery(t, f.srv, "OPTIMIZE TABLE default.flows_rollup FINAL")
	check("merged", t0, t0+3*3600, "")
	check("merged", t0+1200, t0+7200, "ns7")
}
