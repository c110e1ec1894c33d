package servicemap

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseNodeID(t *testing.T) {
	for id, want := range map[string]Node{
		"w:demo/Deployment/web": {ID: "w:demo/Deployment/web", Kind: KindWorkload, Namespace: "demo", WorkloadKind: "Deployment", Name: "web", Label: "demo/web"},
		"p:demo/web-1":          {ID: "p:demo/web-1", Kind: KindPod, Namespace: "demo", Name: "web-1", Label: "demo/web-1"},
		"s:kube-system/dns":     {ID: "s:kube-system/dns", Kind: KindService, Namespace: "kube-system", Name: "dns", Label: "kube-system/dns"},
		"x:10.0.0.1":            {ID: "x:10.0.0.1", Kind: KindExternal, Name: "10.0.0.1", Label: "10.0.0.1"},
		"x:a|b:c/d":             {ID: "x:a|b:c/d", Kind: KindExternal, Name: "a|b:c/d", Label: "a|b:c/d"},
	} {
		got, err := ParseNodeID(id)
		if err != nil || got != want {
			t.Errorf("ParseNodeID(%q) = %+v, %v; want %+v", id, got, err, want)
		}
	}
	for _, bad := range []string{"", "w:", "w:demo/web", "p:demo", "s:/x", "q:x", "x:", "nocolon", "x:" + strings.Repeat("a", MaxNodeIDLen)} {
		if _, err := ParseNodeID(bad); err == nil {
			t.Errorf("ParseNodeID(%q) accepted", bad)
		}
	}
}

func TestEdgeIDRoundTrip(t *testing.T) {
	for _, k := range []EdgeKey{
		{Source: "w:a/Deployment/b", Destination: "s:a/c", Port: 80, Protocol: 6},
		{Source: "x:10.0.0.1", Destination: "x:weird|name|1|2", Port: 65535, Protocol: 255},
	} {
		got, err := ParseEdgeID(k.String())
		if err != nil || got != k {
			t.Errorf("ParseEdgeID(%q) = %+v, %v", k.String(), got, err)
		}
	}
	for _, bad := range []string{"", "a|b", "w:a/b/c|s:a/b|x|6", "w:a/b/c|s:a/b|80|300", "w:a/b/c|s:a/b|-1|6", "bad|s:a/b|80|6", "w:a/b/c|bad|80|6"} {
		if _, err := ParseEdgeID(bad); err == nil {
			t.Errorf("ParseEdgeID(%q) accepted", bad)
		}
	}
}

func TestFlowKey(t *testing.T) {
	k := FlowKey{ConnectionKey: 1<<64 - 1, StartSeconds: 1<<32 - 1}
	if got, err := ParseFlowKey(k.String()); err != nil || got != k {
		t.Errorf("round trip %q: %+v %v", k.String(), got, err)
	}
	for _, bad := range []string{"", "1", "a-1", "1-b", "1-4294967296", "-1-2", "1-2-3", "1 OR 1=1-2"} {
		if _, err := ParseFlowKey(bad); err == nil {
			t.Errorf("ParseFlowKey(%q) accepted", bad)
		}
	}
}

func TestWindowValidate(t *testing.T) {
	at := func(s int64) time.Time { return time.Unix(s, 0) }
	for _, tc := range []struct {
		w  Window
		ok bool
	}{
		{Window{at(100), at(200)}, true},
		{Window{at(200), at(200)}, false},
		{Window{at(300), at(200)}, false},
		{Window{at(0), at(int64(MaxWindow/time.Second) + 1)}, false},
		{Window{at(0), at(int64(MaxWindow / time.Second))}, true},
		{Window{at(-5), at(10)}, false},
		{Window{at(1 << 32), at(1<<32 + 10)}, false},
	} {
		err := tc.w.Validate()
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%v..%v: %v, want ok=%v", tc.w.From.Unix(), tc.w.To.Unix(), err, tc.ok)
		}
	}
}

