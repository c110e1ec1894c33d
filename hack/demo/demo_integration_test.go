//go:build integration

package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The agent and collector are tested by their own packages; this checks
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
