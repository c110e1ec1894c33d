//go:build integration

package aggregatore2e_test

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/clickhousetest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The simulated cluster, one agent per node:
//
//	node-a (index 1)                         node-b (index 2)
//	  shop/client  10.244.1.2                  store/db  10.244.2.2 :5432
//	  shop/web     10.244.1.3 :8080
//	  Service shop/web 10.96.1.10:80 (port name http) -> web:8080
//
// Both agents read the same inventory, which names every pod with its node,
// so each agent fills both ends of an inter-node record: the aggregator
// must tell the halves apart by which agent sent them.
const (
	nodeA, nodeB = "node-a", "node-b"
	webPort      = 80
	webTarget    = 8080
	dbPort       = 5432

	// The inter-node exchange client -> db and the intra-node one
	// client -> Service web: payload bytes each way.
	interSent, interReply = 30000, 7000
	intraSent, intraReply = 4000, 1000

	// TCP/IPv4 headers per packet: 40 bytes without options, 60 at most
	// (SYN with options; data segments carry 12 bytes of timestamps).
	minHeader, maxHeader = 40, 60
	// Every exchange starts with netnstest's 8-byte length header.
	exchangeHeader = 8
)

func TestAggregatorCorrelatesRealAgentsIntoClickHouse(t *testing.T) {
	testStart := time.Now()
	ch := clickhousetest.Start(t)

	a := netnstest.NewNodeT(t, netnstest.Config{Name: nodeA, Index: 1, Pods: []netnstest.PodSpec{
		{Name: "client", Namespace: "shop"}, {Name: "web", Namespace: "shop"}}})
	b := netnstest.NewNodeT(t, netnstest.Config{Name: nodeB, Index: 2, Pods: []netnstest.PodSpec{
		{Name: "db", Namespace: "store"}}})
	netnstest.ConnectNodesT(t, a, b)
	client, web, db := a.Pod("client"), a.Pod("web"), b.Pod("db")
	for _, l := range []struct {
		p    *netnstest.Pod
		port uint16
	}{{web, webTarget}, {db, dbPort}} {
		if _, err := l.p.ListenTCP(l.port); err != nil {
			t.Fatal(err)
		}
	}
	svc := netnstest.AddServiceT(t, a, netnstest.Service{Name: "web", Namespace: "shop",
		VIP: netip.MustParseAddr("10.96.1.10"), Port: webPort, Backend: web, TargetPort: webTarget})

	dir := t.TempDir()
	inventory := filepath.Join(dir, "inventory.yaml")
	must(t, os.WriteFile(inventory, []byte(fmt.Sprintf(`nodes:
  - {name: %[1]s, ips: [%[2]s]}
  - {name: %[3]s, ips: [%[4]s]}
entries:
  - {name: client, group: shop, node: %[1]s, ips: [%[5]s], labels: {app: client}}
  - {name: web, group: shop, node: %[1]s, ips: [%[6]s], labels: {app: web}, workloadKind: Deployment, workloadName: web}
  - {name: db, group: store, node: %[3]s, ips: [%[7]s], labels: {app: db}, workloadKind: StatefulSet, workloadName: db}
services:
  - {name: web, group: shop, ips: [%[8]s], ports: [{name: http, port: %[9]d, protocol: TCP}]}
`, nodeA, a.NodeIPv4(), nodeB, b.NodeIPv4(), client.IPv4, web.IPv4, db.IPv4, svc.VIP, webPort)), 0o644))

	aggID := fmt.Sprintf("agg-e2e-%d", time.Now().UnixNano())
	agg := agenttest.StartAggregator(t, aggregatorBin, fmt.Sprintf(`aggregatorID: %s
listen: [tcp://127.0.0.1:0]
shutdownTimeout: 30s
correlation:
  correlationWait: 5s
  startWindow: 5s
  activeTimeout: 60s
  inactiveTimeout: 60s
sinks:
  clickhouse:
    enabled: true
    addr: %s
    database: default
    table: flows
    dialTimeout: 5s
    commitInterval: 200ms
    retryMin: 100ms
    retryMax: 1s
    flushTimeout: 20s
`, aggID, ch.Addr))
	if got := chQuery(t, ch, "EXISTS TABLE flows"); got != "1" {
		t.Fatalf("aggregator running but table flows does not exist (EXISTS TABLE = %q): schema not created at start", got)
	}

	// Each agent exports through a gate, so the test decides which node's
	// half of an inter-node connection the aggregator gets first.
	gateA, gateB := startGate(t, agg.Addr(t, "tcp")), startGate(t, agg.Addr(t, "tcp"))
	agentCfg := func(n *netnstest.Node, collector string) string {
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
  l7DetailElements: true
server:
  listen: 127.0.0.1:0
inventory:
  file: %s
`, n.Name, n.NetnsPath, collector, inventory)
	}
	agentA := agenttest.StartAgent(t, agentBin, agentCfg(a, gateA.Addr()))
	agentB := agenttest.StartAgent(t, agentBin, agentCfg(b, gateB.Addr()))
	// The aggregator names an agent by its connection's address and its
	// observation domain, which the agents leave at its default: a hash of
	// the node name, as in a real deployment.
	exporterA, exporterB := exporterName(nodeA), exporterName(nodeB)

	// interNode runs one inter-node exchange client -> db while late's
	// agent is held, so the other node's half reaches the aggregator first.
	const interReceived = `flowlens_aggregator_records_received_total{flow_type="inter-node"}`
	interNode := func(late *gate) netnstest.Transfer {
		t.Helper()
		before, _ := agg.Metric(t, interReceived)
		late.Hold()
		defer late.Release()
		xfer, err := netnstest.SendExactly(client, db.Addr(dbPort), interSent, interReply)
		must(t, err)
		agg.WaitMetric(t, interReceived, 10*time.Second, func(v float64) bool { return v >= before+1 })
		return xfer
	}
	inters := []struct {
		name string
		xfer netnstest.Transfer
	}{
		{"source node's half first", interNode(gateB)},
		{"destination node's half first", interNode(gateA)},
	}
	intra, err := netnstest.SendExactly(client, svc.Addr(), intraSent, intraReply)
	must(t, err)
	for _, c := range inters {
		t.Logf("inter-node (%s) %s -> %s", c.name, c.xfer.Local, c.xfer.Remote)
	}
	t.Logf("intra-node %s -> %s (Service %s)", intra.Local, web.Addr(webTarget), svc.Addr())

	interWheres := make([]string, len(inters))
	interRows := make([]map[string]string, len(inters))
	for i, c := range inters {
		interWheres[i] = tupleWhere(c.xfer.Local, db.Addr(dbPort))
		interRows[i] = waitRow(t, ch, interWheres[i], 30*time.Second)
	}
	intraWhere := tupleWhere(intra.Local, web.Addr(webTarget))
	intraRow := waitRow(t, ch, intraWhere, 10*time.Second)

	// Nothing more is on its way once the agents have nothing buffered
	// and the aggregator holds no connection; the counters are final.
	for _, ag := range []*agenttest.Agent{agentA, agentB} {
		ag.WaitMetric(t, "flowlens_ipfix_exporter_buffered_records", 5*time.Second, func(v float64) bool { return v == 0 })
	}
	agg.WaitMetric(t, "flowlens_aggregator_pending_connections", 10*time.Second, func(v float64) bool { return v == 0 })

	for i, c := range inters {
		t.Run("inter-node connection is one correlated row with both nodes' views, "+c.name, func(t *testing.T) {
			r := interRows[i]
			checkFields(t, r, map[string]string{
				"correlation":             "correlated",
				"flowType":                strconv.Itoa(int(flow.FlowTypeInterNode)),
				"flowEndReason":           strconv.Itoa(int(flow.EndOfFlow)),
				"sourcePodName":           "client",
				"sourcePodNamespace":      "shop",
				"sourceNodeName":          nodeA,
				"sourcePodLabels":         `{"app":"client"}`,
				"destinationPodName":      "db",
				"destinationPodNamespace": "store",
				"destinationNodeName":     nodeB,
				"destinationPodLabels":    `{"app":"db"}`,
				// A direct pod-to-pod connection: no Service.
				"destinationServicePortName": "",
				"destinationClusterIP":       "",
				"destinationServiceIP":       "",
				"destinationServicePort":     "0",
				"aggregator":                 aggID,
				// client is a bare entry: no workload; db is a StatefulSet's.
				"sourceWorkloadKind":      "",
				"sourceWorkloadName":      "",
				"destinationWorkloadKind": "StatefulSet",
				"destinationWorkloadName": "db",
				// No L7 on this connection.
				"httpRequests": "0", "http4xx": "0", "http5xx": "0", "dnsErrors": "0",
			})
			// Each side is the view of the agent of that node, whichever
			// half arrived first.
			agentOf := map[string]string{exporterA: nodeA + "'s agent", exporterB: nodeB + "'s agent"}
			if se, de := r["sourceExporter"], r["destinationExporter"]; se != exporterA || de != exporterB {
				t.Errorf("sourceExporter %q (%s), destinationExporter %q (%s); want %q (%s) and %q (%s): the ...FromSourceNode/...FromDestinationNode columns do not hold the view of the node they name",
					se, agentOf[se], de, agentOf[de], exporterA, agentOf[exporterA], exporterB, agentOf[exporterB])
			}
			src := sideCounters(t, r, "FromSourceNode")
			dst := sideCounters(t, r, "FromDestinationNode")
			checkExchange(t, "from source node "+nodeA, src, interSent, interReply)
			checkExchange(t, "from destination node "+nodeB, dst, interSent, interReply)
			// Every packet of the connection crossed both nodes (one veth
			// hop between them, nothing dropped), so both conntrack tables
			// counted the same packets.
			if src.total != dst.total {
				t.Errorf("totals differ between the nodes: source node %+v, destination node %+v; every packet crossed both", src.total, dst.total)
			}
			// Exported once, so each node's deltas cover the whole connection.
			for name, s := range map[string]counters{"source": src, "destination": dst} {
				if s.delta != s.total {
					t.Errorf("%s node: deltas %+v != totals %+v in the connection's only row", name, s.delta, s.total)
				}
			}
			// The main counters are the source node's.
			if main := sideCounters(t, r, ""); main != src {
				t.Errorf("main counters %+v, want the source node's %+v", main, src)
			}
			checkTimes(t, r, testStart)
		})
	}

	t.Run("intra-node Service connection passes through with the service port name", func(t *testing.T) {
		r := intraRow
		checkFields(t, r, map[string]string{
			"correlation":                "not-required",
			"flowType":                   strconv.Itoa(int(flow.FlowTypeIntraNode)),
			"flowEndReason":              strconv.Itoa(int(flow.EndOfFlow)),
			"sourcePodName":              "client",
			"sourcePodNamespace":         "shop",
			"sourceNodeName":             nodeA,
			"destinationPodName":         "web",
			"destinationPodNamespace":    "shop",
			"destinationNodeName":        nodeA,
			"destinationServicePortName": "shop/web:http",
			"destinationClusterIP":       svc.VIP.String(),
			"destinationServiceIP":       svc.VIP.String(),
			"destinationServicePort":     strconv.Itoa(webPort),
			// Only node-a's agent saw it; both sides are its view.
			"sourceExporter":          exporterA,
			"destinationExporter":     exporterA,
			"aggregator":              aggID,
			"sourceWorkloadKind":      "",
			"destinationWorkloadKind": "Deployment",
			"destinationWorkloadName": "web",
		})
		src := sideCounters(t, r, "FromSourceNode")
		checkExchange(t, "intra-node", src, intraSent, intraReply)
		if dst := sideCounters(t, r, "FromDestinationNode"); dst != src {
			t.Errorf("one node's connection: destination-node counters %+v, want the source node's %+v", dst, src)
		}
		checkTimes(t, r, testStart)
	})

	// Counters once everything is stored, before the stop adds its own
	// (empty) flush.
	m := func(series string) float64 {
		t.Helper()
		v, ok := agg.Metric(t, series)
		if !ok {
			t.Errorf("aggregator /metrics has no %s", series)
		}
		return v
	}
	sentA, _ := agentA.Metric(t, "flowlens_ipfix_exporter_records_sent_total")
	sentB, _ := agentB.Metric(t, "flowlens_ipfix_exporter_records_sent_total")
	metrics := map[string]float64{
		`flowlens_ipfix_collector_records_total{listener="tcp://127.0.0.1:0"}`: m(`flowlens_ipfix_collector_records_total{listener="tcp://127.0.0.1:0"}`),
		"flowlens_aggregator_input_records_total":                              m("flowlens_aggregator_input_records_total"),
		`flowlens_aggregator_records_received_total{flow_type="inter-node"}`:   m(`flowlens_aggregator_records_received_total{flow_type="inter-node"}`),
		`flowlens_aggregator_records_received_total{flow_type="intra-node"}`:   m(`flowlens_aggregator_records_received_total{flow_type="intra-node"}`),
		"flowlens_aggregator_records_correlated_total":                         m("flowlens_aggregator_records_correlated_total"),
		"flowlens_aggregator_records_unmatched_total":                          m("flowlens_aggregator_records_unmatched_total"),
		`flowlens_aggregator_records_exported_total{reason="end-of-flow"}`:     m(`flowlens_aggregator_records_exported_total{reason="end-of-flow"}`),
		`flowlens_aggregator_sink_records_written_total{sink="clickhouse"}`:    m(`flowlens_aggregator_sink_records_written_total{sink="clickhouse"}`),
		sinkDropped: sumSeries(t, agg.Metrics(t), "flowlens_aggregator_sink_records_dropped_total", `sink="clickhouse"`),
		`flowlens_aggregator_sink_write_errors_total{sink="clickhouse"}`: m(`flowlens_aggregator_sink_write_errors_total{sink="clickhouse"}`),
	}
	storedBeforeStop := chQuery(t, ch, "SELECT count() FROM flows")
	linkPage := agg.Metrics(t)

	t.Run("link metrics count each connection once, as the rows do", func(t *testing.T) {
		// Labels in the exposition are sorted by name.
		toDB := `destination_kind="StatefulSet",destination_name="db",destination_namespace="store",destination_port="5432",protocol="tcp",source_kind="Pod",source_name="client",source_namespace="shop"`
		// Through the Service shop/web: named by it, as the UI's map does.
		toWeb := `destination_kind="Service",destination_name="web",destination_namespace="shop",destination_port="8080",protocol="tcp",source_kind="Pod",source_name="client",source_namespace="shop"`
		for _, c := range []struct {
			name, link, where string
			conns             float64
		}{
			{"client -> StatefulSet db (two inter-node connections)", toDB, interWheres[0] + ") OR (" + interWheres[1], 2},
			{"client -> Service web (intra-node)", toWeb, intraWhere, 1},
		} {
			rowBytes := chQuery(t, ch, "SELECT sum(octetDeltaCount), sum(reverseOctetDeltaCount), sum(packetDeltaCount) FROM flows WHERE ("+c.where+")")
			got := fmt.Sprintf("%.0f\t%.0f\t%.0f", sumSeries(t, linkPage, "flowlens_link_bytes_total", c.link),
				sumSeries(t, linkPage, "flowlens_link_reverse_bytes_total", c.link), sumSeries(t, linkPage, "flowlens_link_packets_total", c.link))
			if got != rowBytes || rowBytes == "0\t0\t0" {
				t.Errorf("%s: link bytes, reverse bytes, packets %q; the rows' deltas %q", c.name, got, rowBytes)
			}
			if n := sumSeries(t, linkPage, "flowlens_link_connections_total", c.link); n != c.conns {
				t.Errorf("%s: %v connections, want %v", c.name, n, c.conns)
			}
		}
		if strings.Contains(linkPage, `source_name="other"`) {
			t.Error("a link went to the overflow series below the cap")
		}
	})

	// A graceful stop flushes whatever the correlator still held: a row
	// that was about to be duplicated (a half exported again, an
	// unmatched leftover) lands now and is counted below.
	must(t, agg.Stop())

	t.Run("aggregator metrics count what the agents sent and what was stored", func(t *testing.T) {
		t.Logf("agents sent %v + %v records; aggregator: %v", sentA, sentB, metrics)
		// Each node's agent reports each of its connections once, at its
		// end: node-a both connections, node-b the inter-node one.
		if sentA != 3 || sentB != 2 {
			t.Errorf("agents sent %v (node-a) and %v (node-b) records, want 3 and 2: one end-of-flow record per connection each node saw", sentA, sentB)
		}
		for series, want := range map[string]float64{
			`flowlens_ipfix_collector_records_total{listener="tcp://127.0.0.1:0"}`: sentA + sentB,
			"flowlens_aggregator_input_records_total":                              sentA + sentB,
			`flowlens_aggregator_records_received_total{flow_type="inter-node"}`:   4,
			`flowlens_aggregator_records_received_total{flow_type="intra-node"}`:   1,
			"flowlens_aggregator_records_correlated_total":                         2,
			"flowlens_aggregator_records_unmatched_total":                          0,
			`flowlens_aggregator_records_exported_total{reason="end-of-flow"}`:     3,
			`flowlens_aggregator_sink_records_written_total{sink="clickhouse"}`:    3,
			sinkDropped: 0,
			`flowlens_aggregator_sink_write_errors_total{sink="clickhouse"}`: 0,
		} {
			if got := metrics[series]; got != want {
				t.Errorf("%s = %v, want %v", series, got, want)
			}
		}
		if storedBeforeStop != "3" {
			t.Errorf("rows in ClickHouse when the metrics were read: %s, want 3 (= records written)", storedBeforeStop)
		}
	})

	t.Run("no duplicate or extra rows, every row has the aggregator identity", func(t *testing.T) {
		for _, c := range []struct{ name, query, want string }{
			// The nodes carry only the test's traffic: three connections.
			{"rows in the table", "SELECT count() FROM flows", "3"},
			{"rows of the inter-node connection, " + inters[0].name, "SELECT count() FROM flows WHERE " + interWheres[0], "1"},
			{"rows of the inter-node connection, " + inters[1].name, "SELECT count() FROM flows WHERE " + interWheres[1], "1"},
			{"rows of the intra-node connection", "SELECT count() FROM flows WHERE " + intraWhere, "1"},
			{"correlation statuses", "SELECT correlation, count() FROM flows GROUP BY correlation ORDER BY correlation", "correlated\t2\nnot-required\t1"},
			{"aggregator identities", "SELECT aggregator, count() FROM flows GROUP BY aggregator", aggID + "\t3"},
		} {
			if got := chQuery(t, ch, c.query); got != c.want {
				t.Errorf("%s: %s\n got %q, want %q", c.name, c.query, got, c.want)
			}
		}
	})
}

// exporterName is how the aggregator names the agent of node when it
// connects from 127.0.0.1 with the default observation domain ID, FNV-1a of
// the node name (pkg/agentconfig).
func exporterName(node string) string {
	h := fnv.New32a()
	h.Write([]byte(node))
	domain := h.Sum32()
	if domain == 0 {
		domain = 1
	}
	return fmt.Sprintf("127.0.0.1/%d", domain)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func chQuery(t *testing.T, ch *clickhousetest.Server, q string) string {
	t.Helper()
	out, err := ch.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// tupleWhere selects the rows of the TCP connection src -> dst (dst being
// the real endpoint, after DNAT).
func tupleWhere(src, dst netip.AddrPort) string {
	return fmt.Sprintf("sourceIP = '%s' AND sourceTransportPort = %d AND destinationIP = '%s' AND destinationTransportPort = %d AND protocolIdentifier = %d",
		src.Addr().Unmap(), src.Port(), dst.Addr().Unmap(), dst.Port(), flow.ProtoTCP)
}

// waitRow waits until the table holds a row matching where and returns it,
// column name to value (TabSeparated text).
func waitRow(t *testing.T, ch *clickhousetest.Server, where string, within time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		out, err := ch.Query("SELECT * FROM flows WHERE " + where + " LIMIT 1 FORMAT TabSeparatedWithNames")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) >= 2 {
			names, values := strings.Split(lines[0], "\t"), strings.Split(lines[1], "\t")
			if len(names) != len(values) {
				t.Fatalf("row with %d values for %d columns:\n%s", len(values), len(names), out)
			}
			row := make(map[string]string, len(names))
			for i, n := range names {
				row[n] = values[i]
			}
			return row
		}
		if time.Now().After(deadline) {
			all, _ := ch.Query("SELECT sourceIP, sourceTransportPort, destinationIP, destinationTransportPort, correlation, sourceExporter, destinationExporter FROM flows FORMAT TabSeparatedWithNames")
			t.Fatalf("no row WHERE %s in ClickHouse within %s; table holds:\n%s", where, within, all)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sinkDropped names, in the metrics the test compares, the ClickHouse
// sink's drops for every reason together.
const sinkDropped = `flowlens_aggregator_sink_records_dropped_total{sink="clickhouse"} (all reasons)`

// sumSeries adds the samples of the metric name in a /metrics page whose
// labels include label, whatever their other labels; at least one must
// exist, or a renamed metric would read as zero.
func sumSeries(t *testing.T, page, name, label string) float64 {
	t.Helper()
	var sum float64
	n := 0
	for _, line := range strings.Split(page, "\n") {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok || !strings.Contains(labels, label) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("%s: value %q: %v", line, value, err)
		}
		sum += v
		n++
	}
	if n == 0 {
		t.Errorf("aggregator /metrics has no %s series with %s", name, label)
	}
	return sum
}

func checkFields(t *testing.T, row map[string]string, want map[string]string) {
	t.Helper()
	for col, w := range want {
		got, ok := row[col]
		if !ok {
			t.Errorf("table has no column %s", col)
		} else if got != w {
			t.Errorf("%s = %q, want %q", col, got, w)
		}
	}
}

type pktBytes struct{ packets, bytes uint64 }

// fwdRev is one direction pair of counters: client to server (fwd) and back.
type fwdRev struct{ fwd, rev pktBytes }

type counters struct{ total, delta fwdRev }

// sideCounters reads the totals and deltas of one node's view (suffix
// FromSourceNode or FromDestinationNode; "" for the main counters).
func sideCounters(t *testing.T, row map[string]string, suffix string) counters {
	t.Helper()
	u := func(col string) uint64 {
		v, err := strconv.ParseUint(row[col+suffix], 10, 64)
		if err != nil {
			t.Fatalf("column %s%s = %q: %v", col, suffix, row[col+suffix], err)
		}
		return v
	}
	return counters{
		total: fwdRev{
			fwd: pktBytes{u("packetTotalCount"), u("octetTotalCount")},
			rev: pktBytes{u("reversePacketTotalCount"), u("reverseOctetTotalCount")},
		},
		delta: fwdRev{
			fwd: pktBytes{u("packetDeltaCount"), u("octetDeltaCount")},
			rev: pktBytes{u("reversePacketDeltaCount"), u("reverseOctetDeltaCount")},
		},
	}
}

// checkExchange checks a node's totals against the payload the exchange
// moved: conntrack counts IP bytes, so each direction is its payload plus
// 40..60 bytes of headers per packet, and a TCP connection has at least
// three packets each way (handshake or data, FIN, ACKs).
func checkExchange(t *testing.T, what string, c counters, sent, reply int64) {
	t.Helper()
	for _, d := range []struct {
		dir     string
		pb      pktBytes
		payload uint64
	}{
		{"client->server", c.total.fwd, uint64(sent + exchangeHeader)},
		{"server->client", c.total.rev, uint64(reply)},
	} {
		lo, hi := d.payload+minHeader*d.pb.packets, d.payload+maxHeader*d.pb.packets
		if d.pb.packets < 3 || d.pb.bytes < lo || d.pb.bytes > hi {
			t.Errorf("%s %s: %d packets, %d bytes; want >= 3 packets and %d..%d bytes (%d payload + headers)",
				what, d.dir, d.pb.packets, d.pb.bytes, lo, hi, d.payload)
		}
	}
}

// checkTimes checks that the connection's start and end lie within the
// test (stored with second precision).
func checkTimes(t *testing.T, row map[string]string, testStart time.Time) {
	t.Helper()
	parse := func(col string) time.Time {
		v, err := time.ParseInLocation(time.DateTime, row[col], time.UTC)
		if err != nil {
			t.Fatalf("%s = %q: %v", col, row[col], err)
		}
		return v
	}
	start, end := parse("flowStartSeconds"), parse("flowEndSeconds")
	lo, hi := testStart.Truncate(time.Second), time.Now()
	if start.Before(lo) || start.After(hi) || end.Before(start) || end.After(hi) {
		t.Errorf("flowStartSeconds %s, flowEndSeconds %s; want start <= end, both within the test (%s .. %s)",
			start, end, lo.UTC(), hi.UTC())
	}
}
