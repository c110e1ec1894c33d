//go:build integration

package clickhouse

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// theiaColumnTypes are the columns of Theia's flows table flowlens had no
// column for before it added them empty, with Theia's types (its
// create_table.sh, test/theia/testdata/theia_tables.sql).
var theiaColumnTypes = map[string]string{
	"ingressNetworkPolicyName": "String", "ingressNetworkPolicyNamespace": "String", "ingressNetworkPolicyRuleName": "String",
	"ingressNetworkPolicyRuleAction": "UInt8", "ingressNetworkPolicyType": "UInt8",
	"egressNetworkPolicyName": "String", "egressNetworkPolicyNamespace": "String", "egressNetworkPolicyRuleName": "String",
	"egressNetworkPolicyRuleAction": "UInt8", "egressNetworkPolicyType": "UInt8",
	"clusterUUID": "String", "egressName": "String", "egressIP": "String", "trusted": "UInt8",
}

// A table the previous flowlens created (every column but Theia's) gains
// Theia's columns by ADD COLUMN, its old rows read them empty, new rows
// are written, and the views Theia's dashboards read appear over both; an
// object already holding a view's name is left alone.
func TestOldTableGainsTheiaColumnsAndViews(t *testing.T) {
	s := clickhousetest.Start(t)
	ver := query(t, s, "SELECT version()")
	var v Version
	if _, err := fmt.Sscanf(ver, "%d.%d.%d", &v.Major, &v.Minor, &v.Patch); err != nil {
		t.Fatalf("server version %q: %v", ver, err)
	}
	query(t, s, CreateTableSQL("default", "flows", v))
	for name := range theiaColumnTypes {
		query(t, s, "ALTER TABLE flows DROP COLUMN "+name)
	}
	query(t, s, "INSERT INTO flows (flowEndSeconds, sourcePodName, octetDeltaCount, batchId) VALUES (toDateTime(1700000000), 'old', 7, 0)")
	// Theia's own pod view (a Distributed table there) already in place.
	query(t, s, "CREATE TABLE flows_node_view (x UInt8) ENGINE = Memory")

	w := newWriter(t, s, "")
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := w.Write(ctx, &sink.Batch{ID: 1, Records: []*correlate.Record{testRecord(0)}}); err != nil {
		t.Fatalf("Write to the old table: %v", err)
	}

	got := map[string]string{}
	for _, line := range strings.Split(query(t, s, "SELECT name, type FROM system.columns WHERE database = 'default' AND table = 'flows'"), "\n") {
		name, typ, _ := strings.Cut(line, "\t")
		got[name] = typ
	}
	for name, typ := range theiaColumnTypes {
		if got[name] != typ {
			t.Errorf("column %s: type %q after migration, want %q", name, got[name], typ)
		}
	}
	// clusterUUID has a value in new rows (the agent's clusterId); an
	// old row reads it empty like the others.
	cols := "ingressNetworkPolicyName, ingressNetworkPolicyRuleAction, egressNetworkPolicyType, egressIP, trusted"
	if got, want := query(t, s, "SELECT sourcePodName, "+cols+" FROM flows ORDER BY batchId"), "old\t\t0\t0\t\t0\nclient\t\t0\t0\t\t0"; got != want {
		t.Errorf("Theia columns of the old and the new row:\n got %q\nwant %q", got, want)
	}
	if got := query(t, s, "SELECT clusterUUID FROM flows WHERE batchId = 0"); got != "" {
		t.Errorf("old row's clusterUUID = %q, want empty", got)
	}
	// The pod view reads both rows; the policy view exists too.
	if got, want := query(t, s, "SELECT sourcePodName, octetDeltaCount FROM flows_pod_view ORDER BY octetDeltaCount"), "old\t7\nclient\t300"; got != want {
		t.Errorf("flows_pod_view: got %q, want %q", got, want)
	}
	if got := query(t, s, "SELECT count() FROM flows_policy_view"); got != "2" {
		t.Errorf("flows_policy_view rows: %s, want 2", got)
	}
	if got := query(t, s, "SELECT engine FROM system.tables WHERE database = 'default' AND name = 'flows_node_view'"); got != "Memory" {
		t.Errorf("the existing flows_node_view is now a %s, want it left alone (Memory)", got)
	}
}

// A Theia view name already taken by something that does not read the
// flows table (Theia's own table, a view of something else) is reported,
// and left in place; a missing one is created, and a view of the flows
// table an operator made is accepted.
func TestForeignViewsAreReportedNotDropped(t *testing.T) {
	s := clickhousetest.Start(t)
	query(t, s, "CREATE TABLE other (x UInt8) ENGINE = Memory")
	query(t, s, "CREATE TABLE flows_pod_view (timeInserted DateTime, octetDeltaCount UInt64) ENGINE = Memory")
	query(t, s, "CREATE VIEW flows_node_view AS SELECT x FROM other")
	query(t, s, "INSERT INTO flows_pod_view VALUES (toDateTime(1700000000), 42)")

	w := newWriter(t, s, "")
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	got := w.ForeignViews()
	slices.Sort(got)
	if want := []string{"default.flows_node_view", "default.flows_pod_view"}; !slices.Equal(got, want) {
		t.Errorf("foreign views %v, want %v", got, want)
	}
	if got := query(t, s, "SELECT octetDeltaCount FROM flows_pod_view"); got != "42" {
		t.Errorf("Theia's flows_pod_view holds %q, want its row 42 untouched", got)
	}
	if got := query(t, s, "SELECT engine FROM system.tables WHERE database = 'default' AND name = 'flows_policy_view'"); got != "View" {
		t.Errorf("flows_policy_view engine %q, want the View flowlens creates", got)
	}

	// Once they are fixed (an operator's own view of the flows included),
	// a new writer finds nothing to report.
	query(t, s, "DROP TABLE flows_pod_view")
	query(t, s, "DROP TABLE flows_node_view")
	query(t, s, "CREATE VIEW flows_node_view AS SELECT * FROM flows WHERE octetDeltaCount > 0")
	w2 := newWriter(t, s, "")
	defer w2.Close()
	if err := w2.EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	if got := w2.ForeignViews(); len(got) != 0 {
		t.Errorf("foreign views %v after the fix, want none", got)
	}
}
