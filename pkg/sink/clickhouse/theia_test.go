package clickhouse

import (
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/sink"
)

// A view naming a column the table lacks would fail EnsureSchema on every
// start: each view column must be an output column (or the server's
// timeInserted), listed once.
func TestTheiaViewsReadOnlyTableColumns(t *testing.T) {
	views := TheiaViews()
	if len(views) != 3 {
		t.Fatalf("%d views, want Theia's pod, node and policy views", len(views))
	}
	for _, v := range views {
		seen := map[string]bool{}
		for _, c := range v.Columns {
			if seen[c] {
				t.Errorf("view %s lists %s twice", v.Suffix, c)
			}
			seen[c] = true
			if _, ok := sink.LookupColumn(c); !ok && c != "timeInserted" {
				t.Errorf("view %s reads %s, which the table does not have", v.Suffix, c)
			}
		}
	}
}

func TestCreateViewSQL(t *testing.T) {
	v := TheiaView{Suffix: "_pod_view", Columns: []string{"timeInserted", "sourcePodName"}}
	got := CreateViewSQL("db", "flows", v)
	want := "CREATE VIEW IF NOT EXISTS `db`.`flows_pod_view` AS SELECT timeInserted, sourcePodName FROM `db`.`flows`"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	// Another table gets its own views, so two flowlens tables in one
	// database do not share (or fight over) one view.
	if got := CreateViewSQL("db", "flows2", v); !strings.Contains(got, "`db`.`flows2_pod_view`") || !strings.HasSuffix(got, "FROM `db`.`flows2`") {
		t.Errorf("view of table flows2: %s", got)
	}
}

// What an existing object under a view's name must be for the dashboards
// to read flowlens's table. The queries are as servers store them:
// 18.16's system.tables.create_table_query (seen on the test server), and
// the backquoted form of later versions.
func TestViewReadsTable(t *testing.T) {
	for _, tc := range []struct {
		name, engine, query string
		want                bool
	}{
		{"ours on 18.16", "View", "CREATE VIEW default.flows_pod_view ( x UInt8,  y String) AS SELECT x, y FROM default.flows ", true},
		{"ours, backquoted", "View", "CREATE VIEW `default`.`flows_pod_view` (`x` UInt8) AS SELECT x FROM `default`.`flows`", true},
		{"operator's view of the flows", "View", "CREATE VIEW default.flows_node_view ( x UInt8) AS SELECT * FROM flows WHERE x > 1", true},
		{"joins ours", "View", "CREATE VIEW default.flows_policy_view ( x UInt8) AS SELECT x FROM default.flows  WHERE x IN (SELECT x FROM default.flows2 )", true},
		{"Theia's own table", "SummingMergeTree", "CREATE TABLE default.flows_pod_view (timeInserted DateTime) ENGINE = SummingMergeTree", false},
		{"Theia's Distributed table", "Distributed", "CREATE TABLE default.flows_pod_view AS default.flows_pod_view_local ENGINE = Distributed(c, default, flows_pod_view_local)", false},
		{"view of another table", "View", "CREATE VIEW default.flows_pod_view ( x UInt8) AS SELECT x FROM default.flows_local", false},
		{"view of a longer name", "View", "CREATE VIEW default.flows_pod_view ( x UInt8) AS SELECT x FROM default.flows2", false},
		{"view of the table in another database", "View", "CREATE VIEW default.flows_pod_view ( x UInt8) AS SELECT x FROM theia.flows", false},
		{"view of nothing", "View", "CREATE VIEW default.flows_node_view ( x UInt8) AS SELECT 1 AS x", false},
		{"materialized view into its own table", "MaterializedView", "CREATE MATERIALIZED VIEW default.flows_pod_view TO default.x AS SELECT x FROM default.flows", false},
	} {
		if got := ViewReadsTable(tc.engine, tc.query, "default", "flows"); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestExistingViewsSQL(t *testing.T) {
	got := ExistingViewsSQL("db", "flows")
	want := "SELECT name, engine, create_table_query FROM system.tables WHERE database = 'db' AND name IN ('flows_pod_view', 'flows_node_view', 'flows_policy_view')"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
