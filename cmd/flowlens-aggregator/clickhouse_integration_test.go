//go:build integration

package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

func clickhouseConfig(t *testing.T, chAddr string, listen ...string) *aggregatorconfig.Config {
	cfg := testConfig(t, listen...)
	cfg.Sinks.JSONL.Enabled = false
	cfg.Sinks.ClickHouse.Enabled, cfg.Sinks.ClickHouse.Addr = true, chAddr
	q := aggregatorconfig.DefaultQueue()
	q.CommitInterval = aggregatorconfig.Duration(200 * time.Millisecond)
	q.RetryMin = aggregatorconfig.Duration(100 * time.Millisecond)
	q.RetryMax = aggregatorconfig.Duration(2 * time.Second)
	q.FlushTimeout = aggregatorconfig.Duration(60 * time.Second)
	cfg.Sinks.ClickHouse.Queue = q
	return cfg
}

func chQuery(t *testing.T, s *clickhousetest.Server, q string) string {
	t.Helper()
	out, err := s.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func TestIPFIXFromTwoAgentsLandsInClickHouseCorrelated(t *testing.T) {
	ch := clickhousetest.Start(t)
	ra := startAggregator(t, clickhouseConfig(t, ch.Addr, "tcp://127.0.0.1:0"))
	addr := ra.addr(t, "tcp")
	nodeA := startAgent(t, addr, ipfixexport.TCP, 1)
	nodeB := startAgent(t, addr, ipfixexport.TCP, 2)
	const n = 200
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	for i := 0; i < n; i++ {
		src, dst := halves(i, start)
		if i%2 == 0 { // both arrival orders
			nodeA.export(t, src)
			nodeB.export(t, dst)
		} else {
			nodeB.export(t, dst)
			nodeA.export(t, src)
		}
	}
	lone, _ := halves(n, start)
	nodeA.export(t, lone)
	for i := 0; i < 10; i++ {
		nodeB.export(t, intraNode(i, start))
	}
	ra.capture.waitFor(t, n+11, 30*time.Second)
	nodeA.stop()
	nodeB.stop()
	ra.stop(t) // graceful: the sink flushes into ClickHouse

	for _, tc := range []struct {
		name, query, want string
	}{
		{"every connection is one row", "SELECT count() FROM flows", strconv.Itoa(n + 11)},
		{"inter-node rows carry both pods", "SELECT count() FROM flows WHERE correlation = 'correlated' AND sourcePodName LIKE 'client-%' AND destinationPodName = 'server' AND destinationNodeName = 'node-b' AND sourceNodeName = 'node-a'", strconv.Itoa(n)},
		{"per-node counters from each side", "SELECT count() FROM flows WHERE correlation = 'correlated' AND packetTotalCountFromSourceNode = 10 AND packetTotalCountFromDestinationNode = 9 AND sourceExporter != destinationExporter", strconv.Itoa(n)},
		{"L7 from the client's node survives the empty half", "SELECT count() FROM flows WHERE appProtocolName = 'http' AND httpVals LIKE '{\"0\":\"GET /c%'", strconv.Itoa(n + 1)},
		{"DNS from one node and TLS from the other both kept", "SELECT count() FROM flows WHERE correlation = 'correlated' AND dnsQueryName = 'web.ns-b.svc' AND tlsServerName = 'server.example'", strconv.Itoa(n)},
		{"service kept from the source node", "SELECT count() FROM flows WHERE destinationServicePortName = 'ns-b/web:http' AND destinationClusterIP = '10.96.0.10' AND destinationServicePort = 80", strconv.Itoa(n + 1)},
		{"lone half stored flagged", "SELECT sourcePodName, destinationPodName FROM flows WHERE correlation = 'unmatched'", lone.Source.PodName + "\t"},
		{"intra-node rows pass through", "SELECT count() FROM flows WHERE correlation = 'not-required' AND flowType = 1 AND sourceNodeName = 'node-c'", "10"},
		{"aggregator identity stored", "SELECT DISTINCT aggregator FROM flows", "test-agg"},
		{"health of both nodes merged", "SELECT tcpRttMinMicroseconds, tcpRttAvgMicroseconds, tcpRttMaxMicroseconds, tcpRttSampleCount, " +
			"tcpRetransmitDeltaCount, reverseTcpRetransmitDeltaCount, tcpResetDeltaCount, reverseTcpResetDeltaCount, tcpEstablishMicroseconds, " +
			"tcpZeroWindowDeltaCount, droppedPacketDeltaCount, reverseDroppedPacketDeltaCount, packetDropReason, destinationDnsName, count() " +
			"FROM flows WHERE correlation = 'correlated' GROUP BY tcpRttMinMicroseconds, tcpRttAvgMicroseconds, tcpRttMaxMicroseconds, tcpRttSampleCount, " +
			"tcpRetransmitDeltaCount, reverseTcpRetransmitDeltaCount, tcpResetDeltaCount, reverseTcpResetDeltaCount, tcpEstablishMicroseconds, " +
			"tcpZeroWindowDeltaCount, droppedPacketDeltaCount, reverseDroppedPacketDeltaCount, packetDropReason, destinationDnsName",
			fmt.Sprintf("%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\tweb.ns-b.svc.cluster.local\t%d",
				healthMerged.RTTMinMicros, healthMerged.RTTAvgMicros, healthMerged.RTTMaxMicros, healthMerged.RTTSamples,
				healthMerged.FwdRetransmits, healthMerged.RevRetransmits, healthMerged.FwdResets, healthMerged.RevResets,
				healthMerged.EstablishMicros, healthMerged.ZeroWindows, healthMerged.FwdDrops, healthMerged.RevDrops,
				healthMerged.DropReason, n)},
		{"lone half keeps its own health", "SELECT tcpRttAvgMicroseconds, tcpRttSampleCount, droppedPacketDeltaCount, packetDropReason FROM flows WHERE correlation = 'unmatched'",
			"300\t3\t4\tNETFILTER_DROP"},
		{"no health where none was measured", "SELECT count() FROM flows WHERE correlation = 'not-required' AND tcpRttSampleCount = 0 AND droppedPacketDeltaCount = 0 AND destinationDnsName = ''", "10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := chQuery(t, ch, tc.query); got != strings.TrimSpace(tc.want) {
				t.Errorf("%s\n got %q, want %q", tc.query, got, tc.want)
			}
		})
	}
}

