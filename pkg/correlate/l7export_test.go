package correlate

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Regression (issue 9): every active export of a long-lived connection
// repeated all transactions since the connection began (the entry's L7 was
// never reset), growing without bound. The agent exports each transaction
// once; the aggregator must keep that.
func TestHTTPValsEachTransactionInExactlyOneRow(t *testing.T) {
	for _, ft := range []flow.FlowType{flow.FlowTypeIntraNode, flow.FlowTypeInterNode} {
		t.Run(ft.String(), func(t *testing.T) {
			active := 10 * time.Second
			c := newTestCorrelator(t, Config{ActiveTimeout: active, InactiveTimeout: time.Minute, CorrelationWait: 2 * time.Second})
			var out collected
			want := map[string]bool{}
			tx := 0
			// Three aggregator intervals, each with new transactions in two
			// agent records (both halves' nodes for inter-node).
			for round := 0; round < 3; round++ {
				base := t0.Add(time.Duration(round) * active)
				for k := 0; k < 2; k++ {
					now := base.Add(time.Duration(1+k*3) * time.Second)
					for _, in := range []Input{srcHalf(flow.EndActiveTimeout), dstHalf(flow.EndActiveTimeout)} {
						if ft != flow.FlowTypeInterNode && in.Exporter != "node-a" {
							continue
						}
						in.Record.FlowType = ft
						id := fmt.Sprint(tx)
						tx++
						in.Record.L7 = flow.L7{AppProtocolName: "http", HTTPVals: fmt.Sprintf(`{%q:{"url":"/r%s"}}`, id, id)}
						want[id] = true
						c.Expire(now, out.emit)
						c.Add(&in, now, out.emit)
						c.Expire(now, out.emit)
					}
				}
			}
			c.Expire(t0.Add(3*active+time.Second), out.emit)
			c.Flush(out.emit)
			if len(out) < 3 {
				t.Fatalf("got %d rows, want at least one per interval (3)", len(out))
			}
			seen := map[string]int{}
			for i, r := range out {
				if r.L7.HTTPVals == "" {
					continue
				}
				var m map[string]json.RawMessage
				if err := json.Unmarshal([]byte(r.L7.HTTPVals), &m); err != nil {
					t.Fatalf("row %d httpVals %q is not a JSON object: %v", i, r.L7.HTTPVals, err)
				}
				for id := range m {
					seen[id]++
				}
				if r.L7.AppProtocolName != "http" {
					t.Errorf("row %d appProtocolName = %q, want it kept on every row", i, r.L7.AppProtocolName)
				}
			}
			for id := range want {
				if seen[id] != 1 {
					t.Errorf("transaction %s is in %d rows, want exactly 1", id, seen[id])
				}
			}
			if len(seen) != len(want) {
				t.Errorf("rows hold %d transactions, want the %d sent", len(seen), len(want))
			}
		})
	}
}

// DNS details describe one query and are exported once like HTTP
// transactions; the app protocol and TLS handshake describe the connection
// and stay on every row (the agent's pkg/l7 contract).
func TestL7PerTransactionFieldsResetAfterExport(t *testing.T) {
	c := newTestCorrelator(t, Config{ActiveTimeout: 10 * time.Second, InactiveTimeout: time.Minute})
	var out collected
	in := oneNodeUpdate(flow.FlowTypeIntraNode, 0, flow.EndActiveTimeout)
	in.Record.L7 = flow.L7{AppProtocolName: "tls", TLSServerName: "a.test", TLSVersion: "TLS 1.3",
		DNSQueryName: "q.test", DNSQueryType: "A", DNSResponseCode: "NOERROR", DNSAnswers: "10.0.0.1", HTTPVals: `{"0":"x"}`}
	c.Add(&in, t0, out.emit)
	c.Expire(t0.Add(10*time.Second), out.emit)
	next := oneNodeUpdate(flow.FlowTypeIntraNode, 1, flow.EndActiveTimeout)
	c.Add(&next, t0.Add(11*time.Second), out.emit)
	c.Expire(t0.Add(20*time.Second), out.emit)
	if len(out) != 2 {
		t.Fatalf("got %d rows, want 2 active exports", len(out))
	}
	first, second := out[0].L7, out[1].L7
	if first != in.Record.L7 {
		t.Errorf("first row L7 = %+v, want %+v", first, in.Record.L7)
	}
	want := flow.L7{AppProtocolName: "tls", TLSServerName: "a.test", TLSVersion: "TLS 1.3"}
	if second != want {
		t.Errorf("second row L7 = %+v, want only the connection's fields %+v", second, want)
	}
}

// Every flow.L7 field must be classified as describing the connection
// (kept across exports) or one transaction (exported once): a field added
// later fails here until someone decides which it is.
func TestEveryL7FieldIsClassified(t *testing.T) {
	var probe flow.L7
	v := reflect.ValueOf(&probe).Elem()
	for i := 0; i < v.NumField(); i++ {
		if v.Field(i).Kind() == reflect.String {
			v.Field(i).SetString("x")
		}
	}
	kept := probe
	resetTransactions(&kept)
	kv := reflect.ValueOf(kept)
	for i := 0; i < v.NumField(); i++ {
		name := v.Type().Field(i).Name
		_, isConn := l7ConnectionFields[name]
		cleared := kv.Field(i).IsZero()
		switch {
		case isConn && cleared:
			t.Errorf("L7.%s describes the connection but is cleared after an export", name)
		case !isConn && !cleared:
			t.Errorf("L7.%s is not listed as a connection field and survives an export: classify it", name)
		}
	}
}
