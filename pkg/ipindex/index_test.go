package ipindex

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func at(sec float64) time.Time { return t0.Add(time.Duration(sec * float64(time.Second))) }

func newIndex(t *testing.T, c *clock) *Index {
	t.Helper()
	x, err := New(Config{LocalNode: "node-a", GracePeriod: time.Minute, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, v := range s {
		out = append(out, netip.MustParseAddr(v))
	}
	return out
}

func mustSet(t *testing.T, x *Index, id string, ips []netip.Addr, from time.Time, p *Pod) {
	t.Helper()
	if err := x.SetPod(id, ips, from, p); err != nil {
		t.Fatal(err)
	}
}

func podName(x *Index, ip string, start time.Time) string {
	p, ok := x.LookupPod(netip.MustParseAddr(ip), start)
	if !ok {
		return ""
	}
	return p.Name
}

func TestIPReuseMapsByConnectionStart(t *testing.T) {
	old := &Pod{Name: "old", Namespace: "ns", Node: "node-a"}
	nw := &Pod{Name: "new", Namespace: "ns", Node: "node-a"}
	ip := addrs("10.0.0.5")
	tests := []struct {
		name string
		// events run in order with the clock at the given second
		events []func(x *Index, c *clock)
		start  float64 // connection start, seconds after t0; <0 = unknown
		now    float64
		want   string
	}{
		{
			name: "delete arrives before new pod: connection before the delete maps to old pod",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(10)); x.DeletePod("u-old", at(10)) },
				func(x *Index, c *clock) { c.Set(at(20)); _ = x.SetPod("u-new", ip, at(20), nw) },
			},
			start: 5, now: 25, want: "old",
		},
		{
			name: "delete arrives before new pod: connection after new pod's start maps to new pod",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(10)); x.DeletePod("u-old", at(10)) },
				func(x *Index, c *clock) { c.Set(at(20)); _ = x.SetPod("u-new", ip, at(20), nw) },
			},
			start: 21, now: 25, want: "new",
		},
		{
			name: "connection in the gap between delete and new pod maps to nobody",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(10)); x.DeletePod("u-old", at(10)) },
				func(x *Index, c *clock) { c.Set(at(20)); _ = x.SetPod("u-new", ip, at(20), nw) },
			},
			start: 15, now: 25, want: "",
		},
		{
			name: "new pod seen before old pod's delete: new pod's start ends the old interval",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(20)); _ = x.SetPod("u-new", ip, at(12), nw) },
				func(x *Index, c *clock) { c.Set(at(21)); x.DeletePod("u-old", at(21)) },
			},
			start: 15, now: 25, want: "new",
		},
		{
			name: "new pod seen before old pod's delete: old connections still map to old pod",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(20)); _ = x.SetPod("u-new", ip, at(12), nw) },
				func(x *Index, c *clock) { c.Set(at(21)); x.DeletePod("u-old", at(21)) },
			},
			start: 11, now: 25, want: "old",
		},
		{
			name: "late update of the old pod does not take the IP back",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(20)); _ = x.SetPod("u-new", ip, at(12), nw) },
				func(x *Index, c *clock) { c.Set(at(21)); _ = x.SetPod("u-old", ip, at(0), old) },
			},
			start: 22, now: 25, want: "new",
		},
		{
			name: "first holder also covers connections stamped before its creation (clock skew)",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(10)); _ = x.SetPod("u-old", ip, at(10), old) },
			},
			start: 9, now: 12, want: "old",
		},
		{
			name: "connection started after the only holder was deleted maps to nobody",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(10)); x.DeletePod("u-old", at(10)) },
			},
			start: 11, now: 12, want: "",
		},
		{
			name: "unknown start within grace period after delete maps to deleted pod",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(10)); x.DeletePod("u-old", at(10)) },
			},
			start: -1, now: 60, want: "old",
		},
		{
			name: "unknown start after grace period maps to nobody",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(10)); x.DeletePod("u-old", at(10)) },
			},
			start: -1, now: 71, want: "",
		},
		{
			name: "unknown start maps to the current holder",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(20)); _ = x.SetPod("u-new", ip, at(12), nw) },
			},
			start: -1, now: 25, want: "new",
		},
		{
			name: "after the grace period an old connection maps to nobody, not to the new holder",
			events: []func(*Index, *clock){
				func(x *Index, c *clock) { c.Set(at(0)); _ = x.SetPod("u-old", ip, at(0), old) },
				func(x *Index, c *clock) { c.Set(at(10)); _ = x.SetPod("u-new", ip, at(10), nw) },
				func(x *Index, c *clock) { c.Set(at(200)); x.DeletePod("u-other", at(200)) },
			},
			start: 5, now: 200, want: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{}
			x := newIndex(t, c)
			for _, ev := range tt.events {
				ev(x, c)
			}
			c.Set(at(tt.now))
			var start time.Time
			if tt.start >= 0 {
				start = at(tt.start)
			}
			if got := podName(x, "10.0.0.5", start); got != tt.want {
				t.Errorf("pod at start %v = %q, want %q", tt.start, got, tt.want)
			}
		})
	}
}

