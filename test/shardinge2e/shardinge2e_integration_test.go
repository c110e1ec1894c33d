//go:build integration

package shardinge2e_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/shard"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/clickhousetest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The simulated cluster:
//
//	node-1 .. node-4 (netnstest index 1..4), every pair joined by a veth
//	(a flat pod network), each with pods shard/client-<n> and
//	shard/server-<n> (exchange server on :5000) and its own agent;
//	replicas agg-0 .. agg-2 on fixed loopback ports, write-ahead log on;
//	clickhouse-server shard 0 and shard 1, cluster "flowlens".
//
// Every agent lists the three replicas (export.collectors) and sends each
// connection to the replica pkg/shard's ring picks for it, so both nodes
// of an inter-node connection reach the same replica, which correlates the
// two halves into one row; the replica inserts the row into the shard of
// its connectionKey.
const (
	numNodes    = 4
	numReplicas = 3
	numShards   = 2
	serverPort  = 5000
	table       = "flows"
	localTable  = table + "_local"

	// How long a half waits for its peer. The restarted replica replays
	// a held half and gets its peer from the agent's buffer within it.
	correlationWait = 10 * time.Second
	// The agents' default: a replica unreachable this long leaves their
	// ring (its connections go to the others); reachable again, it returns.
	failoverAfter = 15 * time.Second
	// The outage the issue asks for: longer than failoverAfter, so the
	// ring changes twice on every agent while traffic runs.
	downFor = 20 * time.Second
	// Records an agent keeps per replica while that replica is
	// unreachable (export.bufferRecords); what is beyond is dropped and
	// counted. Small here so the bound stated below is small, large enough
	// that this test's traffic never reaches it.
	bufferRecords = 20000

	// netnstest's exchange header and TCP/IPv4 header bounds per packet
	// (40 bytes without options, 60 with the SYN's).
	exchangeHeader       = 8
	minHeader, maxHeader = 40, 60
)

// made is one connection as its client saw it.
type made struct {
	xfer     netnstest.Transfer
	from, to int // node numbers (1-based)
	phase    string
}

func (m made) tuple() flow.Tuple {
	return flow.NewTuple(m.xfer.Local.Addr(), m.xfer.Remote.Addr(), m.xfer.Local.Port(), m.xfer.Remote.Port(), flow.ProtoTCP)
}

// harness is the running scaled-out deployment.
type harness struct {
	nodes    []*netnstest.Node
	ch       *clickhousetest.Cluster
	replicas []replica
	aggs     []*agenttest.Aggregator
	agents   []*agenttest.Agent
	dir      string

	mu    sync.Mutex
	conns []made
	seq   int    // numbers the exchanges, which gives each its sizes
	phase string // of the exchanges starting now
}

func nodeName(n int) string { return fmt.Sprintf("node-%d", n) }