// ClickHouse dies for ~20 s under steady input and comes back: the sink
// buffers, retries, and every record is stored exactly once.
func TestClickHouseOutageLosesAndDuplicatesNothing(t *testing.T) {
	ch := clickhousetest.Start(t)
	ra := startAggregator(t, clickhouseConfig(t, ch.Addr, "tcp://127.0.0.1:0"))
	agentA := startAgent(t, ra.addr(t, "tcp"), ipfixexport.TCP, 1)
	start := time.Now().Add(-time.Minute).Truncate(time.Second)

	const rate, seconds = 500, 32
	killAt, restartAt := 4*time.Second, 24*time.Second
	began := time.Now()
	killed, restarted := false, false
	sent := 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Since(began) < seconds*time.Second {
		<-tick.C
		for i := 0; i < rate/10; i++ {
			agentA.export(t, intraNode(sent, start))
			sent++
		}
		switch el := time.Since(began); {
		case !killed && el >= killAt:
			ch.Kill()
			killed = true
			t.Logf("ClickHouse killed after %d records", sent)
		case killed && !restarted && el >= restartAt:
			if err := ch.Start(); err != nil {
				t.Fatalf("restart ClickHouse: %v", err)
			}
			restarted = true
			t.Logf("ClickHouse restarted after %d records", sent)
		}
	}
	ra.capture.waitFor(t, sent, 30*time.Second)
	agentA.stop()
	ra.stop(t)

	got := chQuery(t, ch, "SELECT count(), uniqExact(sourceIP, sourceTransportPort, destinationIP) FROM flows")
	want := strconv.Itoa(sent) + "\t" + strconv.Itoa(sent)
	if got != want {
		t.Errorf("rows, distinct connections = %q, want %q (no loss, no duplicates)", got, want)
	}
	if r := counterSum(t, ra.reg, "flowlens_aggregator_sink_write_retries_total"); r == 0 {
		t.Errorf("no retries counted across a 20 s outage")
	}
	if d := counterSum(t, ra.reg, "flowlens_aggregator_sink_records_dropped_total"); d != 0 {
		t.Errorf("%v records dropped within the buffer bound", d)
	}
}