func TestPodReleasingAnIPMidLifeEndsItsInterval(t *testing.T) {
	c := &clock{t: at(0)}
	x := newIndex(t, c)
	p := &Pod{Name: "job-pod", Namespace: "ns", Node: "node-a"}
	mustSet(t, x, "u1", addrs("10.0.0.7"), at(0), p)
	c.Set(at(30))
	mustSet(t, x, "u1", nil, time.Time{}, p) // e.g. phase Succeeded
	if got := podName(x, "10.0.0.7", at(10)); got != "job-pod" {
		t.Errorf("before release: got %q, want job-pod", got)
	}
	if got := podName(x, "10.0.0.7", at(31)); got != "" {
		t.Errorf("after release: got %q, want nobody", got)
	}
}

func TestInventoryEntryRemovedAndAddedBackHoldsItsIPAgain(t *testing.T) {
	c := &clock{t: at(0)}
	x := newIndex(t, c)
	p := &Pod{Name: "vm", Namespace: "lab"}
	mustSet(t, x, "lab/vm", addrs("192.0.2.1"), time.Time{}, p)
	c.Set(at(5))
	x.DeletePod("lab/vm", time.Time{})
	c.Set(at(10))
	mustSet(t, x, "lab/vm", addrs("192.0.2.1"), time.Time{}, p)
	if got := podName(x, "192.0.2.1", at(11)); got != "vm" {
		t.Errorf("got %q, want vm", got)
	}
}

func TestReAddedEntryStillReleasesItsIPAfterThePurgeOfItsOldInterval(t *testing.T) {
	c := &clock{t: at(0)}
	x := newIndex(t, c)
	p := &Pod{Name: "vm", Namespace: "lab"}
	mustSet(t, x, "lab/vm", addrs("192.0.2.1"), time.Time{}, p)
	c.Set(at(5))
	x.DeletePod("lab/vm", time.Time{})
	c.Set(at(10))
	mustSet(t, x, "lab/vm", addrs("192.0.2.1"), time.Time{}, p)
	c.Set(at(100)) // the first interval is now past the grace period
	x.DeleteHost("unrelated")
	mustSet(t, x, "other", addrs("192.0.2.99"), time.Time{}, p) // a writer: runs the purge
	x.DeletePod("lab/vm", time.Time{})
	if got := podName(x, "192.0.2.1", at(101)); got != "" {
		t.Errorf("after the second removal: %q, want nobody", got)
	}
}

func tcpConn(src, dst string, sport, dport uint16, start time.Time) flow.Conn {
	t := flow.NewTuple(netip.MustParseAddr(src), netip.MustParseAddr(dst), sport, dport, flow.ProtoTCP)
	c := flow.Conn{Tuple: t, OrigDstIP: t.DstIP, OrigDstPort: t.DstPort}
	if !start.IsZero() {
		c.StartNanos = start.UnixNano()
	}
	return c
}

