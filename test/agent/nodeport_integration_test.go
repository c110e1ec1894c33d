//go:build integration

package agent_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// nodePortRules makes node a NodePort the way kube-proxy does for traffic
// from outside: DNAT of the node's address and port to the backend pod,
// then source NAT of that connection to the node's own address, so the
// backend replies through this node. kube-proxy masquerades (the outgoing
// interface's address); the pod veth here has none, so the node address
// is named, with a port range that forces a port other than the client's.
func nodePortRules(family string, node, backend netip.AddrPort, lo, hi uint16) string {
	bracket := func(a netip.Addr) string {
		if a.Is6() {
			return "[" + a.String() + "]"
		}
		return a.String()
	}
	return fmt.Sprintf(`table %[1]s nodeport-test {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		%[1]s daddr %[2]s tcp dport %[3]d dnat to %[4]s
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat %[1]s daddr %[5]s tcp dport %[6]d snat to %[7]s:%[8]d-%[9]d
	}
}
`, family, node.Addr(), node.Port(), backend, backend.Addr(), backend.Port(), bracket(node.Addr()), lo, hi)
}

// replyTuple reads, with conntrack(8), the reply direction of the TCP
// connection from client in node's table: where the kernel sends replies.
var replyTupleRE = regexp.MustCompile(`src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+) .*src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)`)

func replyDst(t *testing.T, node *netnstest.Node, client netip.AddrPort) (src, dst netip.AddrPort) {
	t.Helper()
	line := conntrackLine(t, node, client)
	m := replyTupleRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("conntrack line without two tuples: %s", line)
	}
	ap := func(addr, port string) netip.AddrPort {
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			t.Fatalf("port %q in %s: %v", port, line, err)
		}
		return netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(p))
	}
	return ap(m[5], m[7]), ap(m[6], m[8])
}

