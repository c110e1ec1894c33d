//go:build integration

package servicemap_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/flowlens/flowlens/pkg/servicemap"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// laterColumns are the workload and L7 count columns the map reads. Until
// pkg/sink/columns.go defines them the fixture adds them (a migration
// adds them the same way); once it does, the sink's own DDL has them.
var laterColumns = []struct{ name, typ string }{
	{"sourceWorkloadKind", "String"}, {"sourceWorkloadName", "String"},
	{"destinationWorkloadKind", "String"}, {"destinationWorkloadName", "String"},
	{"httpRequests", "UInt64"}, {"http4xx", "UInt64"}, {"http5xx", "UInt64"}, {"dnsErrors", "UInt64"},
}

type fixture struct {
	srv    *clickhousetest.Server
	conn   driver.Conn
	reader *servicemap.Reader
}

// newFixture starts a server and creates the flows table, its rollup and
// the rollup's view through the sink's own schema code.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	s := clickhousetest.Start(t)
	conn, err := ch.Open(&ch.Options{Addr: []string{s.Addr}, Auth: ch.Auth{Database: "default", Username: "default"},
		MaxOpenConns: 4, ReadTimeout: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	sv, err := conn.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	v := clickhouse.Version{Major: sv.Version.Major, Minor: sv.Version.Minor, Patch: sv.Version.Patch}
	mustQuery(t, s, clickhouse.CreateTableSQL("default", "flows", v))
	for _, c := range laterColumns {
		if _, ok := sink.LookupColumn(c.name); !ok {
			mustQuery(t, s, clickhouse.AddColumnSQL("default", "flows", c.name, c.typ))
		}
	}
	w, err := clickhouse.New(clickhouse.Config{Addr: s.Addr, Aggregator: "test", Rollup: &clickhouse.RollupConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	got := mustQuery(t, s, "SELECT name, engine FROM system.tables WHERE database = 'default' AND name LIKE 'flows_rollup%' ORDER BY name")
	if want := "flows_rollup\tAggregatingMergeTree\nflows_rollup_mv\tMaterializedView"; got != want {
		t.Fatalf("rollup objects:\n%s\nwant\n%s", got, want)
	}
	r, err := servicemap.New(servicemap.Config{}, conn)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: s, conn: conn, reader: r}
}

func mustQuery(t testing.TB, s *clickhousetest.Server, q string) string {
	t.Helper()
	out, err := s.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// row is one stored record; only the columns the UI reads.
type row struct {
	start, end              int64
	reason                  uint8
	srcIP                   string
	srcPort                 uint16
	dstIP                   string
	dstPort                 uint16
	proto                   uint8
	srcNS, srcPod, srcWK    string
	srcWN                   string
	dstNS, dstPod, dstWK    string
	dstWN, svc, app, corr   string
	bytes, rbytes           uint64
	pkts, rpkts             uint64
	httpReq, h4, h5, dnsErr uint64
	httpVals, tls, tlsVer   string
	dnsQ, dnsType, dnsRcode string
	dnsAnswers              string
	connKey                 uint64
}

// lit is a ClickHouse string literal written by the test itself (the
// code under test never builds one from input).
func lit(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

func (f *fixture) insert(t testing.TB, rows ...row) {
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
	mustQuery(t, f.srv, "INSERT INTO default.flows ("+cols+") VALUES "+strings.Join(vals, ", "))
}

// futureMinute is a minute boundary after the rollup's view was created,
// so the rollup covers windows from it on; rows stored now with later
// flow ends are still within the raw queries' insert-time bound.
func futureMinute() int64 {
	return time.Now().Truncate(time.Minute).Add(2 * time.Minute).Unix()
}

func win(from, to int64) servicemap.Window {
	return servicemap.Window{From: time.Unix(from, 0), To: time.Unix(to, 0)}
}
