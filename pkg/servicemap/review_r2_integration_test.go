//go:build integration

package servicemap_test

// Review R2 (issue 14): tests that expose defects against a real
// ClickHouse. They FAIL on the code as reviewed; the review report gives
// the proposed fixes.

import (
	"context"

	"errors"
	"fmt"
	ch "github.com/ClickHouse/clickhouse-go/v2"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/servicemap"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// The reader uses the rollup whenever the window starts after the view
// was created; it knows nothing of the rollup's retention. Once the
// aggregator drops an expired rollup day (PruneRollup on 18.16, TTL on
// newer servers) a map of that day, whose raw rows are still stored (the
// raw table's retention is its own), comes back empty with "rollup":
// true instead of being read from raw rows.
func TestReviewR2MapAfterRollupRetention(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	f.insert(t, dataset(t0)...)
	w, err := clickhouse.New(clickhouse.Config{Addr: f.srv.Addr, Aggregator: "test", Rollup: &clickhouse.RollupConfig{Retention: 24 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The aggregator's prune, three days after the rows: their day has
	// expired from the rollup.
	n, err := w.PruneRollup(ctx, time.Unix(t0, 0).Add(72*time.Hour))
	if err != nil || n == 0 {
		t.Fatalf("prune: %d partitions, %v", n, err)
	}
	raw, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180), Source: servicemap.SourceRaw})
	if err != nil {
		t.Fatal(err)
	}
	checkEdges(t, "raw", raw, edgeAPI, edgeExt, edgeDNS, edgeEvil)
	auto, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180)})
	if err != nil {
		t.Fatal(err)
	}
	if len(auto.Edges) != len(raw.Edges) {
		t.Errorf("auto (rollup=%v) has %d edges after the rollup's retention dropped the day, raw rows have %d",
			auto.Rollup, len(auto.Edges), len(raw.Edges))
	}
}

// An external destination is named per row by the HTTP Host in that
// row's httpVals, but httpVals is per-transaction (pkg/correlate
// resetTransactions clears it after every export): the rows of one
// keep-alive connection without a new request in their interval carry no
// host and land on the x:<IP> node. One connection to one peer becomes
// two edges, one with the requests and no connection, the other with the
// connection and no requests.
func TestReviewR2ExternalHostnameSplitsOneConnection(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	base := row{start: t0, srcIP: "10.0.0.1", srcPort: 2001, dstIP: "93.184.216.34", dstPort: 80, proto: 6,
		srcNS: "demo", srcPod: "web-1", srcWK: "Deployment", srcWN: "web", app: "http", corr: "not-required", connKey: 90}
	first, last := base, base
	first.end, first.reason, first.bytes, first.pkts, first.httpReq = t0+10, 2, 100, 1, 1
	first.httpVals = `{"0":{"hostname":"api.example.com","url":"/","http_user_agent":"","http_content_type":"","http_method":"GET","protocol":"HTTP/1.1","status":200,"length":1}}`
	last.end, last.reason, last.bytes, last.pkts = t0+70, 3, 5, 1
	f.insert(t, first, last)
	for _, src := range []servicemap.Source{servicemap.SourceRaw, servicemap.SourceRollup} {
		m, err := f.reader.Map(context.Background(), servicemap.MapQuery{Window: win(t0, t0+120), Source: src})
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Edges) != 1 {
			t.Errorf("source %d: one connection to one peer is %d edges: %+v", src, len(m.Edges), m.Edges)
			continue
		}
		if e := m.Edges[0]; e.Connections != 1 || e.Requests != 1 || e.Bytes != 105 {
			t.Errorf("source %d: edge %+v, want 1 connection, 1 request, 105 bytes", src, e)
		}
	}
}