func dnat(c flow.Conn, vip string, port uint16) flow.Conn {
	c.OrigDstIP = netip.MustParseAddr(vip).As16()
	c.OrigDstPort = port
	return c
}

// fixture: two local pods, one remote pod, two nodes, a Service with a
// ClusterIP and endpoints.
func fixture(t *testing.T) (*Index, *clock) {
	t.Helper()
	c := &clock{t: at(0)}
	x := newIndex(t, c)
	mustSet(t, x, "a", addrs("10.1.0.1"), at(0), &Pod{Name: "client", Namespace: "app", Node: "node-a", Labels: `{"app":"client"}`})
	mustSet(t, x, "b", addrs("10.1.0.2"), at(0), &Pod{Name: "server", Namespace: "app", Node: "node-a"})
	mustSet(t, x, "c", addrs("10.2.0.3", "fd00::3"), at(0), &Pod{Name: "remote", Namespace: "app", Node: "node-b"})
	x.SetHost("node/node-a", "node-a", addrs("172.18.0.2"))
	x.SetHost("node/node-b", "node-b", addrs("172.18.0.3"))
	x.SetService("app/web", addrs("10.96.0.10"), []ServicePort{
		{Port: 80, Proto: flow.ProtoTCP, Name: "app/web:http"},
		{Port: 53, Proto: flow.ProtoUDP, Name: "app/web:dns"},
	})
	x.SetEndpoints("app/web-abc", []EndpointPort{
		{IP: netip.MustParseAddr("10.1.0.2"), Port: 8080, Proto: flow.ProtoTCP, Name: "app/web:http"},
	})
	return x, c
}