// startHarness builds the nodes, the ClickHouse cluster, the replicas and
// the agents. Everything is torn down by the test's cleanups, also when
// it fails half-way.
func startHarness(t *testing.T) *harness {
	h := &harness{dir: t.TempDir()}
	h.ch = clickhousetest.StartCluster(t, numShards)
	for n := 1; n <= numNodes; n++ {
		h.nodes = append(h.nodes, netnstest.NewNodeT(t, netnstest.Config{Name: nodeName(n), Index: uint8(n), Pods: []netnstest.PodSpec{
			{Name: fmt.Sprintf("client-%d", n), Namespace: "shard"},
			{Name: fmt.Sprintf("server-%d", n), Namespace: "shard"},
		}}))
	}
	for i := range h.nodes {
		for j := i + 1; j < len(h.nodes); j++ {
			netnstest.ConnectNodesT(t, h.nodes[i], h.nodes[j])
		}
	}
	var inv strings.Builder
	inv.WriteString("nodes:\n")
	for _, n := range h.nodes {
		fmt.Fprintf(&inv, "  - {name: %s, ips: [%s]}\n", n.Name, n.NodeIPv4())
	}
	inv.WriteString("entries:\n")
	for i, n := range h.nodes {
		if _, err := h.server(i + 1).ListenTCP(serverPort); err != nil {
			t.Fatal(err)
		}
		for _, p := range []*netnstest.Pod{h.client(i + 1), h.server(i + 1)} {
			fmt.Fprintf(&inv, "  - {name: %s, group: %s, node: %s, ips: [%s], labels: {app: %s}}\n", p.Name, p.Namespace, n.Name, p.IPv4, strings.Split(p.Name, "-")[0])
		}
	}
	inventory := filepath.Join(h.dir, "inventory.yaml")
	if err := os.WriteFile(inventory, []byte(inv.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	var collectors []string
	for i := 0; i < numReplicas; i++ {
		r := replica{id: fmt.Sprintf("agg-%d", i), listen: freeAddr(t), walDir: filepath.Join(h.dir, fmt.Sprintf("wal-%d", i))}
		h.replicas = append(h.replicas, r)
		h.aggs = append(h.aggs, h.startReplica(t, i))
		collectors = append(collectors, r.listen)
	}
	for _, n := range h.nodes {
		h.agents = append(h.agents, agenttest.StartAgent(t, agentBin, fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
  activeTimeout: 10m
  idleTimeout: 10m
  tickInterval: 100ms
export:
  collectors: [%s]
  transport: tcp
  failoverAfter: %s
  # A restarted replica gets its share back within this of being up.
  reconnectMax: 5s
  bufferRecords: %d
  flushInterval: 100ms
server:
  listen: 127.0.0.1:0
inventory:
  file: %s
`, n.Name, n.NetnsPath, strings.Join(collectors, ", "), failoverAfter, bufferRecords, inventory)))
	}
	return h
}

func (h *harness) client(n int) *netnstest.Pod {
	return h.nodes[n-1].Pod(fmt.Sprintf("client-%d", n))
}

func (h *harness) server(n int) *netnstest.Pod {
	return h.nodes[n-1].Pod(fmt.Sprintf("server-%d", n))
}

// startReplica (re)starts replica i over its write-ahead log.
func (h *harness) startReplica(t *testing.T, i int) *agenttest.Aggregator {
	t.Helper()
	return agenttest.StartAggregator(t, aggregatorBin, aggregatorConfig(h.replicas[i], h.ch, table, correlationWait, time.Second))
}

// exchange makes one connection from node from's client to node to's
// server; sizes differ per exchange so that a row holding another
// connection's counters cannot pass.
func (h *harness) exchange(from, to int) error {
	h.mu.Lock()
	h.seq++
	k, phase := int64(h.seq), h.phase
	h.mu.Unlock()
	sent, reply := 2000+97*(k%200), 1000+31*(k%300)
	x, err := netnstest.SendExactly(h.client(from), h.server(to).Addr(serverPort), sent, reply)
	if err != nil {
		return fmt.Errorf("%s: node-%d -> node-%d: %w", phase, from, to, err)
	}
	h.mu.Lock()
	h.conns = append(h.conns, made{xfer: x, from: from, to: to, phase: phase})
	h.mu.Unlock()
	return nil
}

// setPhase names the exchanges that start from now on.
func (h *harness) setPhase(p string) {
	h.mu.Lock()
	h.phase = p
	h.mu.Unlock()
}

// everyPair runs fn for every ordered pair of different nodes, at once.
func everyPair(fn func(from, to int) error) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	for from := 1; from <= numNodes; from++ {
		for to := 1; to <= numNodes; to++ {
			if from == to {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := fn(from, to); err != nil {
					mu.Lock()
					errs = append(errs, err.Error())
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d failures: %s", len(errs), strings.Join(errs, "; "))
	}
	return nil
}

// settle waits until both nodes' halves of every connection in conns are
// in the Distributed table (in one correlated row or in two unmatched
// ones) and nothing more is on its way: no agent buffers a record, no
// replica holds a connection. (A replica's queued rows are not a
// condition: its queue gauge is sampled at its commit interval.)
func (h *harness) settle(t *testing.T, conns []made, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var busy []string
		for i, a := range h.agents {
			if v := mustSum(t, nodeName(i+1)+" agent", a.Metrics(t), "flowlens_ipfix_exporter_buffered_records"); v != 0 {
				busy = append(busy, fmt.Sprintf("%s agent buffers %v records", nodeName(i+1), v))
			}
		}
		for i, a := range h.aggs {
			page := a.Metrics(t)
			if v := mustSum(t, h.replicas[i].id, page, "flowlens_aggregator_pending_connections"); v != 0 {
				busy = append(busy, fmt.Sprintf("%s holds %v connections", h.replicas[i].id, v))
			}
		}
		rows := readRows(t, h.ch)
		missing := 0
		for _, c := range conns {
			var halves [2]bool
			for _, r := range rows[c.tuple()] {
				got, _ := checkRow(c, r)
				halves[0], halves[1] = halves[0] || got[0], halves[1] || got[1]
			}
			if !halves[0] || !halves[1] {
				missing++
			}
		}
		if missing > 0 {
			busy = append(busy, fmt.Sprintf("%d of %d connections lack a node's half", missing, len(conns)))
		}
		if len(busy) == 0 {
			return
		}
		if time.Now().After(deadline) {
			// The checks that follow name what is missing.
			t.Errorf("not settled after %s: %s", within, strings.Join(busy, "; "))
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestShardedReplicasStoreEveryConnectionOnce runs steady inter-node
// traffic between all node pairs through three replicas into two shards
// (every connection one correlated row, on the shard of its
// connectionKey), then kills one replica with SIGKILL while traffic runs,
// restarts it 20 s later over its write-ahead log, and keeps the traffic
// going until every agent has it back in its ring. Then every node's half
// of every connection of the whole run must be stored exactly once: in one
// correlated row, or, for a connection whose halves went to different
// replicas around the failover, in two unmatched rows (counted and
// logged); no agent or replica may have dropped a record.
//
// What an agent holds for the dead replica meanwhile (issue 15's bound):
// every replica's exporter session has its own ring of
// export.bufferRecords records, allocated at start (a pointer-free slot
// plus 128 B of string arena each, ~344 B; at most sizeof(flow.Record)
// with the arena grown, used below as the bound). For
// failoverAfter (15 s) the dead replica's ring takes the records of its
// connections; when it leaves the ring they are moved to their new
// replicas and it takes no more. What stays with its exporter until it
// returns is what was already encoded: messages written to the failed
// connection and not acknowledged by its kernel (at most the socket send
// buffer, tcp_wmem's maximum, 4 MiB by default) and at most two partly
// filled messages (64 KiB each). So per replica at most: bufferRecords ×
// sizeof(flow.Record) + 4 MiB + 128 KiB (logged below), whatever the
// outage; a full buffer first refuses records (the agent's store keeps
// them) and only after the collector has been away for 30 s drops and
// counts them (flowlens_ipfix_exporter_records_dropped_total), which this test
// requires to stay zero. The peak each agent's buffers reached is logged.
func TestShardedReplicasStoreEveryConnectionOnce(t *testing.T) {
	h := startHarness(t)
	recordSize := int(unsafe.Sizeof(flow.Record{}))
	wmem, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(wmem))
	wmemMax, err := strconv.Atoi(f[len(f)-1])
	if err != nil {
		t.Fatalf("tcp_wmem %q: %v", wmem, err)
	}
	perReplica := bufferRecords*recordSize + wmemMax + 2*65535
	t.Logf("what an agent can hold for its replicas: %d × (%d records × %d B + %d B unacknowledged + 2 × 64 KiB partial messages) = %.1f MiB",
		numReplicas, bufferRecords, recordSize, wmemMax, float64(numReplicas*perReplica)/(1<<20))

	// Steady phase: every ordered node pair, several connections each.
	const steadyPerPair = 8
	h.setPhase("steady")
	if err := everyPair(func(from, to int) error {
		for i := 0; i < steadyPerPair; i++ {
			if err := h.exchange(from, to); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	steady := len(h.conns)
	h.settle(t, h.conns, 60*time.Second)
	steadyRows := readRows(t, h.ch)

	t.Run("steady: every connection is one correlated row with both nodes' bytes", func(t *testing.T) {
		for _, tu := range checkConnections(t, h.conns[:steady], steadyRows, false) {
			t.Logf("where the rows of %s -> %s are: %s", tu.Src(), tu.Dst(), placeRows(t, h.ch, tu))
		}
	})
	t.Run("steady: rows spread over every replica and both shards, each on the shard of its connectionKey", func(t *testing.T) {
		perAgg := map[string]int{}
		for _, rs := range steadyRows {
			for _, r := range rs {
				perAgg[r.aggregator]++
			}
		}
		for _, r := range h.replicas {
			if perAgg[r.id] == 0 {
				t.Errorf("replica %s stored no row of %d connections (rows per replica %v): the agents do not spread connections over the replicas", r.id, steady, perAgg)
			}
		}
		t.Logf("rows per replica: %v", perAgg)
		checkShards(t, h.ch, steady)
	})

	// Kill phase: steady traffic on every pair (one connection a second
	// each); replica 1 is killed 10 s in and restarted 20 s later; the
	// traffic goes on until every agent has it back in its ring (its
	// exporter reconnects with backoff, so that is seconds later), and 5 s
	// more. Phases: before (the kill), down, back (restarted, agents
	// reconnecting), returned (in every agent's ring again).
	const victim = 1
	h.setPhase("before")
	stop := make(chan struct{})
	stopTraffic := sync.OnceFunc(func() { close(stop) })
	// A failure half-way stops the traffic before the nodes go.
	t.Cleanup(stopTraffic)
	trafficDone := make(chan error, 1)
	go func() {
		trafficDone <- everyPair(func(from, to int) error {
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				if err := h.exchange(from, to); err != nil {
					return err
				}
				select {
				case <-stop:
					return nil
				case <-tick.C:
				}
			}
		})
	}()
	peak := make([]float64, len(h.agents))
	// watch samples the agents' buffers while traffic runs until done
	// says so: the peak of any one replica's buffer is what an agent held.
	watch := func(within time.Duration, done func() bool) bool {
		end := time.Now().Add(within)
		for time.Now().Before(end) {
			for i, a := range h.agents {
				for _, s := range samples(a.Metrics(t), "flowlens_ipfix_exporter_buffered_records") {
					peak[i] = max(peak[i], s.value)
				}
			}
			if done != nil && done() {
				return true
			}
			time.Sleep(200 * time.Millisecond)
		}
		return false
	}
	watch(10*time.Second, nil)
	before := h.aggs[victim].Metrics(t)
	h.setPhase("down")
	h.aggs[victim].Kill()
	killedAt := time.Now()
	writeSecs, writes := mustSum(t, "victim", before, "flowlens_aggregator_sink_write_seconds_sum"), mustSum(t, "victim", before, "flowlens_aggregator_sink_write_seconds_count")
	t.Logf("%s killed (SIGKILL) at %s with traffic running; at its last scrape it had %v rows queued for ClickHouse (a batch being inserted included) and held %v connections; its %v inserts had taken %.0f ms each on average",
		h.replicas[victim].id, killedAt.UTC().Format("15:04:05.000"), mustSum(t, "victim", before, "flowlens_aggregator_sink_queue_records"),
		mustSum(t, "victim", before, "flowlens_aggregator_pending_connections"), writes, 1000*writeSecs/max(writes, 1))
	watch(time.Until(killedAt.Add(downFor)), nil)
	h.aggs[victim] = h.startReplica(t, victim)
	h.setPhase("back")
	restartedAt := time.Now()
	t.Logf("%s restarted at %s, %s after the kill", h.replicas[victim].id, restartedAt.UTC().Format("15:04:05.000"), restartedAt.Sub(killedAt).Round(100*time.Millisecond))
	returned := func() bool {
		for _, a := range h.agents {
			if v, _ := sum(a.Metrics(t), "flowlens_agent_collector_returns_total"); v < 1 {
				return false
			}
		}
		return true
	}
	// The exporters' reconnect backoff doubles up to 30 s (ReconnectMax).
	if !watch(45*time.Second, returned) {
		stopTraffic()
		<-trafficDone
		t.Fatalf("%s restarted %s ago, but not every agent has it back in its ring (flowlens_agent_collector_returns_total)", h.replicas[victim].id, time.Since(restartedAt).Round(time.Second))
	}
	h.setPhase("returned")
	t.Logf("every agent has %s back in its ring %s after its restart", h.replicas[victim].id, time.Since(restartedAt).Round(100*time.Millisecond))
	watch(5*time.Second, nil)
	stopTraffic()
	if err := <-trafficDone; err != nil {
		t.Fatal(err)
	}
	all := len(h.conns)
	// Long enough for a half the restarted replica replayed to wait for
	// its peer and be stored alone, should the peer have gone elsewhere.
	h.settle(t, h.conns, 90*time.Second)
	// A half stored twice could still be on its way: a replica that got
	// a half again would hold it for correlationWait before storing it.
	time.Sleep(correlationWait + 2*time.Second)
	h.settle(t, h.conns, 30*time.Second)
	rows := readRows(t, h.ch)
	t.Logf("kill phase: %d connections made; agents' peak buffered records (any one replica's buffer) per node: %v", all-steady, peak)

	t.Run("after a replica's kill and restart every node's half of every connection of the run is stored exactly once", func(t *testing.T) {
		for _, tu := range checkConnections(t, h.conns, rows, true) {
			t.Logf("where the rows of %s -> %s are: %s", tu.Src(), tu.Dst(), placeRows(t, h.ch, tu))
		}
		checkShards(t, h.ch, all)
	})

	t.Run("the restarted replica is back in every agent's ring and stores connections again", func(t *testing.T) {
		n := 0
		for _, c := range h.conns {
			if c.phase != "returned" {
				continue
			}
			for _, r := range rows[c.tuple()] {
				if r.aggregator == h.replicas[victim].id {
					n++
				}
			}
		}
		if n == 0 {
			t.Errorf("%s stored no row of the connections made once every agent had it back", h.replicas[victim].id)
		}
		for i, a := range h.agents {
			page := a.Metrics(t)
			fo, _ := sum(page, "flowlens_agent_collector_failovers_total")
			ret, _ := sum(page, "flowlens_agent_collector_returns_total")
			moved, _ := sum(page, "flowlens_agent_collector_records_moved_total")
			if fo != 1 || ret != 1 {
				t.Errorf("%s agent: %v failovers, %v returns; want 1 each (the replica was away %s, failoverAfter %s)", nodeName(i+1), fo, ret, downFor, failoverAfter)
			}
			t.Logf("%s agent: %v failovers, %v returns, %v records moved from the dead replica's buffer", nodeName(i+1), fo, ret, moved)
		}
	})

	t.Run("no agent or replica dropped a record", func(t *testing.T) {
		for i, a := range h.agents {
			page := a.Metrics(t)
			for _, d := range nonZero(page, "drop") {
				t.Errorf("%s agent: %s", nodeName(i+1), d)
			}
			if peak[i] > bufferRecords {
				t.Errorf("%s agent buffered %v records for one replica, above its bufferRecords %d", nodeName(i+1), peak[i], bufferRecords)
			}
			resent, _ := sum(page, "flowlens_ipfix_exporter_records_resent_total")
			sent, _ := sum(page, "flowlens_ipfix_exporter_records_sent_total")
			t.Logf("%s agent: %v records sent, %v sent again after a connection failed", nodeName(i+1), sent, resent)
		}
		for i, a := range h.aggs {
			page := a.Metrics(t)
			for _, d := range nonZero(page, "drop") {
				t.Errorf("%s: %s", h.replicas[i].id, d)
			}
		}
		// The killed process's own counters, as last scraped.
		for _, d := range nonZero(before, "drop") {
			t.Errorf("%s before the kill: %s", h.replicas[victim].id, d)
		}
		page := h.aggs[victim].Metrics(t)
		replayed := mustSum(t, h.replicas[victim].id, page, "flowlens_wal_replayed_records_total")
		t.Logf("%s replayed %v records from its write-ahead log", h.replicas[victim].id, replayed)
	})
}

// sideTotals are one node's (or the row's main) totals.
type sideTotals struct {
	fwdPkts, fwdBytes, revPkts, revBytes uint64
}

// row is one stored row of a test connection.
type row struct {
	tuple         flow.Tuple
	correlation   string
	aggregator    string
	key           uint64
	endReason     int
	srcExp        string
	dstExp        string
	main, fromSrc sideTotals
	fromDst       sideTotals
}

// readRows reads every row of the test's connections through the
// Distributed table, keyed by connection.
func readRows(t *testing.T, ch *clickhousetest.Cluster) map[flow.Tuple][]row {
	t.Helper()
	cols := []string{"sourceIP", "sourceTransportPort", "destinationIP", "destinationTransportPort",
		"correlation", "aggregator", "connectionKey", "flowEndReason", "sourceExporter", "destinationExporter"}
	for _, suffix := range []string{"", "FromSourceNode", "FromDestinationNode"} {
		for _, c := range []string{"packetTotalCount", "octetTotalCount", "reversePacketTotalCount", "reverseOctetTotalCount"} {
			cols = append(cols, c+suffix)
		}
	}
	out := query(t, ch, 0, fmt.Sprintf("SELECT %s FROM %s WHERE protocolIdentifier = %d AND destinationTransportPort = %d FORMAT TabSeparated",
		strings.Join(cols, ", "), table, flow.ProtoTCP, serverPort))
	rows := map[flow.Tuple][]row{}
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != len(cols) {
			t.Fatalf("row %q: %d fields, want %d", line, len(f), len(cols))
		}
		u := func(i int) uint64 {
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				t.Fatalf("row %q: %s = %q: %v", line, cols[i], f[i], err)
			}
			return v
		}
		src, err := netip.ParseAddr(f[0])
		if err != nil {
			t.Fatalf("row %q: sourceIP: %v", line, err)
		}
		dst, err := netip.ParseAddr(f[2])
		if err != nil {
			t.Fatalf("row %q: destinationIP: %v", line, err)
		}
		side := func(i int) sideTotals { return sideTotals{u(i), u(i + 1), u(i + 2), u(i + 3)} }
		r := row{
			tuple:       flow.NewTuple(src, dst, uint16(u(1)), uint16(u(3)), flow.ProtoTCP),
			correlation: f[4], aggregator: f[5], key: u(6), endReason: int(u(7)), srcExp: f[8], dstExp: f[9],
			main: side(10), fromSrc: side(14), fromDst: side(18),
		}
		rows[r.tuple] = append(rows[r.tuple], r)
	}
	return rows
}

// exporterOf is how a replica names node n's agent: its connection's
// address and the observation domain the agent derives from its node name.
func exporterOf(n int) string {
	return fmt.Sprintf("127.0.0.1/%d", flow.DefaultObservationDomainID(nodeName(n)))
}

// checkConnections checks the rows of every connection made against what
// its client sent. Both nodes of an inter-node connection export their
// half of it, so the rule is per half: each node's half must be stored
// exactly once, and nothing else may be stored. That allows one
// correlated row (both halves met in one replica) or, with splitOK, two
// unmatched rows, one per node (the halves went to different replicas,
// which agents that change their rings independently around a failover
// can cause); it fails a half that is missing (one unmatched row alone:
// the other node's record was lost) and a half stored twice. It returns
// the connections whose halves were not each stored once.
func checkConnections(t *testing.T, conns []made, rows map[flow.Tuple][]row, splitOK bool) (wrongTuples []flow.Tuple) {
	t.Helper()
	want := map[flow.Tuple][]made{}
	for _, c := range conns {
		want[c.tuple()] = append(want[c.tuple()], c)
	}
	var missing, twice, bad []string
	split := map[string]int{}
	correlated := 0
	for tu, cs := range want {
		rs := rows[tu]
		c := cs[0]
		name := fmt.Sprintf("%s (node-%d -> node-%d, %s)", c.xfer.Local, c.from, c.to, c.phase)
		if len(cs) > 1 {
			// A port reused within the run would make two connections
			// one tuple; Linux does not hand out a port in TIME_WAIT.
			bad = append(bad, fmt.Sprintf("%s: the client used this port for %d connections", name, len(cs)))
			continue
		}
		var halves [2]int // stored source-node and destination-node halves
		var what, problems []string
		for _, r := range rs {
			what = append(what, fmt.Sprintf("%s by %s (source exporter %q, destination exporter %q, end reason %d)", r.correlation, r.aggregator, r.srcExp, r.dstExp, r.endReason))
			got, problem := checkRow(c, r)
			if problem != "" {
				problems = append(problems, fmt.Sprintf("%s by %s: %s", r.correlation, r.aggregator, problem))
			}
			for i := range got {
				if got[i] {
					halves[i]++
				}
			}
		}
		detail := fmt.Sprintf("%s: %d rows: %s", name, len(rs), strings.Join(what, "; "))
		switch {
		case len(problems) > 0:
			bad = append(bad, detail+": "+strings.Join(problems, "; "))
		case halves[0] == 0 || halves[1] == 0:
			missing = append(missing, fmt.Sprintf("%s; missing: %d source-node halves, %d destination-node halves stored", detail, halves[0], halves[1]))
		case halves[0] > 1 || halves[1] > 1:
			same := ""
			if len(rs) == 2 && rs[0].aggregator == rs[1].aggregator {
				same = " (one replica stored it twice)"
			}
			twice = append(twice, detail+same)
		case len(rs) == 2 && !splitOK:
			bad = append(bad, detail+": split in two unmatched rows in steady traffic: the agents do not agree on the replica")
		case len(rs) == 2:
			split[c.phase]++
			continue
		default:
			correlated++
			continue
		}
		wrongTuples = append(wrongTuples, tu)
	}
	var stray []string
	for tu, rs := range rows {
		if _, ok := want[tu]; !ok {
			stray = append(stray, fmt.Sprintf("%s -> %s (%d rows, %s)", tu.Src(), tu.Dst(), len(rs), rs[0].correlation))
		}
	}
	for _, l := range [][]string{missing, twice, bad, stray} {
		sort.Strings(l)
	}
	t.Logf("%d connections: %d one correlated row, split in two unmatched rows (one per node) per phase %v; %d with a half missing, %d with a half stored twice, %d wrong, %d rows of no connection made",
		len(conns), correlated, split, len(missing), len(twice), len(bad), len(stray))
	for _, e := range []struct {
		what string
		l    []string
	}{{"with a node's half not stored", missing}, {"with a node's half stored more than once", twice}, {"stored wrong", bad}, {"rows of no connection the test made", stray}} {
		if len(e.l) > 0 {
			t.Errorf("%d connections %s, e.g.:\n  %s", len(e.l), e.what, strings.Join(e.l[:min(len(e.l), 10)], "\n  "))
		}
	}
	return wrongTuples
}

// placeRows says, for a connection stored wrong, which shard part holds
// each row and when ClickHouse wrote that part (merges rename parts, so
// this is a hint), to tell a replay after the restart from a write before
// the kill.
func placeRows(t *testing.T, ch *clickhousetest.Cluster, tu flow.Tuple) string {
	t.Helper()
	where := fmt.Sprintf("sourceIP = '%s' AND sourceTransportPort = %d AND destinationIP = '%s' AND destinationTransportPort = %d AND protocolIdentifier = %d",
		tu.Src().Unmap(), tu.SrcPort, tu.Dst().Unmap(), tu.DstPort, tu.Proto)
	var out []string
	for i := 0; i < ch.Len(); i++ {
		parts := query(t, ch, i, fmt.Sprintf("SELECT _part FROM %s WHERE %s", localTable, where))
		for _, p := range strings.Fields(parts) {
			info := query(t, ch, i, fmt.Sprintf("SELECT modification_time, rows FROM system.parts WHERE table = '%s' AND name = '%s' AND active", localTable, p))
			out = append(out, fmt.Sprintf("shard %d part %s (written at, rows: %s)", i, p, strings.ReplaceAll(info, "\t", ", ")))
		}
	}
	return strings.Join(out, "; ")
}

// checkRow checks one row of connection c: which node's halves it holds
// (source node, destination node) and, if it is wrong, why.
func checkRow(c made, r row) (halves [2]bool, problem string) {
	if k := shard.Key(c.tuple()); r.key != k {
		return halves, fmt.Sprintf("connectionKey %d, want shard.Key = %d", r.key, k)
	}
	if r.endReason != int(flow.EndOfFlow) {
		return halves, fmt.Sprintf("flowEndReason %d, want end-of-flow (%d)", r.endReason, flow.EndOfFlow)
	}
	sent, reply := uint64(c.xfer.Sent+exchangeHeader), uint64(c.xfer.Received)
	inBounds := func(s sideTotals) string {
		for _, d := range []struct {
			dir            string
			pkts, bytes, p uint64
		}{{"client->server", s.fwdPkts, s.fwdBytes, sent}, {"server->client", s.revPkts, s.revBytes, reply}} {
			lo, hi := d.p+minHeader*d.pkts, d.p+maxHeader*d.pkts
			if d.pkts < 3 || d.bytes < lo || d.bytes > hi {
				return fmt.Sprintf("%s %d packets %d bytes, want >= 3 packets and %d..%d bytes (%d payload + headers)", d.dir, d.pkts, d.bytes, lo, hi, d.p)
			}
		}
		return ""
	}
	srcNode, dstNode := exporterOf(c.from), exporterOf(c.to)
	switch r.correlation {
	case "correlated":
		if r.srcExp != srcNode || r.dstExp != dstNode {
			return halves, fmt.Sprintf("sourceExporter %q, destinationExporter %q; want node-%d's %s and node-%d's %s", r.srcExp, r.dstExp, c.from, srcNode, c.to, dstNode)
		}
		if p := inBounds(r.fromSrc); p != "" {
			return halves, "source node's view: " + p
		}
		if p := inBounds(r.fromDst); p != "" {
			return halves, "destination node's view: " + p
		}
		// Every packet crossed both nodes over one veth: both conntrack
		// tables counted the same packets.
		if r.fromSrc != r.fromDst {
			return halves, fmt.Sprintf("the nodes' totals differ: source %+v, destination %+v", r.fromSrc, r.fromDst)
		}
		if r.main != r.fromSrc {
			return halves, fmt.Sprintf("main counters %+v, want the source node's %+v", r.main, r.fromSrc)
		}
		return [2]bool{true, true}, ""
	case "unmatched":
		switch {
		case r.srcExp == srcNode && r.dstExp == "":
			halves[0] = true
		case r.dstExp == dstNode && r.srcExp == "":
			halves[1] = true
		default:
			return halves, fmt.Sprintf("sourceExporter %q, destinationExporter %q; want one of node-%d's %s (source) or node-%d's %s (destination), the other empty", r.srcExp, r.dstExp, c.from, srcNode, c.to, dstNode)
		}
		if p := inBounds(r.main); p != "" {
			return halves, "the half stored: " + p
		}
		return halves, ""
	}
	return halves, fmt.Sprintf("correlation %q, want correlated or unmatched", r.correlation)
}

// checkShards requires rows on every shard, each on the shard of its
// connectionKey (the Distributed table's sharding key and the sink's
// choice must agree, or a query by key would miss rows), and the shards'
// local tables to add up to the Distributed table.
func checkShards(t *testing.T, ch *clickhousetest.Cluster, want int) {
	t.Helper()
	where := fmt.Sprintf("destinationTransportPort = %d", serverPort)
	total := 0
	var per []int
	for i := 0; i < ch.Len(); i++ {
		n := count(t, ch, i, fmt.Sprintf("SELECT count() FROM %s WHERE %s", localTable, where))
		wrong := count(t, ch, i, fmt.Sprintf("SELECT count() FROM %s WHERE %s AND connectionKey %% %d != %d", localTable, where, ch.Len(), i))
		if n == 0 {
			t.Errorf("shard %d holds no row of %d connections", i, want)
		}
		if wrong != 0 {
			t.Errorf("shard %d holds %d rows whose connectionKey %% %d is not %d", i, wrong, ch.Len(), i)
		}
		total += n
		per = append(per, n)
	}
	dist := count(t, ch, 1, fmt.Sprintf("SELECT count() FROM %s WHERE %s", table, where))
	if total != dist {
		t.Errorf("shards' local tables hold %v = %d rows, the Distributed table %d", per, total, dist)
	}
	t.Logf("rows per shard: %v (Distributed table: %d)", per, dist)
}
