//go:build integration

package aggregatore2e_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
	"github.com/flowlens/flowlens/pkg/shard"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/clickhousetest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// A client outside the cluster connects to a NodePort of np-node-a, whose
// only backend is the pod shop/web on np-node-b:
//
//	outside (index 3)          np-node-a (index 1)              np-node-b (index 2)
//	  client 10.244.3.2  --->  172.x.0.1:30080                    shop/web :8080
//	                           DNAT to web, SNAT to its own  ---> sees np-node-a:snat -> web
//	                           address (kube-proxy, externalTrafficPolicy Cluster)
//
// np-node-a's agent reports client -> web with the proxy SNAT, np-node-b's
// agent np-node-a:snat -> web. Two aggregator replicas write one
// ClickHouse table; the client's and the SNAT ports are chosen so that the
// client's tuple and the backend node's view belong to different
// replicas: both the agents' routing and the correlation must use the
// backend node's view for the connection to be one row.
//
// On an overlay (flannel VXLAN, Calico IPIP/VXLAN, Antrea encap) the
// masquerade picks the tunnel or gateway interface's address, not the
// node's InternalIP: the second subtest SNATs to np-node-a's pod CIDR
// network address (flannel.1's), which the inventory lists among
// np-node-a's addresses like k8smeta does from the Node object. The
// backend node must still see a node source (inter-node, waiting for its
// peer), or the connection is two rows with every byte counted twice.
func TestNodePortFromOutsideIsOneCorrelatedRow(t *testing.T) {
	t.Run("SNAT to the node's InternalIP", func(t *testing.T) { npFromOutside(t, false) })
	t.Run("SNAT to the node's overlay address", func(t *testing.T) { npFromOutside(t, true) })
}