func TestEnrich(t *testing.T) {
	tests := []struct {
		name    string
		conn    flow.Conn
		src     flow.Endpoint
		dst     flow.Endpoint
		svc     string
		cluster bool
		ft      flow.FlowType
	}{
		{
			name: "pod to local pod through ClusterIP is intra-node with service port name",
			conn: dnat(tcpConn("10.1.0.1", "10.1.0.2", 40000, 8080, at(1)), "10.96.0.10", 80),
			src:  flow.Endpoint{PodName: "client", PodNamespace: "app", NodeName: "node-a", Labels: `{"app":"client"}`},
			dst:  flow.Endpoint{PodName: "server", PodNamespace: "app", NodeName: "node-a"},
			svc:  "app/web:http", cluster: true, ft: flow.FlowTypeIntraNode,
		},
		{
			name: "ClusterIP with an unknown port sets the flag but no port name",
			conn: dnat(tcpConn("10.1.0.1", "10.1.0.2", 40000, 8080, at(1)), "10.96.0.10", 443),
			src:  flow.Endpoint{PodName: "client", PodNamespace: "app", NodeName: "node-a", Labels: `{"app":"client"}`},
			dst:  flow.Endpoint{PodName: "server", PodNamespace: "app", NodeName: "node-a"},
			svc:  "", cluster: true, ft: flow.FlowTypeIntraNode,
		},
		{
			name: "NodePort DNAT names the service from the endpoint",
			conn: dnat(tcpConn("198.51.100.9", "10.1.0.2", 40000, 8080, at(1)), "172.18.0.2", 30080),
			dst:  flow.Endpoint{PodName: "server", PodNamespace: "app", NodeName: "node-a"},
			svc:  "app/web:http", ft: flow.FlowTypeFromExternal,
		},
		{
			name: "direct pod to endpoint without DNAT is not a service flow",
			conn: tcpConn("10.1.0.1", "10.1.0.2", 40000, 8080, at(1)),
			src:  flow.Endpoint{PodName: "client", PodNamespace: "app", NodeName: "node-a", Labels: `{"app":"client"}`},
			dst:  flow.Endpoint{PodName: "server", PodNamespace: "app", NodeName: "node-a"},
			ft:   flow.FlowTypeIntraNode,
		},
		{
			name: "pod to pod on another node is inter-node",
			conn: tcpConn("10.1.0.1", "10.2.0.3", 40000, 80, at(1)),
			src:  flow.Endpoint{PodName: "client", PodNamespace: "app", NodeName: "node-a", Labels: `{"app":"client"}`},
			dst:  flow.Endpoint{PodName: "remote", PodNamespace: "app", NodeName: "node-b"},
			ft:   flow.FlowTypeInterNode,
		},
		{
			name: "IPv6 pod address resolves like IPv4",
			conn: tcpConn("fd00::3", "10.1.0.2", 40000, 80, at(1)),
			src:  flow.Endpoint{PodName: "remote", PodNamespace: "app", NodeName: "node-b"},
			dst:  flow.Endpoint{PodName: "server", PodNamespace: "app", NodeName: "node-a"},
			ft:   flow.FlowTypeInterNode,
		},
		{
			name: "pod to external address is to-external",
			conn: tcpConn("10.1.0.1", "203.0.113.7", 40000, 443, at(1)),
			src:  flow.Endpoint{PodName: "client", PodNamespace: "app", NodeName: "node-a", Labels: `{"app":"client"}`},
			ft:   flow.FlowTypeToExternal,
		},
		{
			name: "external to local pod is from-external",
			conn: tcpConn("203.0.113.7", "10.1.0.2", 40000, 8080, at(1)),
			dst:  flow.Endpoint{PodName: "server", PodNamespace: "app", NodeName: "node-a"},
			ft:   flow.FlowTypeFromExternal,
		},
		{
			name: "local node to local pod is intra-node and names the node",
			conn: tcpConn("172.18.0.2", "10.1.0.2", 40000, 8080, at(1)),
			src:  flow.Endpoint{NodeName: "node-a"},
			dst:  flow.Endpoint{PodName: "server", PodNamespace: "app", NodeName: "node-a"},
			ft:   flow.FlowTypeIntraNode,
		},
		{
			name: "local pod to remote node is inter-node",
			conn: tcpConn("10.1.0.1", "172.18.0.3", 40000, 10250, at(1)),
			src:  flow.Endpoint{PodName: "client", PodNamespace: "app", NodeName: "node-a", Labels: `{"app":"client"}`},
			dst:  flow.Endpoint{NodeName: "node-b"},
			ft:   flow.FlowTypeInterNode,
		},
		{
			name: "external to external is unknown",
			conn: tcpConn("203.0.113.7", "203.0.113.8", 1, 2, at(1)),
			ft:   flow.FlowTypeUnknown,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x, _ := fixture(t)
			r := flow.Record{Conn: tt.conn, ServicePortName: "stale", ClusterIP: !tt.cluster}
			x.Enrich(&r)
			if r.Source != tt.src {
				t.Errorf("Source = %+v, want %+v", r.Source, tt.src)
			}
			if r.Destination != tt.dst {
				t.Errorf("Destination = %+v, want %+v", r.Destination, tt.dst)
			}
			if r.ServicePortName != tt.svc || r.ClusterIP != tt.cluster {
				t.Errorf("service = %q/%v, want %q/%v", r.ServicePortName, r.ClusterIP, tt.svc, tt.cluster)
			}
			if r.FlowType != tt.ft {
				t.Errorf("FlowType = %v, want %v", r.FlowType, tt.ft)
			}
		})
	}
}

func TestEndpointBehindTwoServicesMapsToTheSmallestNameWhateverTheOrder(t *testing.T) {
	for _, order := range [][]string{{"b", "a"}, {"a", "b"}} {
		t.Run(strings.Join(order, ","), func(t *testing.T) {
			x, _ := fixture(t)
			x.DeleteEndpoints("app/web-abc")
			for _, s := range order {
				x.SetEndpoints("slice-"+s, []EndpointPort{{IP: netip.MustParseAddr("10.1.0.2"), Port: 8080, Proto: flow.ProtoTCP, Name: "app/" + s + ":http"}})
			}
			r := flow.Record{Conn: dnat(tcpConn("198.51.100.9", "10.1.0.2", 1, 8080, at(1)), "172.18.0.2", 30080)}
			x.Enrich(&r)
			if r.ServicePortName != "app/a:http" {
				t.Errorf("got %q, want app/a:http", r.ServicePortName)
			}
			x.DeleteEndpoints("slice-a")
			x.Enrich(&r)
			if r.ServicePortName != "app/b:http" {
				t.Errorf("after deleting slice-a got %q, want app/b:http", r.ServicePortName)
			}
		})
	}
}

