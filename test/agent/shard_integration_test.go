//go:build integration

package agent_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/pkg/shard"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// replicaCollector is a real IPFIX collector on loopback TCP that the test
// can stop in the middle (agenttest.Collector lives as long as the test).
type replicaCollector struct {
	addr string
	mu   sync.Mutex
	recs []flow.Record
	stop func()
}

func startReplicaCollector(t *testing.T) *replicaCollector {
	t.Helper()
	col, err := ipfixcollect.New(ipfixcollect.Config{Network: ipfixcollect.TCP, Address: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatalf("collector: %v", err)
	}
	c := &replicaCollector{addr: col.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- col.Run(ctx, func(r ipfixcollect.Record) {
			fr, err := r.FlowRecord()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.recs = append(c.recs, fr)
			c.mu.Unlock()
		})
	}()
	var once sync.Once
	c.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("collector %s: %v", c.addr, err)
			}
		})
	}
	t.Cleanup(c.stop)
	return c
}

// of returns the records of the connection from client port sport.
func (c *replicaCollector) of(sport uint16) []flow.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []flow.Record
	for _, r := range c.recs {
		if r.Tuple.SrcPort == sport && r.Tuple.Proto == flow.ProtoTCP {
			out = append(out, r)
		}
	}
	return out
}

func (c *replicaCollector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.recs)
}

// Issue 15: the agent shards connections over three collectors by HRW of
// the connection; every connection arrives exactly once, at its owner; once
// a collector has been gone for export.failoverAfter, the connections it
// owned arrive at another one, and the others' stay where they were.
func TestConnectionsAreShardedOverCollectorsAndFailOver(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "agent-shard",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	server := node.Pod("server")
	if _, err := server.ListenTCP(7100); err != nil {
		t.Fatal(err)
	}
	cols := []*replicaCollector{startReplicaCollector(t), startReplicaCollector(t), startReplicaCollector(t)}
	byAddr := map[string]*replicaCollector{}
	var addrs []string
	for _, c := range cols {
		byAddr[c.addr] = c
		addrs = append(addrs, fmt.Sprintf("%q", c.addr))
	}
	const failoverAfter = 2 * time.Second
	ag := agenttest.StartAgent(t, agentBin, fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
  activeTimeout: 60s
  idleTimeout: 60s
export:
  collectors: [%s]
  failoverAfter: %s
  transport: tcp
  flushInterval: 200ms
server:
  listen: 127.0.0.1:0
`, node.Name, node.NetnsPath, strings.Join(addrs, ", "), failoverAfter))

	// run makes n connections, each with its own payload size, and waits
	// for the end-of-flow record of every one; it returns the client ports.
	const conns = 30
	run := func(phase int) []netnstest.Transfer {
		t.Helper()
		var xfers []netnstest.Transfer
		for i := range conns {
			x, err := netnstest.SendExactly(node.Pod("client"), server.Addr(7100), int64(1000+100*phase+i), 10)
			if err != nil {
				t.Fatal(err)
			}
			xfers = append(xfers, x)
		}
		deadline := time.Now().Add(20 * time.Second)
		for _, x := range xfers {
			for {
				found := false
				for _, c := range cols {
					for _, r := range c.of(x.Local.Port()) {
						found = found || r.EndReason == flow.EndOfFlow
					}
				}
				if found {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("phase %d: no end-of-flow record for the connection from %s within 20s", phase, x.Local)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		return xfers
	}
	// check asserts that each connection's records are at one collector
	// only, the owner ring names, exactly one end-of-flow among them, with
	// the bytes sent.
	check := func(phase int, xfers []netnstest.Transfer, ring *shard.Ring) map[string]int {
		t.Helper()
		perCollector := map[string]int{}
		for _, x := range xfers {
			var at []string
			var recs []flow.Record
			for _, c := range cols {
				if rs := c.of(x.Local.Port()); len(rs) > 0 {
					at = append(at, c.addr)
					recs = append(recs, rs...)
				}
			}
			if len(at) != 1 {
				t.Errorf("phase %d: connection from %s arrived at %v, want one collector", phase, x.Local, at)
				continue
			}
			tuple := flow.NewTuple(x.Local.Addr(), server.Addr(7100).Addr(), x.Local.Port(), 7100, flow.ProtoTCP)
			if want := ring.OwnerID(shard.Key(tuple)); at[0] != want {
				t.Errorf("phase %d: connection from %s arrived at %s, its owner is %s", phase, x.Local, at[0], want)
			}
			if back := ring.OwnerID(shard.Key(tuple.Reverse())); back != at[0] {
				t.Errorf("phase %d: the server side of %s would go to %s", phase, x.Local, back)
			}
			ends := 0
			var fwdPayload uint64
			for _, r := range recs {
				if r.EndReason == flow.EndOfFlow {
					ends++
				}
				fwdPayload += r.FwdDelta.Bytes
			}
			if ends != 1 {
				t.Errorf("phase %d: connection from %s has %d end-of-flow records", phase, x.Local, ends)
			}
			// Payload plus the 8-byte request header plus at least 40
			// header bytes per packet: a record counted twice would double it.
			if min := uint64(x.Sent + 8); fwdPayload < min || fwdPayload > 2*min {
				t.Errorf("phase %d: connection from %s: %d bytes client->server over %d records, sent %d", phase, x.Local, fwdPayload, len(recs), x.Sent)
			}
			perCollector[at[0]]++
		}
		return perCollector
	}

	full := shard.NewRing(cols[0].addr, cols[1].addr, cols[2].addr)
	first := run(1)
	spread := check(1, first, full)
	t.Logf("phase 1: connections per collector %v", spread)
	if len(spread) < 2 {
		t.Errorf("30 connections all went to %v: no sharding to speak of", spread)
	}

	// The owner of the most connections goes away.
	dead := cols[0]
	for _, c := range cols {
		if spread[c.addr] > spread[dead.addr] {
			dead = c
		}
	}
	before := dead.len()
	dead.stop()
	ag.WaitMetric(t, "flowlens_agent_collector_failovers_total", failoverAfter+10*time.Second, func(v float64) bool { return v >= 1 })
	ag.WaitMetric(t, "flowlens_agent_collector_ring_size", time.Second, func(v float64) bool { return v == 2 })

	var rest []string
	for _, c := range cols {
		if c != dead {
			rest = append(rest, c.addr)
		}
	}
	without := shard.NewRing(rest...)
	second := run(2)
	spread2 := check(2, second, without)
	t.Logf("phase 2, %s stopped: connections per collector %v", dead.addr, spread2)
	movedOver := 0
	for _, x := range second {
		tuple := flow.NewTuple(x.Local.Addr(), server.Addr(7100).Addr(), x.Local.Port(), 7100, flow.ProtoTCP)
		if full.OwnerID(shard.Key(tuple)) == dead.addr {
			movedOver++
		}
	}
	if movedOver == 0 {
		t.Errorf("no connection of phase 2 belonged to the stopped collector: the failover was not exercised")
	}
	if dead.len() != before {
		t.Errorf("the stopped collector received %d records", dead.len()-before)
	}
	// Phase 1 connections were not exported again anywhere.
	check(1, first, full)

	// Nothing is left waiting in the agent for the live collectors.
	for _, addr := range rest {
		ag.WaitMetric(t, fmt.Sprintf("flowlens_ipfix_exporter_buffered_records{collector=%q}", addr), 10*time.Second, func(v float64) bool { return v == 0 })
	}
	t.Logf("%d of the 30 phase-2 connections belonged to the stopped collector and went to the others", movedOver)
}
