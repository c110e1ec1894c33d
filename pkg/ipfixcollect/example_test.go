package ipfixcollect_test

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
)

// A collector on a free port receiving one record from an exporter, as
// flow.Record (what the aggregator uses) and as named fields.
func Example() {
	col, err := ipfixcollect.New(ipfixcollect.Config{Network: ipfixcollect.TCP, Address: "127.0.0.1:0"}, nil)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	exp, err := ipfixexport.New(ipfixexport.Config{Address: col.Addr().String(), Transport: ipfixexport.TCP, FlushInterval: 10 * time.Millisecond}, nil)
	if err != nil {
		panic(err)
	}
	go func() { _ = exp.Run(ctx) }()
	r := flow.Record{Conn: flow.Conn{
		Tuple: flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 40000, 443, flow.ProtoTCP),
		Fwd:   flow.Counters{Packets: 10, Bytes: 1500},
	}}
	r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
	exp.Export(&r)

	_ = col.Run(ctx, func(rec ipfixcollect.Record) {
		fr, err := rec.FlowRecord()
		if err != nil {
			return
		}
		f, _ := rec.Get("octetTotalCount")
		fmt.Println(fr.Tuple, fr.Fwd.Packets, f.Name, f.Interface())
		cancel()
	})
	// Output: tcp 10.0.0.1:40000 -> 10.0.0.2:443 10 octetTotalCount 1500
}