func TestServiceRecreatedWithSameClusterIPSurvivesOldDelete(t *testing.T) {
	x, _ := fixture(t)
	x.SetService("app/web2", addrs("10.96.0.10"), []ServicePort{{Port: 80, Proto: flow.ProtoTCP, Name: "app/web2:http"}})
	x.DeleteService("app/web")
	r := flow.Record{Conn: dnat(tcpConn("10.1.0.1", "10.1.0.2", 1, 8080, at(1)), "10.96.0.10", 80)}
	x.Enrich(&r)
	if r.ServicePortName != "app/web2:http" || !r.ClusterIP {
		t.Errorf("got %q/%v, want app/web2:http/true", r.ServicePortName, r.ClusterIP)
	}
}

func TestHostIPSharedByNodeAndHostNetworkPodStaysUntilBothGo(t *testing.T) {
	x, _ := fixture(t)
	x.SetHost("pod/hn", "node-a", addrs("172.18.0.2"))
	x.DeleteHost("node/node-a")
	r := flow.Record{Conn: tcpConn("172.18.0.2", "203.0.113.1", 1, 2, at(1))}
	x.Enrich(&r)
	if r.Source.NodeName != "node-a" {
		t.Fatalf("with host-network pod left: Source = %+v, want node-a", r.Source)
	}
	x.DeleteHost("pod/hn")
	x.Enrich(&r)
	if r.Source != (flow.Endpoint{}) {
		t.Errorf("after both gone: Source = %+v, want empty", r.Source)
	}
}

func TestL7Want(t *testing.T) {
	tests := []struct {
		name     string
		srcMode  L7Mode
		dstMode  L7Mode
		srcNS    L7Mode
		dstNS    L7Mode
		external bool
		want     flow.L7Want
	}{
		{name: "no annotations want nothing", want: flow.L7None},
		{name: "egress on source pod wants source", srcMode: L7Egress, want: flow.L7Source},
		{name: "egress on destination pod wants nothing", dstMode: L7Egress, want: flow.L7None},
		{name: "ingress on destination pod wants destination", dstMode: L7Ingress, want: flow.L7Destination},
		{name: "ingress on source pod wants nothing", srcMode: L7Ingress, want: flow.L7None},
		{name: "both on both pods wants both ends", srcMode: L7Both, dstMode: L7Both, want: flow.L7Source | flow.L7Destination},
		{name: "namespace both applies to both pods", srcNS: L7Both, dstNS: L7Both, want: flow.L7Source | flow.L7Destination},
		{name: "pod annotation overrides namespace", srcMode: L7Ingress, srcNS: L7Egress, want: flow.L7None},
		{name: "external destination never opts in", srcMode: L7Both, external: true, want: flow.L7Source},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t: at(0)}
			x := newIndex(t, c)
			mustSet(t, x, "s", addrs("10.1.0.1"), at(0), &Pod{Name: "s", Namespace: "ns-s", Node: "node-a", L7: tt.srcMode})
			mustSet(t, x, "d", addrs("10.1.0.2"), at(0), &Pod{Name: "d", Namespace: "ns-d", Node: "node-a", L7: tt.dstMode})
			x.SetNamespaceL7("ns-s", tt.srcNS)
			x.SetNamespaceL7("ns-d", tt.dstNS)
			dst := "10.1.0.2"
			if tt.external {
				dst = "203.0.113.1"
			}
			conn := tcpConn("10.1.0.1", dst, 1, 2, at(1))
			if got := x.L7Want(&conn); got != tt.want {
				t.Errorf("L7Want = %b, want %b", got, tt.want)
			}
		})
	}
}

