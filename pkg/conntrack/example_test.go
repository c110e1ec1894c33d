package conntrack_test

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/flow"
)

// A Source dumps the table on every poll and listens for events between
// polls; an overrun asks for the next dump to come early.
func ExampleSource() {
	src, err := conntrack.New(conntrack.Config{
		NetNSPath: "/run/netns/node", // "" for the agent's own namespace
		Zones:     []uint16{0},
	}, prometheus.NewRegistry())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer src.Close()
	if err := src.EnableAccounting(); err != nil {
		fmt.Println("running without counters:", err)
	}

	store := map[flow.Tuple]flow.Conn{}
	if err := src.Dump(func(c *flow.Conn) { store[c.Tuple] = *c }); err != nil {
		fmt.Println(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resync := make(chan struct{}, 1)
	go src.Listen(ctx, func(ev conntrack.Event) {
		switch ev.Type {
		case conntrack.EventDestroy:
			fmt.Println("closed", ev.Conn.Tuple, ev.Conn.Fwd.Bytes, ev.Conn.Rev.Bytes)
		case conntrack.EventOverrun:
			select {
			case resync <- struct{}{}:
			default:
			}
		}
	})
}
