//go:build integration

package bpfcounters

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/netnstest"
)

// REVIEW: once the map is full, every packet of a flow that did not fit
// writes a REC_LOST record (no per-epoch gating, unlike REC_CHANGED). One
// busy flow is enough to overflow the ring every round, and each overflow
// turns the next read into a walk of the whole map: with the default
// 262144 entries, a read costs the table, not what changed, for as long as
// the map stays full (which is when the node is busiest).
func TestReviewOneLostFlowMakesEveryRoundWalkTheMap(t *testing.T) {
	e := newEnv(t, Config{MapEntries: 4, RingBytes: 4096}, false)
	if _, err := e.server.ListenUDP(5353); err != nil {
		t.Fatal(err)
	}
	// The first exchange fills the map (four views).
	if _, err := netnstest.SendUDP(e.client, e.server.Addr(5353), 100, 100); err != nil {
		t.Fatal(err)
	}
	if err := e.c.ReadChanged(func(flow.Tuple, bool) {}); err != nil {
		t.Fatal(err)
	}
	walks0 := counterValue(e.c.metrics.fullWalks)
	c, err := e.client.DialUDP(e.server.Addr(5353))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const rounds = 3
	for range rounds {
		for range 200 { // one flow, 200 datagrams per round
			if _, err := c.Write(make([]byte, 64)); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(50 * time.Millisecond)
		if err := e.c.ReadChanged(func(flow.Tuple, bool) {}); err != nil {
			t.Fatal(err)
		}
	}
	walks := counterValue(e.c.metrics.fullWalks) - walks0
	t.Logf("map full %v, lost records %v, ring full %v, full walks %v in %d rounds",
		counterValue(e.c.metrics.kernel[statMapFull]), counterValue(e.c.metrics.lostKeys),
		counterValue(e.c.metrics.kernel[statRingFull]), walks, rounds)
	if walks >= rounds {
		t.Errorf("%v full map walks in %d rounds for one flow that did not fit", walks, rounds)
	}
}
