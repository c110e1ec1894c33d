package clickhouse

import (
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/sink"
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

func TestInsertAndSelectListEveryColumn(t *testing.T) {
	n := len(sink.ColumnNames())
	ins := InsertSQL("db", "t")
	if !strings.HasPrefix(ins, "INSERT INTO `db`.`t` (flowStartSeconds, ") || strings.Count(ins, ",")+1 != n {
		t.Errorf("insert %q does not list the %d columns", ins, n)
	}
	sel := SelectSQL("db", "t", "ORDER BY batchId")
	if !strings.HasPrefix(sel, "SELECT flowStartSeconds, ") || !strings.HasSuffix(sel, " FROM `db`.`t` ORDER BY batchId") || strings.Count(sel, ",")+1 != n {
		t.Errorf("select %q does not list the %d columns", sel, n)
	}
}

// Every application-layer field the agent exports must reach the table;
// a field added to flow.L7 without a column fails here.
func TestEveryL7FieldHasAColumn(t *testing.T) {
	names := map[string]bool{}
	for _, n := range sink.ColumnNames() {
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

// The slices handed to clickhouse-go hold, converted to the column's Go
// type, exactly the column table's values.
func TestColumnValuesAreTheColumnTables(t *testing.T) {
	r := &correlate.Record{Correlation: correlate.StatusCorrelated}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 40000, 443, flow.ProtoTCP)
	r.StartNanos, r.EndReason, r.FlowType = 1_700_000_000_500_000_000, flow.EndOfFlow, flow.FlowTypeInterNode
	r.Fwd = flow.Counters{Packets: 7, Bytes: 1 << 40}
	r.L7.HTTPVals = `{"0":"x"}`
	r.Source.PodName = "client"
	recs := []*correlate.Record{r, r, r}
	m := &sink.Meta{Aggregator: "agg", BatchID: 7}
	for _, c := range sink.Columns() {
		v := reflect.ValueOf(columnValues(&c, recs, m))
		if v.Kind() != reflect.Slice || v.Len() != len(recs) {
			t.Fatalf("column %s built %v, want a slice of %d", c.Name, v.Kind(), len(recs))
		}
		var got any
		switch e := v.Index(2).Interface().(type) {
		case time.Time:
			got = uint64(e.Unix())
		case string:
			got = e
		default:
			got = v.Index(2).Convert(reflect.TypeOf(uint64(0))).Interface()
		}
		want := any(c.Num(r, m))
		if !c.Type.Numeric() {
			want = c.Str(r, m)
		}
		if got != want {
			t.Errorf("column %s: built %v, column table says %v", c.Name, got, want)
		}
	}
}

func TestSchemaTypesAreCompatibleAcrossReleases(t *testing.T) {
	name, _ := sink.LookupColumn("sourcePodNamespace")
	count, _ := sink.LookupColumn("packetTotalCount")
	for _, tc := range []struct {
		c    sink.Column
		have string
		ok   bool
	}{
		{name, "String", true},
		{name, "LowCardinality(String)", true},
		{name, "UInt64", false},
		{count, "UInt64", true},
		{count, "String", false},
		{count, "UInt32", false},
	} {
		if got := compatible(&tc.c, tc.have); got != tc.ok {
			t.Errorf("compatible(%s %s, %s) = %v, want %v", tc.c.Name, tc.c.Type, tc.have, got, tc.ok)
		}
	}
}
