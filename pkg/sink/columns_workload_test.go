package sink

import (
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// The workload and L7 count columns: the names and types the UI's queries
// rely on (/work notes: ui-api.md), appended after every older column, with
// the values of the record they come from.
func TestWorkloadAndL7CountColumns(t *testing.T) {
	want := []struct {
		name string
		typ  Type
	}{
		{"sourceWorkloadKind", TypeString}, {"sourceWorkloadName", TypeString},
		{"destinationWorkloadKind", TypeString}, {"destinationWorkloadName", TypeString},
		{"httpRequests", TypeUInt64}, {"http4xx", TypeUInt64}, {"http5xx", TypeUInt64}, {"dnsErrors", TypeUInt64},
	}
	names := ColumnNames()
	prev := columnIndex["proxySnatPort"]
	for _, w := range want {
		c, ok := LookupColumn(w.name)
		if !ok || c.Type != w.typ {
			t.Errorf("column %s: %+v, %v; want type %v", w.name, c.Type, ok, w.typ)
			continue
		}
		// Append-only: an existing table gets them by ADD COLUMN.
		if i := columnIndex[w.name]; i <= prev {
			t.Errorf("column %s at %d, not after %s", w.name, i, names[prev])
		} else {
			prev = i
		}
	}

	var r correlate.Record
	r.Source = flow.Endpoint{PodName: "web-5d8f-x", PodNamespace: "shop", WorkloadKind: "Deployment", WorkloadName: "web"}
	r.Destination = flow.Endpoint{PodName: "debug", PodNamespace: "shop"} // bare pod
	r.L7.HTTPVals = `{"1":{"status":200},"2":{"status":404},"3":{"status":500}}`
	r.L7.DNSResponseCode = "SERVFAIL"
	var err error
	if r.L7Counts, err = correlate.CountL7(&r.L7); err != nil {
		t.Fatal(err)
	}
	row := RowOf(&r, &Meta{})
	for name, v := range map[string]string{
		"sourceWorkloadKind": "Deployment", "sourceWorkloadName": "web",
		"destinationWorkloadKind": "", "destinationWorkloadName": "",
	} {
		if got := row.Str(name); got != v {
			t.Errorf("%s = %q, want %q", name, got, v)
		}
	}
	for name, v := range map[string]uint64{"httpRequests": 3, "http4xx": 1, "http5xx": 1, "dnsErrors": 1} {
		if got := row.Num(name); got != v {
			t.Errorf("%s = %d, want %d", name, got, v)
		}
	}
}
