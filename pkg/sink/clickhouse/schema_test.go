package clickhouse

import (
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

func TestCreateTableSQL(t *testing.T) {
	forbidden := regexp.MustCompile(`\b(Map|DateTime64|IPv4|IPv6|JSON|Object)\(|\bIPv[46]\b|DateTime64`)
	for _, tc := range []struct {
		name           string
		v              Version
		wantLowCard    bool
		forbidPostOnly bool
	}{
		{"Debian's 18.16 gets only types it knows", Version{18, 16, 1}, false, true},
		{"19.8 still without LowCardinality", Version{19, 8, 0}, false, true},
		{"current releases store names as LowCardinality", Version{23, 8, 0}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ddl := CreateTableSQL("default", "flows", tc.v)
			if got := strings.Contains(ddl, "LowCardinality"); got != tc.wantLowCard {
				t.Errorf("LowCardinality present = %v, want %v:\n%s", got, tc.wantLowCard, ddl)
			}
			if forbidden.MatchString(ddl) {
				t.Errorf("DDL uses a type 18.16 lacks: %s", forbidden.FindString(ddl))
			}
			for _, want := range []string{"CREATE TABLE IF NOT EXISTS `default`.`flows`", "ENGINE = MergeTree()", "timeInserted DateTime DEFAULT now()",
				"sourcePodName String", "destinationPodName String", "httpVals String", "packetDeltaCountFromSourceNode UInt64",
				"flowStartSeconds DateTime", "aggregator ", "batchId UInt64"} {
				if !strings.Contains(ddl, want) {
					t.Errorf("DDL lacks %q:\n%s", want, ddl)
				}
			}
		})
	}
}

func TestColumnsAreUniqueAndInsertListsThemAll(t *testing.T) {
	seen := map[string]bool{}
	for _, n := range ColumnNames() {
		if seen[n] {
			t.Errorf("column %s defined twice", n)
		}
		seen[n] = true
	}
	ins := InsertSQL("db", "t")
	if !strings.HasPrefix(ins, "INSERT INTO `db`.`t` (flowStartSeconds, ") || strings.Count(ins, ",")+1 != len(columns) {
		t.Errorf("insert %q does not list the %d columns", ins, len(columns))
	}
}

// Every application-layer field the agent exports must reach the table;
// a field added to flow.L7 without a column fails here.
func TestEveryL7FieldHasAColumn(t *testing.T) {
	names := map[string]bool{}
	for _, n := range ColumnNames() {
		names[strings.ToLower(n)] = true
	}
	typ := reflect.TypeOf(flow.L7{})
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		if !names[strings.ToLower(f.Name)] {
			t.Errorf("flow.L7.%s has no column", f.Name)
		}
	}
}

func TestColumnBuildersProduceOneValuePerRecord(t *testing.T) {
	r := &correlate.Record{}
	r.L7.HTTPVals = `{"0":"x"}`
	r.Source.PodName = "client"
	recs := []*correlate.Record{r, r, r}
	for _, c := range columns {
		v := reflect.ValueOf(c.build(recs, &batchInfo{aggregator: "agg", batchID: 7}))
		if v.Kind() != reflect.Slice || v.Len() != len(recs) {
			t.Errorf("column %s built %v, want a slice of %d", c.name, v.Kind(), len(recs))
		}
	}
}