func TestParseL7Mode(t *testing.T) {
	tests := []struct {
		in      string
		want    L7Mode
		wantErr bool
	}{
		{"ingress", L7Ingress, false},
		{"Egress", L7Egress, false},
		{" BOTH ", L7Both, false},
		{"", L7Unset, true},
		{"all", L7Unset, true},
		{"in", L7Unset, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseL7Mode(tt.in)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("ParseL7Mode(%q) = %v, %v; want %v, err=%v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestWorkloadFollowsOwnerAliases(t *testing.T) {
	x, _ := fixture(t)
	mustSet(t, x, "d", addrs("10.1.0.9"), at(0), &Pod{Name: "web-7d9-abcde", Namespace: "app", OwnerKind: "ReplicaSet", OwnerName: "web-7d9"})
	x.SetOwner("ReplicaSet", "app", "web-7d9", "Deployment", "web")
	mustSet(t, x, "r", addrs("10.1.0.10"), at(0), &Pod{Name: "orphan-rs-x", Namespace: "app", OwnerKind: "ReplicaSet", OwnerName: "orphan-rs"})
	// ReplicaSet not (yet) known, but the pod carries the Deployment
	// controller's pod-template-hash: the Deployment is the name minus it.
	mustSet(t, x, "h", addrs("10.1.0.11"), at(0), &Pod{Name: "api-5c6f8b-q", Namespace: "app", OwnerKind: "ReplicaSet", OwnerName: "api-5c6f8b", TemplateHashLen: 6})
	// A ReplicaSet known to have no controller (orphaned from its deleted
	// Deployment: its pods keep the label) is the workload itself.
	mustSet(t, x, "o", addrs("10.1.0.14"), at(0), &Pod{Name: "old-5c6f8b-q", Namespace: "app", OwnerKind: "ReplicaSet", OwnerName: "old-5c6f8b", TemplateHashLen: 6})
	x.SetOwner("ReplicaSet", "app", "old-5c6f8b", "", "")
	// A hash length that does not fit the name is ignored.
	mustSet(t, x, "b", addrs("10.1.0.12"), at(0), &Pod{Name: "x-q", Namespace: "app", OwnerKind: "ReplicaSet", OwnerName: "x", TemplateHashLen: 6})
	mustSet(t, x, "s", addrs("10.1.0.13"), at(0), &Pod{Name: "db-0", Namespace: "app", OwnerKind: "StatefulSet", OwnerName: "db"})
	tests := []struct{ ip, kind, name string }{
		{"10.1.0.9", "Deployment", "web"},
		{"10.1.0.10", "ReplicaSet", "orphan-rs"},
		{"10.1.0.11", "Deployment", "api"},
		{"10.1.0.12", "ReplicaSet", "x"},
		{"10.1.0.13", "StatefulSet", "db"},
		{"10.1.0.14", "ReplicaSet", "old-5c6f8b"},
		// A bare pod has no workload: it is named by the pod alone.
		{"10.1.0.1", "", ""},
	}
	for _, tt := range tests {
		p, ok := x.LookupPod(netip.MustParseAddr(tt.ip), at(1))
		if !ok || p.WorkloadKind != tt.kind || p.WorkloadName != tt.name {
			t.Errorf("%s: workload = %s/%s (found %v), want %s/%s", tt.ip, p.WorkloadKind, p.WorkloadName, ok, tt.kind, tt.name)
		}
	}
	// Enrich exports the same workload for both ends.
	c := flow.NewTuple(netip.MustParseAddr("10.1.0.11"), netip.MustParseAddr("10.1.0.9"), 40000, 80, flow.ProtoTCP)
	r := flow.Record{Conn: flow.Conn{Tuple: c, OrigDstIP: c.DstIP, OrigDstPort: c.DstPort, StartNanos: at(1).UnixNano()}}
	x.Enrich(&r)
	if r.Source.WorkloadKind != "Deployment" || r.Source.WorkloadName != "api" ||
		r.Destination.WorkloadKind != "Deployment" || r.Destination.WorkloadName != "web" {
		t.Errorf("Enrich workloads = %s/%s -> %s/%s, want Deployment/api -> Deployment/web",
			r.Source.WorkloadKind, r.Source.WorkloadName, r.Destination.WorkloadKind, r.Destination.WorkloadName)
	}
	// The ReplicaSet's owner arriving later takes over from the fallback.
	x.SetOwner("ReplicaSet", "app", "api-5c6f8b", "Deployment", "api-v2")
	if p, _ := x.LookupPod(netip.MustParseAddr("10.1.0.11"), at(1)); p.WorkloadName != "api-v2" {
		t.Errorf("after SetOwner: workload %s/%s, want Deployment/api-v2", p.WorkloadKind, p.WorkloadName)
	}
	// Once the ReplicaSet is deleted, the fallback applies again.
	x.DeleteOwner("ReplicaSet", "app", "api-5c6f8b")
	if p, _ := x.LookupPod(netip.MustParseAddr("10.1.0.11"), at(1)); p.WorkloadKind != "Deployment" || p.WorkloadName != "api" {
		t.Errorf("after DeleteOwner: workload %s/%s, want Deployment/api", p.WorkloadKind, p.WorkloadName)
	}
}

func TestNewRejectsNegativeGracePeriod(t *testing.T) {
	if _, err := New(Config{GracePeriod: -time.Second}); err == nil || !strings.Contains(err.Error(), "GracePeriod") {
		t.Errorf("err = %v, want one naming GracePeriod", err)
	}
}

func TestEnrichAndL7WantDoNotAllocate(t *testing.T) {
	x, _ := fixture(t)
	r := flow.Record{Conn: dnat(tcpConn("10.1.0.1", "10.1.0.2", 40000, 8080, at(1)), "10.96.0.10", 80)}
	if n := testing.AllocsPerRun(1000, func() { x.Enrich(&r) }); n != 0 {
		t.Errorf("Enrich allocates %v times per call, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() { _ = x.L7Want(&r.Conn) }); n != 0 {
		t.Errorf("L7Want allocates %v times per call, want 0", n)
	}
}

func TestNamespaceOf(t *testing.T) {
	x, c := fixture(t)
	tests := []struct{ ip, want string }{
		{"10.1.0.1", "app"},
		{"fd00::3", "app"},
		{"172.18.0.2", ""}, // a node
		{"203.0.113.1", ""},
	}
	for _, tt := range tests {
		if got := x.NamespaceOf(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("NamespaceOf(%s) = %q, want %q", tt.ip, got, tt.want)
		}
	}
	c.Set(at(10))
	x.DeletePod("a", time.Time{})
	c.Set(at(10 + 61))
	if got := x.NamespaceOf(netip.MustParseAddr("10.1.0.1")); got != "" {
		t.Errorf("after the grace period: NamespaceOf = %q, want empty", got)
	}
	if n := testing.AllocsPerRun(100, func() { _ = x.NamespaceOf(netip.MustParseAddr("10.1.0.2")) }); n != 0 {
		t.Errorf("NamespaceOf allocates %v times", n)
	}
}

func TestLookupsDuringWritesSeeWholePods(t *testing.T) {
	x, _ := fixture(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := flow.Record{Conn: tcpConn("10.9.0.1", "10.1.0.2", 1, 8080, time.Time{})}
			for {
				select {
				case <-stop:
					return
				default:
				}
				x.Enrich(&r)
				// A pod is either absent or complete: name and namespace
				// come from the same SetPod.
				if r.Source.PodName != "" && r.Source.PodNamespace != "ns-"+r.Source.PodName {
					t.Errorf("torn read: %+v", r.Source)
					return
				}
			}
		}()
	}
	for i := 0; i < 2000; i++ {
		name := fmt.Sprintf("p%d", i%7)
		if err := x.SetPod(fmt.Sprintf("u%d", i), addrs("10.9.0.1"), time.Time{}, &Pod{Name: name, Namespace: "ns-" + name}); err != nil {
			t.Fatal(err)
		}
		x.DeletePod(fmt.Sprintf("u%d", i), time.Time{})
		x.SetNamespaceL7("ns-"+name, L7Mode(i%4))
	}
	close(stop)
	wg.Wait()
}