// Filter values reach the query only as bound arguments: the SQL text is
// the same whatever they hold.
func TestFlowFilterValuesAreArguments(t *testing.T) {
	w := Window{From: time.Unix(1000, 0), To: time.Unix(2000, 0)}
	hostile := `x' OR 1=1; DROP TABLE flows; --`
	q := FlowQuery{Window: w, Namespace: hostile, Pod: hostile, Service: hostile, AppProtocol: hostile, Text: hostile,
		Node: "x:" + hostile, Edge: "w:a/b/c|x:" + hostile + "|1|6"}
	cond, args, err := q.where()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cond, "DROP") || strings.Contains(cond, "1=1") {
		t.Errorf("a value reached the SQL text: %s", cond)
	}
	if n := strings.Count(cond, "?"); n != len(args) {
		t.Errorf("%d placeholders, %d arguments", n, len(args))
	}
	found := 0
	for _, a := range args {
		if s, ok := a.(string); ok && strings.Contains(s, hostile) {
			found++
		}
	}
	// namespace 3, pod 2, service 1, appProtocol 1, text 3, node 2, edge 1.
	if found != 13 {
		t.Errorf("%d arguments carry the value, want 13", found)
	}
	for _, bad := range []FlowQuery{
		{Window: w, Text: strings.Repeat("a", MaxTextLen+1)},
		{Window: w, Namespace: strings.Repeat("a", 10*1024)},
		{Window: w, Correlation: "correlated' OR '1'='1"},
		{Window: w, Node: "y:" + hostile},
		{Window: w, Edge: hostile},
	} {
		if _, _, err := bad.where(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: err %v, want ErrInvalid", bad, err)
		}
	}
}

func TestMapSQLBindsNamespace(t *testing.T) {
	r, err := New(Config{Database: "db`x", Table: "t"}, nopConn{})
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range []mapSource{r.rawSource(), r.rollupSource()} {
		sql, args := r.mapSQL(src, time.Unix(600, 0), time.Unix(1200, 0), "ns' OR 1=1")
		if strings.Contains(sql, "OR 1=1") || strings.Count(sql, "?") != len(args) {
			t.Errorf("sql %s\nargs %v", sql, args)
		}
		if !strings.Contains(sql, "`db\\`x`") {
			t.Errorf("database not quoted: %s", sql)
		}
	}
}

func TestMinuteRounding(t *testing.T) {
	at := time.Unix(125, 0)
	if floorMinute(at).Unix() != 120 || ceilMinute(at).Unix() != 180 || ceilMinute(time.Unix(120, 0)).Unix() != 120 {
		t.Error("minute rounding")
	}
}

func TestCeilMinuteStaysInTheDateTimeRange(t *testing.T) {
	if got := ceilMinute(time.Unix(maxDateTime-5, 0)).Unix(); got != maxDateTime {
		t.Errorf("ceilMinute near the end of DateTime = %d, want %d", got, int64(maxDateTime))
	}
}

// The UI finds the cluster of a Distributed rollup in engine_full, as
// 18.16 writes it.
func TestDistributedCluster(t *testing.T) {
	for _, tc := range []struct {
		full, want string
		ok         bool
	}{
		{"Distributed('flowlens', 'default', 'flows_local_rollup')", "flowlens", true},
		{`Distributed('it\'s', 'db', 'x', connectionKey)`, "it's", true},
		{"Distributed(c1, db, x)", "c1", true},
		{"Distributed('', 'db', 'x')", "", false},
		{"Distributed('unterminated", "", false},
		{"MergeTree ORDER BY x", "", false},
	} {
		got, ok := distributedCluster(tc.full)
		if got != tc.want || ok != tc.ok {
			t.Errorf("distributedCluster(%q) = %q, %v; want %q, %v", tc.full, got, ok, tc.want, tc.ok)
		}
	}
}
