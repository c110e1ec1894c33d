package bpfcounters

import (
	"testing"
	"time"
)

// REVIEW: lossAll (a map-full no ring record named, which also happens
// spuriously when the agent drains the ring between a program's
// stat_inc(MAP_FULL) and its notify(REC_LOST)) is never cleared, and Fill
// treats a connection without a start time as started before it. The agent
// calls Fill at every NEW event with StartNanos 0 (NEW events carry none):
// after one such loss, every connection born for the rest of the agent's
// life is reported lossy and counted by conntrack, although its views were
// all counted after the loss.
func TestReviewOneUnattributedLossMakesEveryLaterConnectionLossy(t *testing.T) {
	c, ft := newFake(t)
	c.lossAll = time.Now().Add(-time.Hour).UnixNano() // an hour ago

	conn := dnatConn(client, server, vip) // born now: its NEW event
	v := viewsOf(&conn)
	now := uint64(monoNow())
	ft.m[v.fwd[0]] = bpfFlowVal{Packets: 1, Bytes: 60, Ifindex: 5, FirstNs: now, LastNs: now}
	res, err := c.Fill(&conn)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Seen {
		t.Fatalf("not seen: %+v", res)
	}
	if res.Lossy {
		t.Errorf("a connection whose first packet was counted an hour after the last loss is reported lossy")
	}
}