// A connection an agent exported for idle timeout (pkg/connstore finish:
// fIdle, the entry is kept and resumes) and that later ends is one
// connection with two rows whose flowEndReason is not 2: the map counts
// two. Idle gaps longer than the idle timeout are routine for pooled
// keep-alive connections, so "connections" grows with every pause.
func TestReviewR2IdleThenResumedConnectionCountsOnce(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	base := row{start: t0, srcIP: "10.0.0.1", srcPort: 2002, dstIP: "10.0.1.1", dstPort: 5432, proto: 6,
		srcNS: "demo", srcPod: "web-1", srcWK: "Deployment", srcWN: "web", dstNS: "demo", dstPod: "db-0", dstWK: "StatefulSet", dstWN: "db",
		corr: "correlated", connKey: 91}
	idle, resumed, end := base, base, base
	idle.end, idle.reason, idle.bytes, idle.pkts = t0+10, 1, 100, 1
	resumed.end, resumed.reason, resumed.bytes, resumed.pkts = t0+70, 2, 100, 1
	end.end, end.reason, end.bytes, end.pkts = t0+100, 3, 100, 1
	f.insert(t, idle, resumed, end)
	m, err := f.reader.Map(context.Background(), servicemap.MapQuery{Window: win(t0, t0+120), Source: servicemap.SourceRaw})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Edges) != 1 || m.Edges[0].Connections != 1 {
		t.Errorf("one connection (rows: idle timeout, active timeout, end of flow): edges %+v, want 1 edge with 1 connection", m.Edges)
	}
}

// A node the map returns must be clickable: the map names an external
// peer by whatever TLS server name or HTTP Host the client sent, of any
// length, but ParseNodeID refuses ids over 600 bytes, so the flows of
// that node (and of its edges) cannot be listed.
func TestReviewR2EveryMapNodeCanBeListed(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	host := strings.Repeat("a", 700) + ".example"
	f.insert(t, row{start: t0, end: t0 + 10, reason: 3, srcIP: "10.0.0.1", srcPort: 2003, dstIP: "198.51.100.9", dstPort: 80, proto: 6,
		srcNS: "demo", srcPod: "web-1", srcWK: "Deployment", srcWN: "web", app: "http", corr: "not-required", bytes: 1, pkts: 1, httpReq: 1,
		httpVals: `{"0":{"hostname":"` + host + `","url":"/","http_user_agent":"","http_content_type":"","http_method":"GET","protocol":"HTTP/1.1","status":200,"length":1}}`,
		connKey:  92})
	ctx := context.Background()
	m, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+60), Source: servicemap.SourceRaw})
	if err != nil || len(m.Edges) != 1 {
		t.Fatalf("map: %v %+v", err, m)
	}
	p, err := f.reader.Flows(ctx, servicemap.FlowQuery{Window: win(t0, t0+60), Node: m.Edges[0].Target})
	if err != nil {
		t.Fatalf("listing the flows of map node %q...: %v", m.Edges[0].Target[:20], err)
	}
	if p.Total != 1 {
		t.Errorf("node's flows: %d, want 1", p.Total)
	}
	p, err = f.reader.Flows(ctx, servicemap.FlowQuery{Window: win(t0, t0+60), Edge: m.Edges[0].ID})
	if err != nil || p.Total != 1 {
		t.Errorf("edge's flows: %v, %v", p, err)
	}
}

