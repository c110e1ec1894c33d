package ipindex_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipindex"
)

// An IP handed from a deleted pod to a new one: each connection maps to the
// pod that had the address when the connection started.
func ExampleIndex_Enrich() {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	x, _ := ipindex.New(ipindex.Config{LocalNode: "node-a"})
	ip := []netip.Addr{netip.MustParseAddr("10.244.0.9")}
	_ = x.SetPod("uid-old", ip, t0, &ipindex.Pod{Name: "web-old", Namespace: "shop", Node: "node-a"})
	x.DeletePod("uid-old", t0.Add(10*time.Second))
	_ = x.SetPod("uid-new", ip, t0.Add(20*time.Second), &ipindex.Pod{Name: "web-new", Namespace: "shop", Node: "node-a"})

	for _, start := range []time.Duration{5 * time.Second, 25 * time.Second} {
		tup := flow.NewTuple(ip[0], netip.MustParseAddr("203.0.113.7"), 40000, 443, flow.ProtoTCP)
		r := flow.Record{Conn: flow.Conn{Tuple: tup, OrigDstIP: tup.DstIP, OrigDstPort: 443, StartNanos: t0.Add(start).UnixNano()}}
		x.Enrich(&r)
		fmt.Printf("started at +%v: %s/%s, %v\n", start, r.Source.PodNamespace, r.Source.PodName, r.FlowType)
	}
	// Output:
	// started at +5s: shop/web-old, to-external
	// started at +25s: shop/web-new, to-external
}
