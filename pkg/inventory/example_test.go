package inventory_test

import (
	"fmt"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/inventory"
)

func ExampleNew() {
	inv, err := inventory.New(inventory.Config{
		Path: "testdata/inventory.yaml", NodeName: "host-a",
	}, prometheus.NewRegistry())
	if err != nil {
		fmt.Println(err)
		return
	}
	// go inv.Run(ctx) would reload the file when it changes.
	tup := flow.NewTuple(netip.MustParseAddr("10.10.0.20"), netip.MustParseAddr("10.10.0.10"), 40000, 8080, flow.ProtoTCP)
	c := flow.Conn{Tuple: tup, OrigDstIP: netip.MustParseAddr("10.96.0.10").As16(), OrigDstPort: 80}
	r := flow.Record{Conn: c}
	inv.Enrich(&r)
	fmt.Println(r.Source.PodName, "->", r.Destination.PodName, r.ServicePortName, r.FlowType, inv.L7Want(&c))
	// Output: client-1 -> web-1 lab/web:http intra-node 3
}
