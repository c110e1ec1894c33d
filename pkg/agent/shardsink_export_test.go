package agent

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/shard"
)

// testCollector is a real IPFIX collector on loopback that can be stopped
// and started again on the same address.
type testCollector struct {
	t    *testing.T
	addr string
	mu   sync.Mutex
	seqs map[uint64]int // Fwd.Packets of every record received

	stop func()
}

func newTestCollector(t *testing.T) *testCollector {
	c := &testCollector{t: t, addr: "127.0.0.1:0", seqs: map[uint64]int{}}
	c.start()
	t.Cleanup(func() { c.stop() })
	return c
}

func (c *testCollector) start() {
	col, err := ipfixcollect.New(ipfixcollect.Config{Network: ipfixcollect.TCP, Address: c.addr}, nil)
	if err != nil {
		c.t.Fatalf("collector %s: %v", c.addr, err)
	}
	c.addr = col.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- col.Run(ctx, func(r ipfixcollect.Record) {
			fr, err := r.FlowRecord()
			if err != nil {
				c.t.Errorf("collector %s: undecodable record: %v", c.addr, err)
				return
			}
			c.mu.Lock()
			c.seqs[fr.Fwd.Packets]++
			c.mu.Unlock()
		})
	}()
	var once sync.Once
	c.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				c.t.Errorf("collector %s: %v", c.addr, err)
			}
		})
	}
}

func (c *testCollector) received() map[uint64]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[uint64]int, len(c.seqs))
	for k, v := range c.seqs {
		out[k] = v
	}
	return out
}

// Three real exporters to three real collectors: every record arrives once,
// at its HRW owner; a collector that stops loses its share to the others
// after failoverAfter, none of them twice; when it is back its share
// returns.
func TestShardedSinkWithRealExportersFailsOverAndBack(t *testing.T) {
	t.Parallel()
	cols := []*testCollector{newTestCollector(t), newTestCollector(t), newTestCollector(t)}
	byAddr := map[string]*testCollector{}
	var ids []string
	for _, c := range cols {
		byAddr[c.addr] = c
		ids = append(ids, c.addr)
	}
	const failover = 500 * time.Millisecond
	reg := prometheus.NewRegistry()
	s, err := NewShardedSink(ShardedSinkConfig{
		Collectors:    ids,
		FailoverAfter: failover,
		HoldRecords:   1000,
		NewExporter: func(address string, reg prometheus.Registerer) (ReplicaExporter, error) {
			return ipfixexport.New(ipfixexport.Config{
				Address: address, Transport: ipfixexport.TCP, BufferRecords: 20000,
				FlushInterval: 50 * time.Millisecond, ReconnectMin: 50 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
			}, reg)
		},
	}, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	rnd := rand.New(rand.NewPCG(7, 7))
	var recs []flow.Record
	export := func(n int) (from, to int) {
		from = len(recs)
		for range n {
			r := shardRecord(rnd, uint64(len(recs)))
			recs = append(recs, r)
			if !s.Export(&r) {
				t.Fatalf("record %d dropped", r.Fwd.Packets)
			}
		}
		return from, len(recs)
	}
	// arrivedAt says which collectors received record i, waiting until
	// every record up to n arrived somewhere.
	waitAll := func(n int) map[uint64][]string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			where := map[uint64][]string{}
			for _, c := range cols {
				for seq, k := range c.received() {
					for range k {
						where[seq] = append(where[seq], c.addr)
					}
				}
			}
			complete := true
			for i := range n {
				if len(where[uint64(i)]) == 0 {
					complete = false
					break
				}
			}
			if complete {
				return where
			}
			if time.Now().After(deadline) {
				t.Fatalf("not every one of %d records arrived within 20s: %d did", n, len(where))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	full := shard.NewRing(ids...)
	owner := func(ring *shard.Ring, i int) string { return ring.OwnerID(shard.Key(recs[i].Tuple)) }

	// Steady state: every record at its owner.
	export(1500)
	waitAll(1500)

	// The second collector stops (orderly: it reads what was written).
	dead := cols[1]
	dead.stop()
	waitUntil(t, "the exporter to notice", func() bool {
		s.mu.Lock()
		rep := s.replicas[dead.addr]
		s.mu.Unlock()
		return !rep.exp.DownSince().IsZero()
	})
	duringFrom, _ := export(1500) // partly buffered for it, moved at the failover
	waitUntil(t, "the failover", func() bool { return value(s.m.failovers) == 1 })
	afterFrom, _ := export(1500)
	waitAll(afterFrom + 1500)
	without := shard.NewRing(ids[0], ids[2])

	// It comes back on the same address; its share returns.
	dead.start()
	waitUntil(t, "the return", func() bool { return value(s.m.returns) == 1 })
	backFrom, _ := export(1500)
	where := waitAll(backFrom + 1500)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	for i := range len(recs) {
		got := where[uint64(i)]
		if len(got) != 1 {
			t.Fatalf("record %d arrived at %v, want exactly one collector", i, got)
		}
		var want string
		switch {
		case i < duringFrom, i >= backFrom:
			want = owner(full, i)
		default:
			want = owner(without, i)
		}
		if got[0] != want {
			t.Errorf("record %d (of phase %d) arrived at %s, want %s", i, i/1500, got[0], want)
		}
	}
	for _, c := range cols {
		n := 0
		for range c.received() {
			n++
		}
		if n == 0 {
			t.Errorf("collector %s received nothing", c.addr)
		}
	}
	// Each exporter's metrics carry its collector label.
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labelled := map[string]bool{}
	for _, f := range families {
		if f.GetName() != "flowlens_ipfix_exporter_records_sent_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "collector" && m.GetCounter().GetValue() > 0 {
					labelled[l.GetValue()] = true
				}
			}
		}
	}
	if len(labelled) != 3 {
		t.Errorf("records_sent_total labelled for %v, want the three collectors", labelled)
	}
	if value(s.m.moved) == 0 {
		t.Error("nothing was moved at the failover: the test did not exercise the buffer of the dead replica")
	}
	t.Logf("%d records; %v moved from the stopped collector's buffer at the failover", len(recs), value(s.m.moved))
}
