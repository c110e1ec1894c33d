//go:build integration

package theia

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/clickhousetest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The simulated cluster, one agent per node, one aggregator, one
// ClickHouse:
//
//	node-a (index 1)                 node-b (index 2)
//	  shop/client                      store/db           :5432
//	  shop/web     :8080               kube-system/coredns :53
//
// client talks to db (inter-node), web (intra-node) and coredns (inter-node,
// into a namespace Theia's pod and node panels leave out).
const (
	nodeA, nodeB = "node-a", "node-b"
	webPort      = 8080
	dbPort       = 5432
	dnsPort      = 53

	// TCP/IPv4 headers per packet: 40 bytes without options, 60 at most.
	minHeader, maxHeader = 40, 60
	// netnstest's exchange starts with an 8-byte length header.
	exchangeHeader = 8

	// The panels' interval; any works, the checks sum over the buckets.
	panelInterval = 30 * time.Second
)

// conn is one connection as the test made it: who talked to whom (the
// test's own setup) and the counters of its one row in the table, which
// checkSent bounds by what the test sent.
type conn struct {
	name                          string
	srcNS, srcPod, srcNode        string
	dstNS, dstPod, dstNode        string
	srcPort, dstPort              uint16
	flowType                      flow.FlowType
	sent, reply                   int64
	packets, revPackets           uint64
	bytes, revBytes               uint64
	throughput, reverseThroughput uint64
}

func (c conn) srcLabel() string { return fmt.Sprintf("%s/%s:%d", c.srcNS, c.srcPod, c.srcPort) }
func (c conn) dstLabel() string { return fmt.Sprintf("%s/%s:%d", c.dstNS, c.dstPod, c.dstPort) }

// Theia's dashboards leave these namespaces out.
var theiaExcluded = []string{"kube-system", "flow-visibility", "flow-aggregator"}

func included(ns string) bool { return !slices.Contains(theiaExcluded, ns) }

// The filters of the pod panels and of most node panels.
func podPanel(c conn) bool {
	return (c.flowType == flow.FlowTypeIntraNode || c.flowType == flow.FlowTypeInterNode) && included(c.srcNS) && included(c.dstNS)
}
func nodePanel(c conn) bool {
	return c.srcNode != "" && c.dstNode != "" && included(c.srcNS) && included(c.dstNS)
}

