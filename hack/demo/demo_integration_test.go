//go:build integration

package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/l7e2e"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The agent and aggregator are tested by their own packages; this checks
// the part of the demo that is the demo's own: the node, the Services and
// the traffic, as the node's conntrack table sees them.
func TestDemoTrafficGoesThroughTheServices(t *testing.T) {
	if err := netnstest.CheckPrereqs(); err != nil {
		t.Fatal(err)
	}
	topo, err := buildTopology()
	if topo != nil {
		t.Cleanup(func() {
			if err := topo.close(); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	want, err := topo.driveTraffic()
	if err != nil {
		t.Fatal(err)
	}
	// HTTP GETs, DNS, TLS, TCP transfer, UDP exchange.
	if len(want) != len(httpPaths())+4 {
		t.Fatalf("%d connections, want %d", len(want), len(httpPaths())+4)
	}
	for _, e := range want {
		out, err := topo.node.Conntrack("-L", "-p", flow.ProtoName(e.Proto), "--orig-src", e.Src.Addr().String(), "--sport", fmt.Sprint(e.Src.Port()))
		if err != nil {
			t.Fatal(err)
		}
		line := strings.TrimSpace(string(out))
		orig := fmt.Sprintf("dst=%s sport=%d dport=%d ", e.Service.VIP, e.Src.Port(), e.Service.Port)
		reply := fmt.Sprintf("src=%s dst=%s sport=%d ", e.Dst().Addr(), e.Src.Addr(), e.Dst().Port())
		if !strings.Contains(line, orig) || !strings.Contains(line, reply) {
			t.Errorf("%s: conntrack entry is not the DNAT one:\n%s", e.What, line)
		}
	}
	if got := want[len(want)-2]; got.Sent != tcpUp || got.Received != tcpDown {
		t.Errorf("tcp transfer moved %d/%d bytes", got.Sent, got.Received)
	}
}

// buildBinaries builds the agent, the aggregator and the CLI (the web UI)
// for the demo to run.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/",
		"github.com/flowlens/flowlens/cmd/flowlens-agent", "github.com/flowlens/flowlens/cmd/flowlens-aggregator",
		"github.com/flowlens/flowlens/cmd/flowlens")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// The whole demo, once per sink: every connection it made must have a
// final row read back from the sink, with the Service, both pods and the
// byte counts the client saw; with Suricata (ClickHouse run), the L7
// fields too.
func TestDemoReadsItsTableBackFromTheSink(t *testing.T) {
	if _, err := l7e2e.FindSuricata(); err != nil {
		t.Fatal(err)
	}
	bin := buildBinaries(t)
	for _, tc := range []struct {
		sink string
		noL7 bool
	}{
		{sinkClickHouse, false},
		{sinkJSONL, true},
	} {
		t.Run(tc.sink, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var out bytes.Buffer
			res, err := run(ctx, options{binDir: bin, sink: tc.sink, wait: 45 * time.Second, settle: 20 * time.Second, noL7: tc.noL7, uiPort: 0}, &out)
			if err != nil {
				t.Fatalf("demo failed: %v\n%s", err, out.String())
			}
			t.Logf("demo output:\n%s", out.String())
			if res.sink != tc.sink {
				t.Fatalf("read back from %q, want %q", res.sink, tc.sink)
			}
			if len(res.want) != len(httpPaths())+4 {
				t.Fatalf("%d connections, want %d", len(res.want), len(httpPaths())+4)
			}
			if !tc.noL7 && !res.l7 {
				t.Fatalf("Suricata never captured: no L7 to check\n%s", out.String())
			}
			for _, e := range res.want {
				checkRow(t, e, res.view.latest[e.key()], res.l7)
			}
			// The web UI over the ClickHouse table: its map has an edge
			// per Service the client used, and the URL is printed.
			services := map[string]bool{}
			for _, e := range res.want {
				services[e.Service.Name] = true
			}
			if tc.sink == sinkClickHouse {
				if res.ui == nil || res.ui.edges != len(services) {
					t.Errorf("web UI map: %+v, want %d edges, one per Service used", res.ui, len(services))
				}
				if !strings.Contains(out.String(), "web UI: http://127.0.0.1:") {
					t.Errorf("the demo did not print the web UI's URL:\n%s", out.String())
				}
			} else if res.ui != nil {
				t.Errorf("web UI started without ClickHouse: %+v", res.ui)
			}
		})
	}
}

func checkRow(t *testing.T, e expected, r *row, l7 bool) {
	t.Helper()
	if r == nil {
		t.Errorf("%s: no row in the sink", e.What)
		return
	}
	if !r.ended() {
		t.Errorf("%s: latest row ends %q, want a final one", e.What, endName(r))
	}
	if r.dst() != e.Dst() || r.Str("destinationServiceIP") != e.Service.VIP.String() || r.Num("destinationServicePort") != uint64(e.Service.Port) {
		t.Errorf("%s: row goes to %s via %s, want %s via %s", e.What, r.dst(), service(r), e.Dst(), e.Service.Addr())
	}
	if r.Str("sourcePodName") != "client" || r.Str("destinationPodName") != e.Service.Backend.Name {
		t.Errorf("%s: pods %q -> %q, want client -> %s", e.What, r.Str("sourcePodName"), r.Str("destinationPodName"), e.Service.Backend.Name)
	}
	if r.Str("correlation") != "not-required" || flow.FlowType(r.Num("flowType")) != flow.FlowTypeIntraNode {
		t.Errorf("%s: correlation %q, flow type %s; one node saw both ends", e.What, r.Str("correlation"), flow.FlowType(r.Num("flowType")))
	}
	// Byte counts include IP and transport headers: at least the payload.
	up, upPkts := r.Num("octetTotalCount"), r.Num("packetTotalCount")
	down, downPkts := r.Num("reverseOctetTotalCount"), r.Num("reversePacketTotalCount")
	if up < uint64(e.Sent) || down < uint64(e.Received) || upPkts == 0 || downPkts == 0 {
		t.Errorf("%s: %d bytes/%d packets up, %d/%d down; the client sent %d and received %d payload bytes",
			e.What, up, upPkts, down, downPkts, e.Sent, e.Received)
	}
	if !l7 {
		return
	}
	want := map[uint16]string{webPort: "http", tlsPort: "tls", dnsPort: "dns"}[e.Dst().Port()]
	if e.Service.Backend.Name != "web" || want == "" {
		return
	}
	if r.Str("appProtocolName") != want {
		t.Errorf("%s: appProtocolName %q, want %q (L7 column %q)", e.What, r.Str("appProtocolName"), want, l7Summary(r))
	}
	if want == "http" && !strings.Contains(l7Summary(r), "GET ") {
		t.Errorf("%s: no HTTP transaction in the row: %q", e.What, l7Summary(r))
	}
}
