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