// Bound values reach the server escaped AND intact: a value with a quote,
// backslashes, '?', NUL-free unicode is matched exactly, not merely
// harmless. (Passes: recorded as evidence for the review.)
func TestReviewR2BoundValuesMatchExactly(t *testing.T) {
	f := newFixture(t)
	t0 := futureMinute()
	sni := `a'b\c\\?d$1@x ünï` + "\t" + `"q"`
	f.insert(t, row{start: t0, end: t0 + 10, reason: 3, srcIP: "10.0.0.1", srcPort: 2004, dstIP: "198.51.100.10", dstPort: 443, proto: 6,
		srcNS: "demo", srcPod: "web-1", srcWK: "Deployment", srcWN: "web", app: "tls", corr: "not-required", bytes: 1, pkts: 1,
		tls: sni, connKey: 93})
	ctx := context.Background()
	for _, q := range []servicemap.FlowQuery{
		{Window: win(t0, t0+60), Text: `'b\c\\?d$1@x ünï`},
		{Window: win(t0, t0+60), Node: "x:" + sni},
		{Window: win(t0, t0+60), Edge: web + "|x:" + sni + "|443|6"},
	} {
		p, err := f.reader.Flows(ctx, q)
		if err != nil || p.Total != 1 {
			t.Errorf("%+v: total %v err %v, want 1", q, p, err)
		}
	}
	for _, q := range []servicemap.FlowQuery{{Window: win(t0, t0+60), Text: "\x00"}, {Window: win(t0, t0+60), Text: `\`}} {
		if p, err := f.reader.Flows(ctx, q); err != nil && !errors.Is(err, servicemap.ErrInvalid) {
			t.Errorf("%q: %v", q.Text, err)
		} else if err == nil && p.Total != 1 && q.Text == `\` {
			t.Errorf("backslash search: %d rows, want 1", p.Total)
		}
	}
}

// In cluster mode RollupStart reads the view of the shard the UI talks
// to only. A shard whose view is missing or younger (its creation failed
// and was only logged, the shard was down when the aggregator started,
// an operator re-created it) has rows the Distributed rollup lacks, and
// the map answers "rollup": true with that shard's traffic missing.
func TestReviewR2ClusterRollupStartIgnoresOtherShards(t *testing.T) {
	c := clickhousetest.StartCluster(t, 2)
	ws, err := clickhouse.NewCluster(clickhouse.Config{Aggregator: "test", Rollup: &clickhouse.RollupConfig{},
		Cluster: &clickhouse.ClusterConfig{Name: c.Name, Shards: c.Shards()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, w := range ws {
		defer w.Close()
		if err := w.EnsureSchema(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Shard 1 has no view (as after a failed creation).
	if _, err := c.Query(1, "DROP TABLE default.flows_rollup_mv"); err != nil {
		t.Fatal(err)
	}
	t0 := futureMinute()
	rows := dataset(t0)[:4]
	for i := 0; i < 2; i++ {
		(&fixture{srv: c.Server(i)}).insertInto(t, "flows_local", rows[2*i:2*i+2]...)
	}
	conn, err := ch.Open(&ch.Options{Addr: []string{c.Shards()[0]}, Auth: ch.Auth{Database: "default", Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := servicemap.New(servicemap.Config{Table: "flows"}, conn)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := r.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180), Source: servicemap.SourceRaw})
	if err != nil {
		t.Fatal(err)
	}
	checkEdges(t, "raw", raw, edgeAPI, edgeExt, edgeDNS)
	auto, err := r.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+180)})
	if err != nil {
		t.Fatal(err)
	}
	if len(auto.Edges) != len(raw.Edges) {
		t.Errorf("auto (rollup=%v): %d edges, raw %d: shard 1's rows are missing from the answer", auto.Rollup, len(auto.Edges), len(raw.Edges))
	}
}

// insertInto is a copy of fixture.insert with the table as a parameter.
func (f *fixture) insertInto(t testing.TB, table string, rows ...row) {
	t.Helper()
	cols := "flowStartSeconds, flowEndSeconds, flowEndReason, sourceIP, sourceTransportPort, destinationIP, destinationTransportPort, " +
		"protocolIdentifier, sourcePodNamespace, sourcePodName, sourceWorkloadKind, sourceWorkloadName, destinationPodNamespace, " +
		"destinationPodName, destinationWorkloadKind, destinationWorkloadName, destinationServicePortName, appProtocolName, correlation, " +
		"octetDeltaCount, reverseOctetDeltaCount, packetDeltaCount, reversePacketDeltaCount, httpRequests, http4xx, http5xx, dnsErrors, " +
		"httpVals, tlsServerName, tlsVersion, dnsQueryName, dnsQueryType, dnsResponseCode, dnsAnswers, connectionKey, " +
		"octetTotalCount, reverseOctetTotalCount"
	var vals []string
	for _, r := range rows {
		vals = append(vals, fmt.Sprintf("(toDateTime(%d), toDateTime(%d), %d, %s, %d, %s, %d, %d, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "+
			"%d, %d, %d, %d, %d, %d, %d, %d, %s, %s, %s, %s, %s, %s, %s, %d, %d, %d)",
			r.start, r.end, r.reason, lit(r.srcIP), r.srcPort, lit(r.dstIP), r.dstPort, r.proto, lit(r.srcNS), lit(r.srcPod), lit(r.srcWK),
			lit(r.srcWN), lit(r.dstNS), lit(r.dstPod), lit(r.dstWK), lit(r.dstWN), lit(r.svc), lit(r.app), lit(r.corr),
			r.bytes, r.rbytes, r.pkts, r.rpkts, r.httpReq, r.h4, r.h5, r.dnsErr, lit(r.httpVals), lit(r.tls), lit(r.tlsVer),
			lit(r.dnsQ), lit(r.dnsType), lit(r.dnsRcode), lit(r.dnsAnswers), r.connKey, r.bytes, r.rbytes))
	}
	mustQuery(t, f.srv, "INSERT INTO default."+table+" ("+cols+") VALUES "+strings.Join(vals, ", "))
}
