//go:build integration

package clickhouse

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

func testRecord(i int) *correlate.Record {
	r := &correlate.Record{Correlation: correlate.StatusCorrelated}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("10.0.2.7"), uint16(10000+i), 80, flow.ProtoTCP)
	r.StartNanos = time.Now().Add(-time.Minute).UnixNano()
	r.ExportNanos = time.Now().UnixNano()
	r.Fwd = flow.Counters{Packets: 10, Bytes: 1000}
	r.FromSource = correlate.Side{Seen: true, Exporter: "node-a", Fwd: r.Fwd}
	r.FromDestination = correlate.Side{Seen: true, Exporter: "node-b", Fwd: flow.Counters{Packets: 9}}
	r.FlowType = flow.FlowTypeInterNode
	r.Source = flow.Endpoint{PodName: "client", PodNamespace: "ns-a", NodeName: "node-a"}
	r.Destination = flow.Endpoint{PodName: "server", PodNamespace: "ns-b", NodeName: "node-b"}
	r.L7 = flow.L7{AppProtocolName: "http", HTTPVals: `{"0":"GET /"}`, DNSQueryName: "example.org"}
	return r
}

func query(t *testing.T, s *clickhousetest.Server, q string) string {
	t.Helper()
	out, err := s.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func TestWriterCreatesSchemaAndInsertsRows(t *testing.T) {
	s := clickhousetest.Start(t)
	w, err := New(Config{Addr: s.Addr, Aggregator: "agg-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	recs := []*correlate.Record{testRecord(0), testRecord(1), testRecord(2)}
	if n, err := w.Write(ctx, &sink.Batch{ID: 42, Records: recs}); err != nil || n != 3 {
		t.Fatalf("Write = %d, %v; want 3, nil", n, err)
	}
	if v := w.Version(); v.Major != 18 && !v.AtLeast(19, 0) {
		t.Errorf("server version %v not recorded", v)
	}
	if got := query(t, s, "SELECT count(), uniqExact(sourceTransportPort) FROM flows WHERE batchId = 42 AND aggregator = 'agg-1'"); got != "3\t3" {
		t.Errorf("rows = %q, want 3 distinct rows", got)
	}
	got := query(t, s, "SELECT sourcePodName, destinationPodName, destinationNodeName, appProtocolName, httpVals, dnsQueryName, correlation, packetTotalCountFromDestinationNode FROM flows LIMIT 1")
	want := "client\tserver\tnode-b\thttp\t{\"0\":\"GET /\"}\texample.org\tcorrelated\t9"
	if got != want {
		t.Errorf("row = %q, want %q", got, want)
	}
	// A retry of a batch that was stored is not stored twice.
	if n, err := w.Write(ctx, &sink.Batch{ID: 42, Attempt: 1, Records: recs}); err != nil || n != 3 {
		t.Fatalf("retry Write = %d, %v", n, err)
	}
	if got := query(t, s, "SELECT count() FROM flows"); got != "3" {
		t.Errorf("after a retry of a stored batch: %s rows, want 3", got)
	}
}

func TestWriterMigratesTableFromOlderSchema(t *testing.T) {
	s := clickhousetest.Start(t)
	query(t, s, "CREATE TABLE flows (timeInserted DateTime DEFAULT now(), flowStartSeconds DateTime, flowEndSeconds DateTime, sourcePodName String) ENGINE = MergeTree() PARTITION BY toYYYYMMDD(timeInserted) ORDER BY (timeInserted, flowEndSeconds)")
	query(t, s, "INSERT INTO flows (flowStartSeconds, flowEndSeconds, sourcePodName) VALUES (now(), now(), 'old')")
	w, err := New(Config{Addr: s.Addr, Aggregator: "agg-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := w.Write(ctx, &sink.Batch{ID: 1, Records: []*correlate.Record{testRecord(0)}}); err != nil {
		t.Fatalf("Write after migration: %v", err)
	}
	if got := query(t, s, "SELECT count() FROM system.columns WHERE database = 'default' AND table = 'flows'"); got != itoa(len(columns)+1) {
		t.Errorf("columns after migration = %s, want %d", got, len(columns)+1)
	}
	if got := query(t, s, "SELECT sourcePodName, httpVals FROM flows ORDER BY sourcePodName"); got != "client\t{\"0\":\"GET /\"}\nold" {
		t.Errorf("rows = %q, want the old row kept and the new one complete", got)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
