package connstore_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/flowlens/flowlens/pkg/connstore"
	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// The agent's run loop wires the store and the queue like this. Every record,
// whether from a tick or from an eviction or replacement inside Upsert, goes
// through the same emit function, where the enrichers and the exporter run.
func Example() {
	reg := prometheus.NewRegistry()
	emit := func(r *flow.Record) {
		// enrich(r); exporter.Export(r) -- r is only valid during the call.
		fmt.Printf("%s %s fwd+%d rev+%d\n", r.EndReason, r.Tuple, r.FwdDelta.Bytes, r.RevDelta.Bytes)
	}
	queue, err := expirequeue.New(expirequeue.Config{ActiveTimeout: 5 * time.Second, IdleTimeout: 15 * time.Second}, reg)
	if err != nil {
		fmt.Println(err)
		return
	}
	store, err := connstore.New(connstore.Config{MaxConnections: 100_000, Scheduler: queue, Emit: emit}, reg)
	if err != nil {
		fmt.Println(err)
		return
	}
	tick := func(now time.Time) {
		if _, err := queue.Expire(now, store, emit); err != nil {
			fmt.Println(err)
		}
	}

	start := time.Unix(1_700_000_000, 0)
	c := flow.Conn{
		Tuple:       flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.1.5"), 40000, 8080, flow.ProtoTCP),
		OrigDstIP:   netip.MustParseAddr("10.96.0.10").As16(),
		OrigDstPort: 80,
		ID:          1,
		Fwd:         flow.Counters{Packets: 3, Bytes: 300},
		Rev:         flow.Counters{Packets: 2, Bytes: 900},
	}
	// A complete dump: every entry, then EndDump with the dump's start time.
	store.Upsert(&c, start)
	store.EndDump(start)

	// The L7 matcher found the connection from the client-side VIP tuple.
	store.SetL7(flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.96.0.10"), 40000, 80, flow.ProtoTCP),
		flow.L7{AppProtocolName: "http"})

	// Ticks.
	tick(start.Add(5 * time.Second))
	c.Fwd, c.Rev = flow.Counters{Packets: 5, Bytes: 500}, flow.Counters{Packets: 4, Bytes: 4000}
	store.Close(&c, start.Add(6*time.Second)) // DESTROY event
	tick(start.Add(7 * time.Second))
	fmt.Println("tracked:", store.Len())
	// Output:
	// active tcp 10.0.0.1:40000 -> 10.0.1.5:8080 fwd+300 rev+900
	// end-of-flow tcp 10.0.0.1:40000 -> 10.0.1.5:8080 fwd+200 rev+3100
	// tracked: 0
}