func TestTheiaDashboardsRunOnTheFlowlensTable(t *testing.T) {
	testStart := time.Now()
	ch := clickhousetest.Start(t)

	a := netnstest.NewNodeT(t, netnstest.Config{Name: nodeA, Index: 1, Pods: []netnstest.PodSpec{
		{Name: "client", Namespace: "shop"}, {Name: "web", Namespace: "shop"}}})
	b := netnstest.NewNodeT(t, netnstest.Config{Name: nodeB, Index: 2, Pods: []netnstest.PodSpec{
		{Name: "db", Namespace: "store"}, {Name: "coredns", Namespace: "kube-system"}}})
	netnstest.ConnectNodesT(t, a, b)
	client, web, db, dns := a.Pod("client"), a.Pod("web"), b.Pod("db"), b.Pod("coredns")
	for _, l := range []struct {
		p    *netnstest.Pod
		port uint16
	}{{web, webPort}, {db, dbPort}, {dns, dnsPort}} {
		if _, err := l.p.ListenTCP(l.port); err != nil {
			t.Fatal(err)
		}
	}
	inventory := filepath.Join(t.TempDir(), "inventory.yaml")
	must(t, os.WriteFile(inventory, []byte(fmt.Sprintf(`nodes:
  - {name: %[1]s, ips: [%[2]s]}
  - {name: %[3]s, ips: [%[4]s]}
entries:
  - {name: client, group: shop, node: %[1]s, ips: [%[5]s], labels: {app: client}}
  - {name: web, group: shop, node: %[1]s, ips: [%[6]s], labels: {app: web}}
  - {name: db, group: store, node: %[3]s, ips: [%[7]s], labels: {app: db}}
  - {name: coredns, group: kube-system, node: %[3]s, ips: [%[8]s], labels: {app: dns}}
`, nodeA, a.NodeIPv4(), nodeB, b.NodeIPv4(), client.IPv4, web.IPv4, db.IPv4, dns.IPv4)), 0o644))

	agg := agenttest.StartAggregator(t, aggregatorBin, fmt.Sprintf(`aggregatorID: agg-theia
listen: [tcp://127.0.0.1:0]
correlation:
  correlationWait: 5s
  startWindow: 5s
  activeTimeout: 60s
  inactiveTimeout: 60s
sinks:
  clickhouse:
    enabled: true
    addr: %s
    table: flows
    commitInterval: 200ms
    retryMin: 100ms
    retryMax: 1s
`, ch.Addr))
	agentCfg := func(n *netnstest.Node) string {
		return fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
  activeTimeout: 60s
  idleTimeout: 60s
  tickInterval: 100ms
export:
  collector: %s
  transport: tcp
  flushInterval: 100ms
server:
  listen: 127.0.0.1:0
inventory:
  file: %s
`, n.Name, n.NetnsPath, agg.Addr(t, "tcp"), inventory)
	}
	agents := []*agenttest.Agent{agenttest.StartAgent(t, agentBin, agentCfg(a)), agenttest.StartAgent(t, agentBin, agentCfg(b))}

	conns := []*conn{
		{name: "inter-node client->db", srcNS: "shop", srcPod: "client", srcNode: nodeA, dstNS: "store", dstPod: "db", dstNode: nodeB,
			dstPort: dbPort, flowType: flow.FlowTypeInterNode, sent: 30000, reply: 7000},
		{name: "intra-node client->web", srcNS: "shop", srcPod: "client", srcNode: nodeA, dstNS: "shop", dstPod: "web", dstNode: nodeA,
			dstPort: webPort, flowType: flow.FlowTypeIntraNode, sent: 4000, reply: 1000},
		{name: "inter-node client->kube-system/coredns", srcNS: "shop", srcPod: "client", srcNode: nodeA, dstNS: "kube-system", dstPod: "coredns", dstNode: nodeB,
			dstPort: dnsPort, flowType: flow.FlowTypeInterNode, sent: 2000, reply: 500},
	}
	dsts := []*netnstest.Pod{db, web, dns}
	wheres := make([]string, len(conns))
	for i, c := range conns {
		x, err := netnstest.SendExactly(client, dsts[i].Addr(c.dstPort), c.sent, c.reply)
		must(t, err)
		c.srcPort = x.Local.Port()
		wheres[i] = fmt.Sprintf("sourceIP = '%s' AND sourceTransportPort = %d AND destinationIP = '%s' AND destinationTransportPort = %d",
			x.Local.Addr().Unmap(), c.srcPort, dsts[i].IPv4, c.dstPort)
	}
	for i := range conns {
		waitRows(t, ch, wheres[i], 30*time.Second)
	}
	for _, ag := range agents {
		ag.WaitMetric(t, "flowlens_ipfix_exporter_buffered_records", 5*time.Second, func(v float64) bool { return v == 0 })
	}
	agg.WaitMetric(t, "flowlens_aggregator_pending_connections", 10*time.Second, func(v float64) bool { return v == 0 })
	// The time series panels filter on the bucket's start, not the
	// row's time (Theia's "$__timeFilter(time)"): a range that starts in
	// the middle of a bucket leaves that bucket out, in Grafana too. The
	// range starts on a bucket boundary so every row is in.
	step := int64(panelInterval / time.Second)
	q := Query{From: time.Unix(testStart.Unix()/step*step, 0), To: time.Now().Add(time.Second), Interval: panelInterval}

	t.Run("one row per connection, counting what the test sent", func(t *testing.T) {
		if got := count(t, ch, "SELECT count() FROM flows"); got != len(conns) {
			t.Fatalf("%d rows in flows, want %d: one per connection", got, len(conns))
		}
		for i, c := range conns {
			_, rows := mustQuery(t, ch, "default", "SELECT packetDeltaCount, octetDeltaCount, reversePacketDeltaCount, reverseOctetDeltaCount, "+
				"throughput, reverseThroughput, sourcePodNamespace, sourcePodName, sourceNodeName, destinationPodNamespace, destinationPodName, "+
				"destinationNodeName, flowType FROM flows WHERE "+wheres[i])
			if len(rows) != 1 {
				t.Fatalf("%s: %d rows, want 1", c.name, len(rows))
			}
			r := rows[0]
			c.packets, c.bytes, c.revPackets, c.revBytes = u64(t, r[0]), u64(t, r[1]), u64(t, r[2]), u64(t, r[3])
			c.throughput, c.reverseThroughput = u64(t, r[4]), u64(t, r[5])
			want := []string{c.srcNS, c.srcPod, c.srcNode, c.dstNS, c.dstPod, c.dstNode, strconv.Itoa(int(c.flowType))}
			if !slices.Equal(r[6:], want) {
				t.Errorf("%s: names and flow type %q, want %q", c.name, r[6:], want)
			}
			checkSent(t, *c)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	version := serverVersion(t, ch)
	// toStartOfInterval, what $__timeInterval expands to, arrived in 19.3.
	hasStartOfInterval := version[0] > 19 || version[0] == 19 && version[1] >= 3
	t.Logf("ClickHouse %d.%d: toStartOfInterval %v; panel range %s .. %s", version[0], version[1], hasStartOfInterval, q.From.UTC(), q.To.UTC())

	for _, dash := range []struct {
		file  string
		specs map[string]panelSpec
	}{
		{"flow_records_dashboard.sql", flowRecordsSpecs(conns)},
		{"pod_to_pod_dashboard.sql", podToPodSpecs(conns)},
		{"node_to_node_dashboard.sql", nodeToNodeSpecs(conns)},
	} {
		panels, err := LoadPanels(filepath.Join("testdata", dash.file))
		must(t, err)
		for _, p := range panels {
			t.Run(strings.TrimSuffix(dash.file, "_dashboard.sql")+"/"+p.Name, func(t *testing.T) {
				spec, ok := dash.specs[p.Name]
				if !ok {
					t.Fatalf("no expectation for panel %q: the testdata changed", p.Name)
				}
				sql, err := Expand(p.SQL, q)
				must(t, err)
				header, rows, err := query(ch, "default", sql)
				if strings.Contains(p.SQL, "$__timeInterval") && !hasStartOfInterval {
					// 18.16 lacks the function the macro expands to: the
					// panel fails there, with exactly this error.
					if err == nil || !strings.Contains(err.Error(), "Code: 46") || !strings.Contains(err.Error(), "Unknown function toStartOfInterval") {
						t.Fatalf("on ClickHouse %d.%d want error 46 Unknown function toStartOfInterval, got %v (rows %q)", version[0], version[1], err, rows)
					}
					// The rest of the panel's SQL still has to give the
					// right values: run it with an equivalent bucket.
					legacy := q
					legacy.StartOfInterval = StartOfIntervalFor18
					sql, err = Expand(p.SQL, legacy)
					must(t, err)
					header, rows, err = query(ch, "default", sql)
				}
				if err != nil {
					t.Fatalf("panel SQL failed: %v\n%s", err, sql)
				}
				if spec.table == nil {
					t.Logf("%s: %q", strings.Join(header, ", "), rows)
				}
				spec.check(t, header, rows)
			})
		}
	}

	t.Run("every column of Theia's tables, with Theia's type", func(t *testing.T) {
		checkTheiaSchema(t, ch)
	})
}

// panelSpec is what one panel must return.
type panelSpec struct {
	// rows: the exact result, in the panel's ORDER BY.
	rows [][]string
	// series: a time series panel, its value summed over the time
	// buckets per label (label column -1: one series).
	series       map[string]float64
	label, value int
	// table: SELECT * of the flows table.
	table func(t *testing.T, header []string, rows [][]string)
}

func (s panelSpec) check(t *testing.T, header []string, rows [][]string) {
	t.Helper()
	switch {
	case s.table != nil:
		s.table(t, header, rows)
	case s.series != nil:
		got := map[string]float64{}
		for _, r := range rows {
			label := ""
			if s.label >= 0 {
				label = r[s.label]
			}
			v, err := strconv.ParseFloat(r[s.value], 64)
			if err != nil {
				t.Fatalf("value %q in %q: %v", r[s.value], r, err)
			}
			got[label] += v
		}
		if len(got) != len(s.series) {
			t.Errorf("series %v, want %v", got, s.series)
		}
		for l, w := range s.series {
			if g, ok := got[l]; !ok || math.Abs(g-w) > 1e-9*math.Max(1, math.Abs(w)) {
				t.Errorf("series %q: sum over buckets %v, want %v (all: %v)", l, g, w, got)
			}
		}
	default:
		if !slices.EqualFunc(rows, s.rows, slices.Equal[[]string]) {
			t.Errorf("rows (%s)\n got %q\nwant %q", strings.Join(header, ", "), rows, s.rows)
		}
	}
}

func flowRecordsSpecs(cs []*conn) map[string]panelSpec {
	return map[string]panelSpec{
		"Flow Records Count (stat)":       {rows: [][]string{{strconv.Itoa(len(cs))}}},
		"Flow Records Count (timeseries)": {series: map[string]float64{"": float64(len(cs))}, label: -1, value: 0},
		"Flow Records Table (table)": {table: func(t *testing.T, header []string, rows [][]string) {
			if len(rows) != len(cs) {
				t.Fatalf("%d rows, want %d", len(rows), len(cs))
			}
			col := map[string]int{}
			for i, h := range header {
				col[h] = i
			}
			var got, want []string
			lastEnd := ""
			for _, r := range rows {
				get := func(name string) string {
					i, ok := col[name]
					if !ok {
						t.Fatalf("SELECT * has no column %s", name)
					}
					return r[i]
				}
				got = append(got, fmt.Sprintf("%s/%s:%s -> %s/%s:%s %s bytes, policy %q/%s",
					get("sourcePodNamespace"), get("sourcePodName"), get("sourceTransportPort"),
					get("destinationPodNamespace"), get("destinationPodName"), get("destinationTransportPort"),
					get("octetDeltaCount"), get("ingressNetworkPolicyName"), get("ingressNetworkPolicyRuleAction")))
				if end := get("flowEndSeconds"); lastEnd != "" && end > lastEnd {
					t.Errorf("rows not in flowEndSeconds DESC order: %s after %s", end, lastEnd)
				} else {
					lastEnd = end
				}
			}
			for _, c := range cs {
				want = append(want, fmt.Sprintf("%s -> %s %d bytes, policy \"\"/0", c.srcLabel(), c.dstLabel(), c.bytes))
			}
			sort.Strings(got)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				t.Errorf("rows\n got %q\nwant %q", got, want)
			}
		}},
	}
}

// sumBy adds f over the connections keep accepts, per key.
func sumBy(cs []*conn, keep func(conn) bool, key func(conn) string, f func(conn) float64) map[string]float64 {
	out := map[string]float64{}
	for _, c := range cs {
		if keep(*c) {
			out[key(*c)] += f(*c)
		}
	}
	return out
}

// byBytesDesc renders per-key byte sums as result rows, largest first,
// the key split on "\t" into columns after (or before) the bytes.
func byBytesDesc(m map[string]float64, bytesFirst bool) [][]string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	var rows [][]string
	for _, k := range keys {
		b := strconv.FormatFloat(m[k], 'f', 0, 64)
		if bytesFirst {
			rows = append(rows, append([]string{b}, strings.Split(k, "\t")...))
		} else {
			rows = append(rows, append(strings.Split(k, "\t"), b))
		}
	}
	return rows
}

func positive(m map[string]float64) map[string]float64 {
	for k, v := range m {
		if v <= 0 {
			delete(m, k)
		}
	}
	return m
}

func podToPodSpecs(cs []*conn) map[string]panelSpec {
	bytes := func(c conn) float64 { return float64(c.bytes) }
	rev := func(c conn) float64 { return float64(c.revBytes) }
	// SUM(octetDeltaCount)*8000/$__interval_ms: bits per second.
	rate := func(c conn) float64 { return float64(c.bytes) * 8000 / float64(panelInterval.Milliseconds()) }
	pair := func(c conn) string { return c.srcLabel() + "\t" + c.dstLabel() }
	arrow := func(c conn) string { return c.srcLabel() + " -> " + c.dstLabel() }
	return map[string]panelSpec{
		"Cumulative Bytes of Pod-to-Pod (theia-grafana-sankey-plugin)":         {rows: byBytesDesc(sumBy(cs, podPanel, pair, bytes), true)},
		"Cumulative Reverse Bytes of Pod-to-Pod (theia-grafana-sankey-plugin)": {rows: byBytesDesc(sumBy(cs, podPanel, pair, rev), true)},
		// One row per connection, so each bucket's average is the row's.
		"Throughput of Pod-to-Pod (timeseries)": {label: 1, value: 2,
			series: positive(sumBy(cs, podPanel, arrow, func(c conn) float64 { return float64(c.throughput) }))},
		"Reverse Throughput of Pod-to-Pod (timeseries)": {label: 1, value: 2,
			series: positive(sumBy(cs, podPanel, arrow, func(c conn) float64 { return float64(c.reverseThroughput) }))},
		"Throughput of Pod as Source (timeseries)":      {label: 1, value: 2, series: positive(sumBy(cs, podPanel, conn.srcLabel, rate))},
		"Throughput of Pod as Destination (timeseries)": {label: 1, value: 2, series: positive(sumBy(cs, podPanel, conn.dstLabel, rate))},
		"Cumulative Bytes of Source Pod Namespace (piechart)": {
			rows: byBytesDesc(positive(sumBy(cs, podPanel, func(c conn) string { return c.srcNS }, bytes)), true)},
		"Cumulative Bytes of Destination Pod Namespace (piechart)": {
			rows: byBytesDesc(sumBy(cs, podPanel, func(c conn) string { return c.dstNS }, bytes), true)},
	}
}

func nodeToNodeSpecs(cs []*conn) map[string]panelSpec {
	bytes := func(c conn) float64 { return float64(c.bytes) }
	rev := func(c conn) float64 { return float64(c.revBytes) }
	perSec := func(f func(conn) float64) func(conn) float64 {
		return func(c conn) float64 { return f(c) * 8000 / float64(panelInterval.Milliseconds()) }
	}
	pair := func(c conn) string { return c.srcNode + "\t" + c.dstNode }
	arrow := func(c conn) string { return c.srcNode + "->" + c.dstNode }
	src := func(c conn) string { return c.srcNode }
	dst := func(c conn) string { return c.dstNode }
	// Theia's reverse-bytes panel filters only the source namespace: the
	// reply from kube-system/coredns counts there.
	srcOnly := func(c conn) bool { return c.srcNode != "" && c.dstNode != "" && included(c.srcNS) }
	return map[string]panelSpec{
		"Cumulative Bytes of Node-to-Node (theia-grafana-sankey-plugin)":         {rows: byBytesDesc(sumBy(cs, nodePanel, pair, bytes), true)},
		"Cumulative Reverse Bytes of Node-to-Node (theia-grafana-sankey-plugin)": {rows: byBytesDesc(sumBy(cs, srcOnly, pair, rev), true)},
		"Throughput of Node-to-Node (timeseries)":                                {label: 1, value: 2, series: sumBy(cs, nodePanel, arrow, perSec(bytes))},
		"Reverse Throughput of Node-to-Node (timeseries)":                        {label: 1, value: 2, series: sumBy(cs, nodePanel, arrow, perSec(rev))},
		"Throughput of Node as Source (timeseries)":                              {label: 1, value: 2, series: sumBy(cs, nodePanel, src, perSec(bytes))},
		"Cumulative Bytes of Node as Source (piechart)":                          {rows: byBytesDesc(sumBy(cs, nodePanel, src, bytes), true)},
		"Throughput of Node as Destination (timeseries)":                         {label: 1, value: 2, series: sumBy(cs, nodePanel, dst, perSec(bytes))},
		"Cumulative Bytes of Node as Destination (piechart)":                     {rows: byBytesDesc(sumBy(cs, nodePanel, dst, bytes), true)},
	}
}

// checkSent bounds a connection's stored counters by its payload:
// conntrack counts IP bytes, so each direction is the payload plus 40..60
// bytes of headers per packet, with at least three packets each way.
func checkSent(t *testing.T, c conn) {
	t.Helper()
	for _, d := range []struct {
		dir            string
		packets, bytes uint64
		payload        uint64
	}{
		{"client->server", c.packets, c.bytes, uint64(c.sent + exchangeHeader)},
		{"server->client", c.revPackets, c.revBytes, uint64(c.reply)},
	} {
		lo, hi := d.payload+minHeader*d.packets, d.payload+maxHeader*d.packets
		if d.packets < 3 || d.bytes < lo || d.bytes > hi {
			t.Errorf("%s %s: %d packets, %d bytes; want >= 3 packets and %d..%d bytes (%d payload + headers)",
				c.name, d.dir, d.packets, d.bytes, lo, hi, d.payload)
		}
	}
}

// theiaEngines are the Replicated engines of Theia's DDL, which need
// ZooKeeper, and their single-server equivalents.
var theiaEngines = regexp.MustCompile(`(?i)engine\s*=\s*Replicated(MergeTree|SummingMergeTree)\('[^']*',\s*'[^']*'\)`)

// theiaDDL is Theia's CREATE TABLE statements (testdata), on one server.
func theiaDDL(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "theia_tables.sql"))
	must(t, err)
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "--") {
			lines = append(lines, l)
		}
	}
	var out []string
	for _, stmt := range strings.Split(strings.Join(lines, "\n"), ";") {
		if stmt = strings.TrimSpace(stmt); stmt != "" {
			out = append(out, theiaEngines.ReplaceAllString(stmt, "ENGINE = $1()"))
		}
	}
	if len(out) != 4 {
		t.Fatalf("theia_tables.sql: %d statements, want 4", len(out))
	}
	return out
}

// checkTheiaSchema creates Theia's tables in a database of their own and
// checks that the flowlens table has every column of Theia's flows table
// and each flowlens view exactly the columns of the Theia table behind the
// view of that name, each with Theia's type (String also as
// LowCardinality(String), which newer releases get).
func checkTheiaSchema(t *testing.T, ch *clickhousetest.Server) {
	mustQuery(t, ch, "default", "CREATE DATABASE IF NOT EXISTS theia")
	for _, stmt := range theiaDDL(t) {
		mustQuery(t, ch, "theia", stmt)
	}
	columns := func(db, table string) [][2]string {
		// DESCRIBE lists in table order (18.16's system.columns has no
		// position); its first two columns are name and type.
		_, rows := mustQuery(t, ch, "default", fmt.Sprintf("DESCRIBE TABLE `%s`.`%s`", db, table))
		var out [][2]string
		for _, r := range rows {
			typ := strings.TrimSuffix(strings.TrimPrefix(r[1], "LowCardinality("), ")")
			out = append(out, [2]string{r[0], typ})
		}
		if len(out) == 0 {
			t.Fatalf("%s.%s has no columns", db, table)
		}
		return out
	}
	ours := map[string]string{}
	for _, c := range columns("default", "flows") {
		ours[c[0]] = c[1]
	}
	theirs := columns("theia", "flows_local")
	for _, c := range theirs {
		if got, ok := ours[c[0]]; !ok || got != c[1] {
			t.Errorf("Theia's flows column %s %s: flowlens table has %q (present %v)", c[0], c[1], got, ok)
		}
	}
	t.Logf("all %d columns of Theia's flows table are in the flowlens table (%d columns)", len(theirs), len(ours))
	for view, table := range map[string]string{"flows_pod_view": "pod_view_table_local", "flows_node_view": "node_view_table_local", "flows_policy_view": "policy_view_table_local"} {
		if got, want := columns("default", view), columns("theia", table); !slices.Equal(got, want) {
			t.Errorf("view %s columns\n got %v\nwant %v (Theia's %s)", view, got, want, table)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// query runs sql on ch's HTTP interface in database db and returns the
// header and rows (TabSeparatedWithNames); the SQL is sent as it is.
func query(ch *clickhousetest.Server, db, sql string) ([]string, [][]string, error) {
	u := "http://" + ch.HTTPAddr + "/?" + url.Values{"database": {db}, "default_format": {"TabSeparatedWithNames"}}.Encode()
	resp, err := http.Post(u, "text/plain", bytes.NewBufferString(sql))
	if err != nil {
		return nil, nil, fmt.Errorf("query: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("query: read: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("query: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	text := strings.TrimRight(string(body), "\n")
	if text == "" {
		return nil, nil, nil
	}
	lines := strings.Split(text, "\n")
	header := strings.Split(lines[0], "\t")
	var rows [][]string
	for _, l := range lines[1:] {
		r := strings.Split(l, "\t")
		if len(r) != len(header) {
			return nil, nil, fmt.Errorf("query: row with %d values for %d columns: %q", len(r), len(header), l)
		}
		rows = append(rows, r)
	}
	return header, rows, nil
}

func mustQuery(t *testing.T, ch *clickhousetest.Server, db, sql string) ([]string, [][]string) {
	t.Helper()
	h, r, err := query(ch, db, sql)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	return h, r
}

func count(t *testing.T, ch *clickhousetest.Server, sql string) int {
	t.Helper()
	_, rows := mustQuery(t, ch, "default", sql)
	if len(rows) != 1 {
		t.Fatalf("%s: %d rows", sql, len(rows))
	}
	n, err := strconv.Atoi(rows[0][0])
	must(t, err)
	return n
}

func u64(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	must(t, err)
	return v
}

func serverVersion(t *testing.T, ch *clickhousetest.Server) [2]int {
	t.Helper()
	_, rows := mustQuery(t, ch, "default", "SELECT version()")
	var v [2]int
	if len(rows) != 1 {
		t.Fatalf("SELECT version(): %q", rows)
	}
	if _, err := fmt.Sscanf(rows[0][0], "%d.%d", &v[0], &v[1]); err != nil {
		t.Fatalf("version %q: %v", rows[0][0], err)
	}
	return v
}

// waitRows waits until the table holds a row matching where.
func waitRows(t *testing.T, ch *clickhousetest.Server, where string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if _, rows, err := query(ch, "default", "SELECT count() FROM flows WHERE "+where); err == nil && len(rows) == 1 && rows[0][0] != "0" {
			return
		}
		if time.Now().After(deadline) {
			_, all, _ := query(ch, "default", "SELECT sourceIP, sourceTransportPort, destinationIP, destinationTransportPort, correlation FROM flows")
			t.Fatalf("no row WHERE %s within %s; table holds %q", where, within, all)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
