package sink

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/sink/sinktest"
)

func TestColumnNamesAreUniqueAndTyped(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range Columns() {
		if seen[c.Name] {
			t.Errorf("column %s defined twice", c.Name)
		}
		seen[c.Name] = true
		if (c.str != nil) == (c.num != nil) || (c.str != nil) != (c.Type == TypeString) {
			t.Errorf("column %s of type %s has the wrong accessor", c.Name, c.Type)
		}
		if c.LowCardinality && c.Type != TypeString {
			t.Errorf("column %s: LowCardinality on %s", c.Name, c.Type)
		}
	}
}

func TestJSONIsFlatTypedAndReadsBackAsTheRecordsRow(t *testing.T) {
	r := sinktest.Record(2)
	m := &Meta{Aggregator: "agg-1", BatchID: 1<<64 - 1}
	line := AppendJSON(nil, r, m)
	var generic map[string]any
	if err := json.Unmarshal(line, &generic); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, line)
	}
	if len(generic) != len(Columns()) {
		t.Errorf("%d fields, want one per column (%d)", len(generic), len(Columns()))
	}
	for _, c := range Columns() {
		v, ok := generic[c.Name]
		if !ok {
			t.Errorf("column %s missing", c.Name)
			continue
		}
		if _, isStr := v.(string); isStr != (c.Type == TypeString) {
			t.Errorf("column %s (%s) written as %T", c.Name, c.Type, v)
		}
	}
	for name, want := range map[string]any{
		"destinationClusterIP": "10.96.0.1", "destinationServiceIP": "10.96.0.1", "destinationServicePort": 80.0,
		"flowEndReason": float64(r.EndReason), "flowStartSeconds": 1_700_000_002.0, "flowEndSeconds": 1_700_000_062.0,
		"packetTotalCountFromSourceNode": 21.0, "flowEndSecondsFromDestinationNode": 1_700_000_060.0,
		"destinationExporter": "10.0.0.2/8", "tcpState": r.TCPState.String(), "httpVals": r.L7.HTTPVals,
		"correlation": "correlated", "aggregator": "agg-1", "flowType": float64(flow.FlowTypeInterNode),
	} {
		if generic[name] != want {
			t.Errorf("%s = %#v, want %#v", name, generic[name], want)
		}
	}
	for _, gone := range []string{"clusterIP", "fromSourceNode", "fromDestinationNode"} {
		if _, ok := generic[gone]; ok {
			t.Errorf("old nested/bool field %s still written", gone)
		}
	}
	got, err := ParseJSONRow(line)
	if err != nil {
		t.Fatal(err)
	}
	want := RowOf(r, m)
	if d := got.Diff(&want); len(d) > 0 {
		t.Errorf("read back differs: %v", d)
	}
	if got.Num("batchId") != 1<<64-1 || got.Str("sourcePodName") != "client" || got.Time("flowStartSeconds").Unix() != 1_700_000_002 {
		t.Errorf("accessors: batchId %d sourcePodName %q start %v", got.Num("batchId"), got.Str("sourcePodName"), got.Time("flowStartSeconds"))
	}
}

// Strings are escaped as encoding/json would read them back, whatever
// bytes the agents sent (pod labels, URLs and DNS names come from the
// wire).
func TestJSONStringEscaping(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "ctl\x00\x01\x1f\n\r\t", "caf\u00e9 \u2028 😀", "bad\xff\xfeutf8", "<html>&"} {
		b := appendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(b, &back); err != nil {
			t.Errorf("%q encoded as invalid JSON %s: %v", s, b, err)
			continue
		}
		var want string
		ref, _ := json.Marshal(s)
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if back != want {
			t.Errorf("%q read back as %q, want %q", s, back, want)
		}
	}
}

func TestParseJSONRowRejectsWrongTypesNamingTheField(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{`{"flowEndReason":"end-of-flow"}`, "flowEndReason"},
		{`{"flowEndReason":256}`, "flowEndReason"},
		{`{"packetTotalCount":-1}`, "packetTotalCount"},
		{`{"packetTotalCount":1.5}`, "packetTotalCount"},
		{`{"sourcePodName":7}`, "sourcePodName"},
		{`{"sourcePodName":null}`, "sourcePodName"},
		{`{"destinationServicePort":65536}`, "destinationServicePort"},
		{`[]`, "not a JSON object"},
		{`not json`, "not a JSON object"},
	} {
		if _, err := ParseJSONRow([]byte(tc.line)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseJSONRow(%s) = %v, want an error naming %s", tc.line, err, tc.want)
		}
	}
	row, err := ParseJSONRow([]byte(`{"sourceIP":"10.0.0.1","newerColumn":[1,2],"sourceTransportPort":65535}`))
	if err != nil || row.Str("sourceIP") != "10.0.0.1" || row.Num("sourceTransportPort") != 65535 || row.Has("destinationIP") {
		t.Errorf("row %+v, err %v: want unknown fields ignored and missing ones unset", row, err)
	}
}

func TestRowMarshalsAsTheSinkWritesIt(t *testing.T) {
	r := sinktest.Record(2)
	m := &Meta{Aggregator: "a", BatchID: 3}
	row := RowOf(r, m)
	b, err := json.Marshal(row)
	if err != nil {
		t.Fatal(err)
	}
	if want := AppendJSON(nil, r, m); string(b) != string(want) {
		t.Errorf("Row marshals as\n%s\nwant\n%s", b, want)
	}
	partial := NewRow()
	if err := partial.SetStr("sourceIP", "10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := partial.SetNum("protocolIdentifier", 6); err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(partial); string(b) != `{"sourceIP":"10.0.0.1","protocolIdentifier":6}` {
		t.Errorf("partial row marshals as %s", b)
	}
}
