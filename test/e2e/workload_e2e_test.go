//go:build integration

package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/clickhousetest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The workload columns end to end: a Deployment, its ReplicaSet (owned by
// it) and its pod created through the real kube-apiserver, the real agent
// resolving the pod's workload through its ReplicaSet informer and
// exporting it, the real aggregator writing a real ClickHouse.
func TestWorkloadColumnsFromRealAPIServerInClickHouse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ch := clickhousetest.Start(t)
	cl := setUpCluster(t, ctx)
	agg := agenttest.StartAggregator(t, aggregatorBin, fmt.Sprintf(`aggregatorID: workload-e2e
listen: [tcp://127.0.0.1:0]
shutdownTimeout: 30s
correlation:
  correlationWait: 2s
sinks:
  clickhouse:
    enabled: true
    addr: %s
    database: default
    table: flows
    commitInterval: 200ms
    retryMin: 100ms
    retryMax: 1s
`, ch.Addr))
	agenttest.StartAgent(t, agentBin, fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
  activeTimeout: 30s
  idleTimeout: 30s
  tickInterval: 100ms
export:
  collector: %s
  transport: tcp
  flushInterval: 100ms
  l7DetailElements: true
server:
  listen: 127.0.0.1:0
kubernetes:
  enabled: true
  kubeconfig: %s
`, nodeA, cl.a.NetnsPath, agg.Addr(t, "tcp"), cl.saKubeconfig))

	client, web := cl.pod("client"), cl.pod("web")
	xfer, err := netnstest.SendExactly(client, cl.svc.Addr(), 4000, 1000)
	must(t, err)
	where := fmt.Sprintf("sourceIP = '%s' AND sourceTransportPort = %d AND destinationIP = '%s' AND destinationTransportPort = %d",
		xfer.Local.Addr(), xfer.Local.Port(), web.IPv4, webTarget)
	cols := []string{"sourcePodName", "sourceWorkloadKind", "sourceWorkloadName",
		"destinationPodName", "destinationWorkloadKind", "destinationWorkloadName", "destinationServicePortName"}
	q := "SELECT " + strings.Join(cols, ", ") + " FROM flows WHERE " + where + " FORMAT TabSeparated"
	var out string
	deadline := time.Now().Add(20 * time.Second)
	for {
		if out, err = ch.Query(q); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	rows := strings.Split(strings.TrimSpace(out), "\n")
	if len(rows) != 1 || rows[0] == "" {
		t.Fatalf("rows of %s -> %s: %q, want one", xfer.Local, web.Addr(webTarget), out)
	}
	got := strings.Split(rows[0], "\t")
	want := []string{"client", "", "", "web", "Deployment", "web", "shop/web:http"}
	for i := range cols {
		if i >= len(got) || got[i] != want[i] {
			t.Errorf("%s = %q, want %q (row %q)", cols[i], got[min(i, len(got)-1)], want[i], rows[0])
		}
	}
}