// A client outside the node (a pod of another node, routed to this node's
// address) connects to a NodePort; this node DNATs it to its backend pod
// and SNATs it to itself. The kernel's reply tuple then holds the SNAT
// address and port, and the exported record must carry exactly those
// (proxySnatIPv4/IPv6, proxySnatPort), with the client as the source, the
// pod as the destination, the NodePort as the Service address, the bytes
// that were moved and the configured cluster id.
func TestNodePortFromOutsideExportsTheProxySnat(t *testing.T) {
	for _, tc := range []struct {
		name           string
		ipv6           bool
		family         string
		minHdr, maxHdr uint64
	}{
		{"IPv4", false, "ip", 20 + 20, 20 + 60},
		{"IPv6", true, "ip6", 40 + 20, 40 + 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := netnstest.NewNodeT(t, netnstest.Config{Name: "np-node", Index: 1, IPv6: tc.ipv6,
				Pods: []netnstest.PodSpec{{Name: "backend"}}})
			outside := netnstest.NewNodeT(t, netnstest.Config{Name: "np-out", Index: 2, IPv6: tc.ipv6,
				Pods: []netnstest.PodSpec{{Name: "client"}}})
			netnstest.ConnectNodesT(t, node, outside)
			backend := node.Pod("backend")
			srv, err := backend.ListenTCP(8080)
			if err != nil {
				t.Fatal(err)
			}
			nodeAddr, backendAddr := node.NodeIPv4(), backend.Addr(8080)
			if tc.ipv6 {
				nodeAddr, backendAddr = node.NodeIPv6(), backend.Addr6(8080)
			}
			nodePort := netip.AddrPortFrom(nodeAddr, 30080)
			const snatLo, snatHi = 40000, 40999
			rules := filepath.Join(t.TempDir(), "nodeport.nft")
			if err := os.WriteFile(rules, []byte(nodePortRules(tc.family, nodePort, backendAddr, snatLo, snatHi)), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := node.Exec("nft", "-f", rules); err != nil {
				t.Fatalf("nft -f: %v: %s", err, out)
			}

			col := agenttest.StartCollector(t)
			// The configured cluster id goes into every record too.
			const clusterID = "nodeport-test-cluster"
			agenttest.StartAgent(t, agentBin, fmt.Sprintf(`nodeName: %s
clusterID: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
  activeTimeout: 2s
  idleTimeout: 30s
  tickInterval: 100ms
export:
  collector: %s
  transport: tcp
  flushInterval: 200ms
server:
  listen: 127.0.0.1:0
`, node.Name, clusterID, node.NetnsPath, col.Addr))

			const sent, reply = 200_000, 30_000
			xfer, err := netnstest.SendExactly(outside.Pod("client"), nodePort, sent, reply)
			if err != nil {
				t.Fatalf("transfer: %v", err)
			}
			recs := col.WaitFor(t, xfer.Local, flow.ProtoTCP, flow.EndOfFlow, 15*time.Second)

			// What the kernel did, read independently of the agent: the
			// reply tuple, and the peer the backend saw.
			replySrc, snat := replyDst(t, node, xfer.Local)
			if snat.Addr() != nodeAddr || snat.Port() < snatLo || snat.Port() > snatHi || snat == xfer.Local {
				t.Fatalf("conntrack's reply destination %s: not the source NAT to %s:%d-%d the test set up", snat, nodeAddr, snatLo, snatHi)
			}
			if replySrc != backendAddr {
				t.Fatalf("conntrack's reply source %s, want the backend %s", replySrc, backendAddr)
			}
			if peer := srv.Stats().LastPeer; peer != snat {
				t.Errorf("the backend saw the connection from %s, conntrack says %s", peer, snat)
			}

			final := recs[len(recs)-1]
			t.Logf("client %s -> NodePort %s -> backend %s, SNAT %s (conntrack); %d records, final fwd %+v rev %+v",
				xfer.Local, nodePort, backendAddr, snat, len(recs), final.Rec.Fwd, final.Rec.Rev)
			for _, a := range recs {
				if got, ok := a.Rec.ProxySnat(); !ok || got != snat {
					t.Errorf("%s record: proxy SNAT %s (set %v), conntrack's reply tuple says %s", a.Rec.EndReason, got, ok, snat)
				}
			}
			ipIE := "proxySnatIPv4"
			if tc.ipv6 {
				ipIE = "proxySnatIPv6"
			}
			if f, ok := final.Raw.Get(ipIE); !ok || f.Addr != snat.Addr() {
				t.Errorf("raw %s = %+v (present %v), want %s", ipIE, f, ok, snat.Addr())
			}
			if f, ok := final.Raw.Get("proxySnatPort"); !ok || f.Uint != uint64(snat.Port()) {
				t.Errorf("raw proxySnatPort = %+v (present %v), want %d", f, ok, snat.Port())
			}
			if id, ok := final.Str("clusterId"); !ok || id != clusterID || final.Rec.ClusterID != clusterID {
				t.Errorf("clusterId %q (present %v, decoded %q), want the configured %q", id, ok, final.Rec.ClusterID, clusterID)
			}

			r := final.Rec
			if r.Tuple.Src() != xfer.Local.Addr() || r.Tuple.SrcPort != xfer.Local.Port() {
				t.Errorf("source %s:%d, want the client %s", r.Tuple.Src(), r.Tuple.SrcPort, xfer.Local)
			}
			if r.Tuple.Dst() != backendAddr.Addr() || r.Tuple.DstPort != backendAddr.Port() {
				t.Errorf("destination %s:%d, want the backend %s", r.Tuple.Dst(), r.Tuple.DstPort, backendAddr)
			}
			if r.OrigDst() != nodePort.Addr() || r.OrigDstPort != nodePort.Port() {
				t.Errorf("service address %s:%d, want the NodePort %s", r.OrigDst(), r.OrigDstPort, nodePort)
			}

			// Bytes: what moved, counted once. The exchange adds an 8-byte
			// request header; conntrack counts IP and TCP headers.
			if xfer.Sent != sent || xfer.Received != reply || srv.Stats().BytesIn != sent {
				t.Fatalf("moved %d/%d bytes (server got %d), want %d/%d", xfer.Sent, xfer.Received, srv.Stats().BytesIn, sent, reply)
			}
			checkBytes(t, "client->backend", r.Fwd, xfer.Sent+8, tc.minHdr, tc.maxHdr)
			checkBytes(t, "backend->client", r.Rev, xfer.Received, tc.minHdr, tc.maxHdr)
			if fwd, rev := sum(recs); fwd != r.Fwd || rev != r.Rev {
				t.Errorf("deltas sum to %+v / %+v, final totals %+v / %+v", fwd, rev, r.Fwd, r.Rev)
			}
		})
	}
}
