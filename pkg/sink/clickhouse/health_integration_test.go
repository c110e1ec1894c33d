//go:build integration

package clickhouse

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

var healthColumns = map[string]string{
	"tcpRttMinMicroseconds": "UInt32", "tcpRttAvgMicroseconds": "UInt32", "tcpRttMaxMicroseconds": "UInt32",
	"tcpRttSampleCount": "UInt32", "tcpRetransmitDeltaCount": "UInt32", "reverseTcpRetransmitDeltaCount": "UInt32",
	"tcpResetDeltaCount": "UInt32", "reverseTcpResetDeltaCount": "UInt32", "tcpEstablishMicroseconds": "UInt32",
	"tcpZeroWindowDeltaCount": "UInt32", "droppedPacketDeltaCount": "UInt32", "reverseDroppedPacketDeltaCount": "UInt32",
	"packetDropReason": "LowCardinality(String)", "destinationDnsName": "String",
}

// A table of the schema before the health columns (today's DDL without
// them, as the previous release created it) with a row in it: an upgraded
// aggregator adds them by ADD COLUMN, the old row survives with zeros and
// empty strings, new rows carry their values.
func TestOldTableGainsHealthColumns(t *testing.T) {
	s := clickhousetest.Start(t)
	query(t, s, CreateTableSQL("default", "flows", Version{Major: 18, Minor: 16}))
	for name := range healthColumns {
		query(t, s, "ALTER TABLE default.flows DROP COLUMN "+name)
	}
	if got := query(t, s, "SELECT count() FROM system.columns WHERE database = 'default' AND table = 'flows' AND name LIKE '%Rtt%'"); got != "0" {
		t.Fatalf("the old table has %s RTT columns", got)
	}
	query(t, s, "INSERT INTO default.flows (flowStartSeconds, flowEndSeconds, sourcePodName, batchId) VALUES (now(), now(), 'old', 0)")

	w := newWriter(t, s, "")
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := testRecord(3)
	if _, err := w.Write(ctx, &sink.Batch{ID: 1, Records: []*correlate.Record{rec}}); err != nil {
		t.Fatalf("Write after migration: %v", err)
	}
	v := w.Version()
	for name, typ := range healthColumns {
		c, _ := sink.LookupColumn(name)
		want := typeFor(&c, v)
		if want != typ && !(typ == "LowCardinality(String)" && want == "String") {
			t.Fatalf("%s: the sink's type %s, want %s", name, want, typ)
		}
		if got := query(t, s, "SELECT type FROM system.columns WHERE database = 'default' AND table = 'flows' AND name = '"+name+"'"); got != want {
			t.Errorf("column %s: type %q after migration, want %q", name, got, want)
		}
	}
	got := query(t, s, "SELECT sourcePodName, tcpRttMinMicroseconds, tcpRttAvgMicroseconds, tcpRttMaxMicroseconds, tcpRttSampleCount, "+
		"tcpRetransmitDeltaCount, reverseTcpRetransmitDeltaCount, tcpResetDeltaCount, reverseTcpResetDeltaCount, "+
		"tcpEstablishMicroseconds, tcpZeroWindowDeltaCount, droppedPacketDeltaCount, reverseDroppedPacketDeltaCount, "+
		"packetDropReason, destinationDnsName FROM default.flows ORDER BY batchId")
	want := "old\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t\t\n" +
		"client\t4294967292\t1103\t1203\t1303\t51\t52\t53\t54\t1403\t55\t56\t57\tNETFILTER_DROP\tapi.example.com"
	if got != want {
		t.Errorf("rows =\n%q\nwant\n%q", got, want)
	}
	// Every column reads back as the column table says.
	stored := readTable(t, s, "flows")
	wantRow := sink.RowOf(rec, &sink.Meta{Aggregator: "agg-1", BatchID: 1})
	if len(stored) != 2 {
		t.Fatalf("%d rows, want 2", len(stored))
	}
	if d := stored[1].Diff(&wantRow); len(d) > 0 {
		t.Errorf("new row differs from the column table: %v", d)
	}
}

// Two aggregators upgrading one table: the one whose ALTER comes second
// finds the column there (18.16 has no ADD COLUMN IF NOT EXISTS, so its
// ALTER fails) and carries on instead of failing the sink.
func TestAddingAColumnAnotherWriterAddedIsNoError(t *testing.T) {
	s := clickhousetest.Start(t)
	w := newWriter(t, s, "")
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := w.Write(ctx, &sink.Batch{ID: 1, Records: []*correlate.Record{testRecord(0)}}); err != nil {
		t.Fatal(err)
	}
	c, _ := sink.LookupColumn("tcpRttAvgMicroseconds")
	typ := typeFor(&c, w.Version())
	// What the server says to the second ALTER.
	if _, err := s.Query(AddColumnSQL("default", "flows", c.Name, typ)); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("a second ADD COLUMN: %v, want \"already exists\"", err)
	}
	added, err := w.addColumn(ctx, "flows", &c, typ)
	if err != nil || added {
		t.Errorf("addColumn of a column that exists = %v, %v; want false, nil", added, err)
	}
	// A column that cannot be added is still an error.
	bad := c
	bad.Name = "no such`column"
	if _, err := w.addColumn(ctx, "flows", &bad, "NoSuchType"); err == nil {
		t.Error("addColumn of an impossible column succeeded")
	}
}
