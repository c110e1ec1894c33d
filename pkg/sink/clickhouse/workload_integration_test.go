//go:build integration

package clickhouse

import (
	"context"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// A table from before the workload and L7 count columns (today's DDL
// without them) gains them by ADD COLUMN with their types: its old rows
// read them empty or zero, new rows carry them.
func TestOldTableGainsWorkloadAndL7CountColumns(t *testing.T) {
	s := clickhousetest.Start(t)
	added := map[string]string{
		"sourceWorkloadKind": "LowCardinality(String)", "sourceWorkloadName": "String",
		"destinationWorkloadKind": "LowCardinality(String)", "destinationWorkloadName": "String",
		"httpRequests": "UInt64", "http4xx": "UInt64", "http5xx": "UInt64", "dnsErrors": "UInt64",
	}
	query(t, s, CreateTableSQL("default", "flows", Version{Major: 18, Minor: 16}))
	for name := range added {
		query(t, s, "ALTER TABLE default.flows DROP COLUMN "+name)
	}
	query(t, s, "INSERT INTO default.flows (flowStartSeconds, flowEndSeconds, sourcePodName, batchId) VALUES (now(), now(), 'old', 0)")

	w := newWriter(t, s, "")
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := w.Write(ctx, &sink.Batch{ID: 1, Records: []*correlate.Record{testRecord(0)}}); err != nil {
		t.Fatalf("Write after migration: %v", err)
	}
	v := w.Version()
	for name, typ := range added {
		c, _ := sink.LookupColumn(name)
		if want := typeFor(&c, v); want != typ && !(typ == "LowCardinality(String)" && want == "String") {
			t.Fatalf("%s: the sink's type %s, want %s", name, want, typ)
		}
		got := query(t, s, "SELECT type FROM system.columns WHERE database = 'default' AND table = 'flows' AND name = '"+name+"'")
		if got != typeFor(&c, v) {
			t.Errorf("column %s: type %q after migration, want %q", name, got, typeFor(&c, v))
		}
	}
	got := query(t, s, "SELECT sourcePodName, sourceWorkloadKind, sourceWorkloadName, destinationWorkloadKind, destinationWorkloadName, "+
		"httpRequests, http4xx, http5xx, dnsErrors FROM default.flows ORDER BY batchId")
	want := "old\t\t\t\t\t0\t0\t0\t0\n" + "client\tDeployment\tclient\tStatefulSet\tw\"eb\\t\t41\t42\t43\t44"
	if got != want {
		t.Errorf("rows =\n%q\nwant\n%q", got, want)
	}
}
