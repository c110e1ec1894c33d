//go:build integration && antreafa

package antreafa_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/kubeapi"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The simulated cluster, one flowlens agent per node:
//
//	node-a (index 1)               node-b (index 2)
//	  shop/client 10.244.1.2   ->    store/db 10.244.2.2 :5432
//
// Both agents read an inventory naming every pod with its node, so each
// one knows both ends of the inter-node connection. The aggregator's own
// pod informer sees no pods at all: every pod name in its output comes
// from the agents' records.
const (
	nodeA, nodeB = "node-a", "node-b"
	dbPort       = 5432
	// Payload bytes each way of the one connection per mode.
	sent, reply = 30000, 7000
	// netnstest's exchange starts with an 8-byte length header; TCP/IPv4
	// headers are 40..60 bytes a packet.
	exchangeHeader       = 8
	minHeader, maxHeader = 40, 60
	// The aggregator exports a correlated connection this long after its
	// last record. It looks for due connections only every active timeout
	// (its timer is not reset when a record arrives), so that bounds the
	// wait too: a connection of the test lasts well under a second.
	faActive, faInactive = 4 * time.Second, 2 * time.Second
)

func TestAntreaFlowAggregatorCountsBothNodesOnlyInAntreaMode(t *testing.T) {
	testStart := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cluster, err := kubeapi.Start(ctx, kubeapi.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err) // names a missing etcd or kube-apiserver
	}
	t.Cleanup(cluster.Stop)

	faOut := startFARecords(t)
	fa := startFlowAggregator(t, cluster, faOut.addr, faActive, faInactive)

	a := netnstest.NewNodeT(t, netnstest.Config{Name: nodeA, Index: 1, Pods: []netnstest.PodSpec{{Name: "client", Namespace: "shop"}}})
	b := netnstest.NewNodeT(t, netnstest.Config{Name: nodeB, Index: 2, Pods: []netnstest.PodSpec{{Name: "db", Namespace: "store"}}})
	netnstest.ConnectNodesT(t, a, b)
	client, db := a.Pod("client"), b.Pod("db")
	if _, err := db.ListenTCP(dbPort); err != nil {
		t.Fatal(err)
	}
	inventory := filepath.Join(t.TempDir(), "inventory.yaml")
	must(t, os.WriteFile(inventory, []byte(fmt.Sprintf(`nodes:
  - {name: %[1]s, ips: [%[2]s]}
  - {name: %[3]s, ips: [%[4]s]}
entries:
  - {name: client, group: shop, node: %[1]s, ips: [%[5]s]}
  - {name: db, group: store, node: %[3]s, ips: [%[6]s]}
`, nodeA, a.NodeIPv4(), nodeB, b.NodeIPv4(), client.IPv4, db.IPv4)), 0o644))

	agentCfg := func(n *netnstest.Node, collector, kind string) string {
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
  collectorKind: %s
server:
  listen: 127.0.0.1:0
inventory:
  file: %s
`, n.Name, n.NetnsPath, collector, kind, inventory)
	}

	// run sends one inter-node connection client -> db through two agents
	// in mode kind and returns what each agent exported for it (its last
	// record, the end of flow) and the aggregator's record of it.
	run := func(t *testing.T, kind string) (netnstest.Transfer, flow.Record, flow.Record, ipfixcollect.Record) {
		t.Helper()
		// The other mode's connection is still in TIME_WAIT: new agents
		// would export it again at their first dump.
		for _, n := range []*netnstest.Node{a, b} {
			if out, err := n.Conntrack("-F"); err != nil {
				t.Fatalf("flush conntrack of %s: %v\n%s", n.Name, err, out)
			}
		}
		truthA, truthB := agenttest.StartCollector(t), agenttest.StartCollector(t)
		faAddr := fmt.Sprintf("127.0.0.1:%d", faIPFIXPort)
		agenttest.StartAgent(t, agentBinary(t), agentCfg(a, startTee(t, faAddr, truthA.Addr), kind))
		agenttest.StartAgent(t, agentBinary(t), agentCfg(b, startTee(t, faAddr, truthB.Addr), kind))

		xfer := exchangeAcrossASecond(t, client, db.Addr(dbPort))
		t.Logf("%s mode: %s -> %s", kind, xfer.Local, xfer.Remote)
		recsA := truthA.WaitFor(t, xfer.Local, flow.ProtoTCP, flow.EndOfFlow, 20*time.Second)
		recsB := truthB.WaitFor(t, xfer.Local, flow.ProtoTCP, flow.EndOfFlow, 20*time.Second)
		if len(recsA) != 1 || len(recsB) != 1 {
			t.Fatalf("agents exported %d (node-a) and %d (node-b) records of the connection, want one each (its end of flow)", len(recsA), len(recsB))
		}
		halfA, halfB := recsA[0].Rec, recsB[0].Rec
		for _, h := range []struct {
			node string
			r    flow.Record
		}{{nodeA, halfA}, {nodeB, halfB}} {
			if h.r.FlowType != flow.FlowTypeInterNode {
				t.Fatalf("%s's agent exported flowType %s, want inter-node (the aggregator correlates only those)", h.node, h.r.FlowType)
			}
			checkExchange(t, h.node+"'s agent", h.r.Fwd, h.r.Rev)
			if h.r.FwdDelta != h.r.Fwd || h.r.RevDelta != h.r.Rev {
				t.Errorf("%s's agent: deltas %+v/%+v differ from totals %+v/%+v in the connection's only record", h.node, h.r.FwdDelta, h.r.RevDelta, h.r.Fwd, h.r.Rev)
			}
		}
		dst := db.Addr(dbPort)
		rec := faOut.waitFor(t, fa, xfer.Local, dst, 30*time.Second)
		// A second record of the connection would count it twice: wait
		// past another round of the aggregator's expiry for one.
		time.Sleep(faActive + faInactive + time.Second)
		if n := len(faOut.of(xfer.Local, dst)); n != 1 {
			t.Errorf("Antrea's aggregator exported %d records of the connection, want 1", n)
		}
		return xfer, halfA, halfB, rec
	}

	t.Run("antrea mode: each node's counters on its side, both pods named", func(t *testing.T) {
		_, halfA, halfB, rec := run(t, agentconfig.CollectorAntrea)
		// What each agent sent in this mode: only its own pod.
		if halfA.Source.PodName != "client" || halfA.Destination.PodName != "" || halfB.Source.PodName != "" || halfB.Destination.PodName != "db" {
			t.Errorf("halves name source/destination pods %q/%q (node-a) and %q/%q (node-b), want client/\"\" and \"\"/db",
				halfA.Source.PodName, halfA.Destination.PodName, halfB.Source.PodName, halfB.Destination.PodName)
		}
		checkStrings(t, rec, map[string]string{
			"sourcePodName": "client", "sourcePodNamespace": "shop", "sourceNodeName": nodeA,
			"destinationPodName": "db", "destinationPodNamespace": "store", "destinationNodeName": nodeB,
		})
		checkUint(t, rec, "flowType", uint64(flow.FlowTypeInterNode))
		checkSide(t, rec, "FromSourceNode", halfA.Fwd, halfA.Rev)
		checkSide(t, rec, "FromDestinationNode", halfB.Fwd, halfB.Rev)
		checkTimes(t, rec, testStart, halfA, halfB)
		sf, sr := side(t, rec, "Total", "FromSourceNode")
		df, dr := side(t, rec, "Total", "FromDestinationNode")
		t.Logf("antrea mode: source-node totals %+v/%+v (node-a exported %+v/%+v), destination-node totals %+v/%+v (node-b exported %+v/%+v)",
			sf, sr, halfA.Fwd, halfA.Rev, df, dr, halfB.Fwd, halfB.Rev)
	})

	t.Run("flowlens mode: Antrea files both halves as the destination's (the bug the mode fixes)", func(t *testing.T) {
		_, halfA, halfB, rec := run(t, agentconfig.CollectorFlowlens)
		for node, h := range map[string]flow.Record{nodeA: halfA, nodeB: halfB} {
			if h.Source.PodName != "client" || h.Destination.PodName != "db" {
				t.Errorf("%s's half names %q/%q, want both pods client/db", node, h.Source.PodName, h.Destination.PodName)
			}
		}
		checkStrings(t, rec, map[string]string{"sourcePodName": "client", "destinationPodName": "db"})
		// Neither half has sourcePodName set with destinationPodName
		// empty, so neither is the source node's.
		checkSide(t, rec, "FromSourceNode", flow.Counters{}, flow.Counters{})
		// Both are filed as the destination node's: the first creates the
		// side, the second overwrites its totals and adds its deltas, or,
		// ending in the same second, is dropped as a stale repeat
		// (aggregateRecords). Either way one node's view is lost or mixed
		// into the other's.
		totFwd, totRev := side(t, rec, "Total", "FromDestinationNode")
		dFwd, dRev := side(t, rec, "Delta", "FromDestinationNode")
		sum := func(x, y flow.Counters) flow.Counters {
			return flow.Counters{Packets: x.Packets + y.Packets, Bytes: x.Bytes + y.Bytes}
		}
		var last flow.Record
		switch {
		case totFwd == halfA.Fwd && totRev == halfA.Rev:
			last = halfA
		case totFwd == halfB.Fwd && totRev == halfB.Rev:
			last = halfB
		default:
			t.Fatalf("destination-node totals %+v/%+v are neither node-a's %+v/%+v nor node-b's %+v/%+v",
				totFwd, totRev, halfA.Fwd, halfA.Rev, halfB.Fwd, halfB.Rev)
		}
		if (dFwd != last.Fwd || dRev != last.Rev) && (dFwd != sum(halfA.Fwd, halfB.Fwd) || dRev != sum(halfA.Rev, halfB.Rev)) {
			t.Errorf("destination-node deltas %+v/%+v: want one node's %+v/%+v or both nodes' sum", dFwd, dRev, last.Fwd, last.Rev)
		}
		t.Logf("flowlens mode: source-node counters 0/0; destination-node totals %+v/%+v, deltas %+v/%+v (node-a exported %+v/%+v, node-b %+v/%+v)",
			totFwd, totRev, dFwd, dRev, halfA.Fwd, halfA.Rev, halfB.Fwd, halfB.Rev)
	})
}

// exchangeAcrossASecond is netnstest.SendExactly(from, to, sent, reply)
// (same server protocol: an 8-byte header asking for the reply, the
// payload, a half-close, the reply) with a pause in the middle so that the
// connection ends in a later second than it started. Antrea's aggregator
// drops the second node's record of a connection whose flowEndSeconds
// equals its flowStartSeconds: it compares a node's first record with
// flowStartSeconds and skips one that is not later
// (aggregationProcess.aggregateRecords / updateFlowEndSecondsFromNodes,
// Antrea v2.5.3), whoever exported it. A sub-second connection would then
// show one node's counters in any mode.
func exchangeAcrossASecond(t *testing.T, from *netnstest.Pod, to netip.AddrPort) netnstest.Transfer {
	t.Helper()
	c, err := from.DialTCP(to)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	xfer := netnstest.Transfer{Local: netip.MustParseAddrPort(c.LocalAddr().String()), Remote: to}
	started := time.Now()
	must(t, c.SetDeadline(started.Add(30*time.Second)))
	var hdr [exchangeHeader]byte
	binary.BigEndian.PutUint64(hdr[:], reply)
	payload := make([]byte, sent/2)
	if _, err := c.Write(hdr[:]); err != nil {
		t.Fatalf("write header: %v", err)
	}
	for i := 0; i < 2; i++ {
		n, err := c.Write(payload)
		if err != nil {
			t.Fatalf("write payload: %v", err)
		}
		xfer.Sent += int64(n)
		if i == 0 {
			time.Sleep(time.Until(started.Truncate(time.Second).Add(1200 * time.Millisecond)))
		}
	}
	must(t, c.CloseWrite())
	got, err := io.Copy(io.Discard, c)
	if err != nil || got != reply {
		t.Fatalf("read reply: %d bytes, want %d: %v", got, reply, err)
	}
	xfer.Received = got
	return xfer
}

// checkExchange: the counters of the exchange are the payload each way
// plus 40..60 bytes of headers a packet, at least 3 packets each way.
func checkExchange(t *testing.T, who string, fwd, rev flow.Counters) {
	t.Helper()
	for _, d := range []struct {
		dir     string
		c       flow.Counters
		payload uint64
	}{{"client->db", fwd, sent + exchangeHeader}, {"db->client", rev, reply}} {
		lo, hi := d.payload+minHeader*d.c.Packets, d.payload+maxHeader*d.c.Packets
		if d.c.Packets < 3 || d.c.Bytes < lo || d.c.Bytes > hi {
			t.Errorf("%s %s: %d packets, %d bytes; want >= 3 packets and %d..%d bytes (%d payload + headers)",
				who, d.dir, d.c.Packets, d.c.Bytes, lo, hi, d.payload)
		}
	}
}

func field(t *testing.T, r ipfixcollect.Record, name string) *ipfixcollect.Field {
	t.Helper()
	f, ok := r.Get(name)
	if !ok {
		t.Fatalf("the aggregator's record has no %s", name)
	}
	return f
}

func checkStrings(t *testing.T, r ipfixcollect.Record, want map[string]string) {
	t.Helper()
	for name, v := range want {
		if got := field(t, r, name).Str; got != v {
			t.Errorf("%s = %q, want %q", name, got, v)
		}
	}
}

func checkUint(t *testing.T, r ipfixcollect.Record, name string, want uint64) {
	t.Helper()
	if got := field(t, r, name).Uint; got != want {
		t.Errorf("%s = %d, want %d", name, got, want)
	}
}

// checkSide checks the aggregator's eight counters of one node's view
// (suffix FromSourceNode or FromDestinationNode): totals and, the
// connection being exported once, deltas.
func checkSide(t *testing.T, r ipfixcollect.Record, suffix string, fwd, rev flow.Counters) {
	t.Helper()
	for _, kind := range []string{"Total", "Delta"} {
		checkUint(t, r, "packet"+kind+"Count"+suffix, fwd.Packets)
		checkUint(t, r, "octet"+kind+"Count"+suffix, fwd.Bytes)
		checkUint(t, r, "reversePacket"+kind+"Count"+suffix, rev.Packets)
		checkUint(t, r, "reverseOctet"+kind+"Count"+suffix, rev.Bytes)
	}
}

// side reads one node's four counters of one kind (Total or Delta).
func side(t *testing.T, r ipfixcollect.Record, kind, suffix string) (fwd, rev flow.Counters) {
	t.Helper()
	fwd = flow.Counters{Packets: field(t, r, "packet"+kind+"Count"+suffix).Uint, Bytes: field(t, r, "octet"+kind+"Count"+suffix).Uint}
	rev = flow.Counters{Packets: field(t, r, "reversePacket"+kind+"Count"+suffix).Uint, Bytes: field(t, r, "reverseOctet"+kind+"Count"+suffix).Uint}
	return fwd, rev
}

// checkTimes: the connection started and ended within the test, and each
// node's end time is the one its agent exported.
func checkTimes(t *testing.T, r ipfixcollect.Record, testStart time.Time, halfA, halfB flow.Record) {
	t.Helper()
	lo, hi := uint64(testStart.Unix()), uint64(time.Now().Unix())
	start, end := field(t, r, "flowStartSeconds").Uint, field(t, r, "flowEndSeconds").Uint
	if start < lo || start > hi || end < start || end > hi {
		t.Errorf("flowStartSeconds %d, flowEndSeconds %d; want start <= end, both within the test (%d..%d)", start, end, lo, hi)
	}
	for _, s := range []struct {
		name string
		half flow.Record
	}{{"flowEndSecondsFromSourceNode", halfA}, {"flowEndSecondsFromDestinationNode", halfB}} {
		want := uint64(time.Unix(0, s.half.StopNanos).Unix())
		if s.half.StopNanos == 0 {
			want = uint64(time.Unix(0, s.half.ExportNanos).Unix())
		}
		if got := field(t, r, s.name).Uint; got != want || got < lo || got > hi {
			t.Errorf("%s = %d, want %d (the agent's flowEndSeconds), within the test (%d..%d)", s.name, got, want, lo, hi)
		}
	}
}