func npFromOutside(t *testing.T, overlay bool) {
	const (
		npNodeA, npNodeB = "np-node-a", "np-node-b"
		nodePortPort     = 30080
		webPort          = 8080
		sent, reply      = 200_000, 30_000
	)
	testStart := time.Now()
	ch := clickhousetest.Start(t)

	a := netnstest.NewNodeT(t, netnstest.Config{Name: npNodeA, Index: 1})
	b := netnstest.NewNodeT(t, netnstest.Config{Name: npNodeB, Index: 2, Pods: []netnstest.PodSpec{{Name: "web", Namespace: "shop"}}})
	outside := netnstest.NewNodeT(t, netnstest.Config{Name: "np-outside", Index: 3, Pods: []netnstest.PodSpec{{Name: "client"}}})
	netnstest.ConnectNodesT(t, a, b)
	netnstest.ConnectNodesT(t, a, outside)
	web, client := b.Pod("web"), outside.Pod("client")
	srv, err := web.ListenTCP(webPort)
	must(t, err)
	nodePort := netip.AddrPortFrom(a.NodeIPv4(), nodePortPort)
	webAddr := web.Addr(webPort)
	// snatIP is where np-node-a masquerades the connection to. The
	// overlay address is routed to np-node-a by np-node-b (its route to
	// np-node-a's pod CIDR) and is np-node-a's own, like flannel.1's (on
	// lo: the test kernel may lack the dummy and vxlan link types).
	snatIP, aIPs := a.NodeIPv4(), a.NodeIPv4().String()
	if overlay {
		snatIP = a.PodCIDRv4.Masked().Addr()
		aIPs += ", " + snatIP.String()
		if out, err := a.Exec("ip", "addr", "add", snatIP.String()+"/32", "dev", "lo"); err != nil {
			t.Fatalf("ip addr add %s dev lo in %s: %v: %s", snatIP, npNodeA, err, out)
		}
	}

	// The outside node and its client are in no inventory: external.
	dir := t.TempDir()
	inventory := filepath.Join(dir, "inventory.yaml")
	must(t, os.WriteFile(inventory, []byte(fmt.Sprintf(`nodes:
  - {name: %[1]s, ips: [%[2]s]}
  - {name: %[3]s, ips: [%[4]s]}
entries:
  - {name: web, group: shop, node: %[3]s, ips: [%[5]s], labels: {app: web}}
`, npNodeA, aIPs, npNodeB, b.NodeIPv4(), web.IPv4)), 0o644))

	aggCfg := func(id string) string {
		return fmt.Sprintf(`aggregatorID: %s
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
`, id, ch.Addr)
	}
	run := time.Now().UnixNano()
	aggIDs := []string{fmt.Sprintf("agg-np-1-%d", run), fmt.Sprintf("agg-np-2-%d", run)}
	aggs := []*agenttest.Aggregator{
		agenttest.StartAggregator(t, aggregatorBin, aggCfg(aggIDs[0])),
		agenttest.StartAggregator(t, aggregatorBin, aggCfg(aggIDs[1])),
	}
	collectors := []string{aggs[0].Addr(t, "tcp"), aggs[1].Addr(t, "tcp")}
	idOf := map[string]string{collectors[0]: aggIDs[0], collectors[1]: aggIDs[1]}

	// Ports that put the client's tuple and the backend node's view on
	// different replicas of the agents' ring.
	ring := shard.NewRing(collectors...)
	var clientPort, snatPort uint16
	for cp := uint16(32000); cp < 32100 && clientPort == 0; cp++ {
		for sp := uint16(40000); sp < 40100; sp++ {
			clientView := flow.NewTuple(client.IPv4, webAddr.Addr(), cp, webPort, flow.ProtoTCP)
			backendView := flow.NewTuple(snatIP, webAddr.Addr(), sp, webPort, flow.ProtoTCP)
			if ring.OwnerID(shard.Key(clientView)) != ring.OwnerID(shard.Key(backendView)) {
				clientPort, snatPort = cp, sp
				break
			}
		}
	}
	if clientPort == 0 {
		t.Fatal("no client and SNAT ports split between the replicas: the ring is broken")
	}
	backendView := flow.NewTuple(snatIP, webAddr.Addr(), snatPort, webPort, flow.ProtoTCP)
	owner := ring.OwnerID(shard.Key(backendView))
	t.Logf("client port %d (replica %s by the client's tuple), SNAT port %d (replica %s by the backend node's view)",
		clientPort, idOf[ring.OwnerID(shard.Key(flow.NewTuple(client.IPv4, webAddr.Addr(), clientPort, webPort, flow.ProtoTCP)))], snatPort, idOf[owner])
	must(t, netns.WriteSysctl(client.NetnsPath, "net.ipv4.ip_local_port_range", fmt.Sprintf("%d %d", clientPort, clientPort)))
	rules := filepath.Join(dir, "nodeport.nft")
	must(t, os.WriteFile(rules, []byte(fmt.Sprintf(`table ip nodeport-test {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[1]s tcp dport %[2]d dnat to %[3]s
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ip daddr %[4]s tcp dport %[5]d snat to %[7]s:%[6]d
	}
}
`, nodePort.Addr(), nodePort.Port(), webAddr, webAddr.Addr(), webAddr.Port(), snatPort, snatIP)), 0o600))
	if out, err := a.Exec("nft", "-f", rules); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}

	agentCfg := func(n *netnstest.Node, flush time.Duration) string {
		return fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
  activeTimeout: 60s
  idleTimeout: 60s
  tickInterval: 100ms
export:
  collectors: [%s]
  transport: tcp
  flushInterval: %s
server:
  listen: 127.0.0.1:0
inventory:
  file: %s
`, n.Name, n.NetnsPath, strings.Join(collectors, ", "), flush, inventory)
	}
	// The overlay case fails only when np-node-b's half arrives first
	// (np-node-a's, held, would catch it otherwise): np-node-a's agent
	// sends 2s later, well within correlationWait.
	flushA := 100 * time.Millisecond
	if overlay {
		flushA = 2 * time.Second
	}
	agentA := agenttest.StartAgent(t, agentBin, agentCfg(a, flushA))
	agentB := agenttest.StartAgent(t, agentBin, agentCfg(b, 100*time.Millisecond))

	xfer, err := netnstest.SendExactly(client, nodePort, sent, reply)
	must(t, err)
	if xfer.Local != netip.AddrPortFrom(client.IPv4, clientPort) || xfer.Sent != sent || xfer.Received != reply || srv.Stats().BytesIn != sent {
		t.Fatalf("exchange from %s moved %d/%d bytes (server got %d); want from %s:%d, %d/%d", xfer.Local, xfer.Sent, xfer.Received, srv.Stats().BytesIn, client.IPv4, clientPort, sent, reply)
	}
	// What the kernel did, read independently of the agents: np-node-a's
	// reply tuple, and the peer the backend saw.
	snat := npReplyDst(t, a, xfer.Local)
	if snat != netip.AddrPortFrom(snatIP, snatPort) || srv.Stats().LastPeer != snat {
		t.Fatalf("conntrack on %s: reply to %s, backend saw %s; want the SNAT to %s:%d the test set up", npNodeA, snat, srv.Stats().LastPeer, snatIP, snatPort)
	}
	t.Logf("client %s -> NodePort %s -> %s, SNAT %s", xfer.Local, nodePort, webAddr, snat)

	clientWhere := tupleWhere(xfer.Local, webAddr)
	row := waitRow(t, ch, clientWhere, 30*time.Second)
	// Nothing more is on its way once the agents hold nothing and no
	// replica holds a connection.
	for _, ag := range []*agenttest.Agent{agentA, agentB} {
		ag.WaitMetric(t, "flowlens_ipfix_exporter_buffered_records", 5*time.Second, func(v float64) bool { return v == 0 })
	}
	for _, agg := range aggs {
		agg.WaitMetric(t, "flowlens_aggregator_pending_connections", 15*time.Second, func(v float64) bool { return v == 0 })
		npWaitWritten(t, agg, 10*time.Second)
	}

	checkFields(t, row, map[string]string{
		"correlation":   "correlated",
		"flowType":      strconv.Itoa(int(flow.FlowTypeFromExternal)),
		"flowEndReason": strconv.Itoa(int(flow.EndOfFlow)),
		// The client is outside the cluster.
		"sourcePodName":           "",
		"sourceNodeName":          "",
		"destinationPodName":      "web",
		"destinationPodNamespace": "shop",
		"destinationNodeName":     npNodeB,
		"destinationServiceIP":    nodePort.Addr().String(),
		"destinationServicePort":  strconv.Itoa(nodePortPort),
		"proxySnatIP":             snat.Addr().String(),
		"proxySnatPort":           strconv.Itoa(int(snat.Port())),
		"sourceExporter":          exporterName(npNodeA),
		"destinationExporter":     exporterName(npNodeB),
		// Both agents sent their half to the replica of the backend
		// node's view.
		"aggregator": idOf[owner],
	})
	src := sideCounters(t, row, "FromSourceNode")
	dst := sideCounters(t, row, "FromDestinationNode")
	t.Logf("row on %s: %s's counters %+v, %s's %+v", row["aggregator"], npNodeA, src.total, npNodeB, dst.total)
	checkExchange(t, "from "+npNodeA+" (source side)", src, sent, reply)
	checkExchange(t, "from "+npNodeB+" (destination side)", dst, sent, reply)
	// NAT rewrites addresses and ports, not sizes: every packet crossed
	// both nodes, so both conntrack tables counted the same, in the same
	// orientation (client -> web forward on both).
	if src.total != dst.total {
		t.Errorf("totals differ: %s %+v, %s %+v; every packet crossed both nodes", npNodeA, src.total, npNodeB, dst.total)
	}
	for name, s := range map[string]counters{npNodeA: src, npNodeB: dst} {
		if s.delta != s.total {
			t.Errorf("%s: deltas %+v != totals %+v in the connection's only row", name, s.delta, s.total)
		}
	}
	if main := sideCounters(t, row, ""); main != src {
		t.Errorf("main counters %+v, want the source node's %+v", main, src)
	}
	checkTimes(t, row, testStart)

	var correlated, unmatched float64
	for _, agg := range aggs {
		c, _ := agg.Metric(t, "flowlens_aggregator_records_correlated_total")
		u, _ := agg.Metric(t, "flowlens_aggregator_records_unmatched_total")
		correlated, unmatched = correlated+c, unmatched+u
	}
	if correlated != 1 || unmatched != 0 {
		t.Errorf("replicas correlated %v and left %v unmatched, want 1 and 0", correlated, unmatched)
	}
	// A graceful stop flushes whatever a replica still held: a half
	// waiting for a peer would land now and be counted below.
	for _, agg := range aggs {
		must(t, agg.Stop())
	}
	for _, c := range []struct{ what, query, want string }{
		// The nodes carry only the test's traffic: this one connection,
		// under either node's view.
		{"rows in the table", "SELECT count() FROM flows", "1"},
		{"rows to web", fmt.Sprintf("SELECT count() FROM flows WHERE destinationIP = '%s'", webAddr.Addr()), "1"},
		{"rows of the backend node's view", "SELECT count() FROM flows WHERE " + tupleWhere(snat, webAddr), "0"},
	} {
		if got := chQuery(t, ch, c.query); got != c.want {
			all, _ := ch.Query("SELECT sourceIP, sourceTransportPort, destinationIP, destinationTransportPort, correlation, flowType, sourceExporter, destinationExporter, aggregator FROM flows FORMAT TabSeparatedWithNames")
			t.Errorf("%s: %s\n got %q, want %q; table:\n%s", c.what, c.query, got, c.want, all)
		}
	}
}

var npReplyRE = regexp.MustCompile(`src=\S+ dst=\S+ sport=\d+ dport=\d+ .*src=\S+ dst=(\S+) sport=\d+ dport=(\d+)`)

// npReplyDst reads with conntrack(8) where node sends the replies of the
// TCP connection from client: the source NAT it applied.
func npReplyDst(t *testing.T, node *netnstest.Node, client netip.AddrPort) netip.AddrPort {
	t.Helper()
	out, err := node.Conntrack("-L", "-p", "tcp", "--orig-src", client.Addr().String(), "--sport", strconv.Itoa(int(client.Port())))
	if err != nil {
		t.Fatalf("conntrack -L in %s: %v", node.Name, err)
	}
	line := strings.TrimSpace(string(out))
	m := npReplyRE.FindStringSubmatch(line)
	if m == nil || strings.Contains(line, "\n") {
		t.Fatalf("want one conntrack entry with two tuples from %s in %s, got:\n%s", client, node.Name, out)
	}
	p, err := strconv.ParseUint(m[2], 10, 16)
	if err != nil {
		t.Fatalf("port in %s: %v", line, err)
	}
	return netip.AddrPortFrom(netip.MustParseAddr(m[1]), uint16(p))
}

// npWaitWritten waits until the replica's ClickHouse sink has written
// every row the correlator exported, so that counting rows counts them all.
func npWaitWritten(t *testing.T, agg *agenttest.Aggregator, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		page := agg.Metrics(t)
		exported := sumSeries(t, page, "flowlens_aggregator_records_exported_total", "reason=")
		written := sumSeries(t, page, "flowlens_aggregator_sink_records_written_total", `sink="clickhouse"`)
		if exported == written {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica exported %v rows, its ClickHouse sink wrote %v within %s", exported, written, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
