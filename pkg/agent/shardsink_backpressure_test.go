package agent

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/shard"
)

func (f *fakeReplica) setRefuse(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = n
}

// A replica whose buffer is full refuses through the sharded sink (the
// caller keeps the record, nothing is counted as dropped), and records
// moved out of a replica that left the ring and refused by their new owner
// wait in the hold buffer until it takes them: every record is sent by
// exactly one replica.
func TestShardedSinkPassesRefusalsOnAndLosesNoMovedRecord(t *testing.T) {
	fs := newFakeReplicas()
	reg := prometheus.NewRegistry()
	s := newTestSink(t, fs, reg, nil)
	fs.connectAll()
	s.check(t0)
	ids := []string{"10.0.0.1:4739", "10.0.0.2:4739", "10.0.0.3:4739"}
	full, without2 := shard.NewRing(ids...), shard.NewRing(ids[0], ids[2])
	rnd := rand.New(rand.NewPCG(3, 3))
	recs := make([]flow.Record, 3000)
	for i := range recs {
		recs[i] = shardRecord(rnd, uint64(i))
	}
	owner := func(ring *shard.Ring, i int) string { return ring.OwnerID(shard.RecordKey(&recs[i])) }

	// Replica 3 is full for its next 50 records: those are refused, the
	// others go through; offered again, they are taken.
	fs.get(ids[2]).setRefuse(50)
	var retry []int
	for i := 0; i < 1000; i++ {
		if s.Accepts(&recs[i]) != s.Export(&recs[i]) {
			t.Fatalf("record %d: Accepts disagrees with Export", i)
		}
		sent := fs.sentByID()[uint64(i)]
		switch {
		case len(sent) == 1:
		case len(sent) == 0 && owner(full, i) == ids[2]:
			retry = append(retry, i)
		default:
			t.Fatalf("record %d (owner %s) sent by %v", i, owner(full, i), sent)
		}
	}
	if len(retry) != 50 {
		t.Fatalf("%d records refused, want the 50 replica 3 refused", len(retry))
	}
	for _, i := range retry {
		if !s.Export(&recs[i]) {
			t.Fatalf("record %d refused again by a replica with room", i)
		}
	}

	// Replica 2 goes away with records in its buffer; at failover they move,
	// and replica 1 refuses the first 20 of its share: held, then sent on the
	// next check.
	dead := fs.get(ids[1])
	downAt := t0.Add(time.Minute)
	dead.setDown(downAt)
	for i := 1000; i < 2000; i++ {
		if !s.Export(&recs[i]) {
			t.Fatalf("record %d refused", i)
		}
	}
	_, buffered := dead.records()
	toFirst := 0
	for _, r := range buffered {
		if without2.OwnerID(shard.RecordKey(&r)) == ids[0] {
			toFirst++
		}
	}
	if toFirst < 20 {
		t.Fatalf("only %d buffered records move to replica 1; the test needs 20", toFirst)
	}
	fs.get(ids[0]).setRefuse(20)
	s.check(downAt.Add(failAfter))
	if n := len(s.held); n != 20 {
		t.Fatalf("%d records held after the move, want the 20 refused", n)
	}
	s.check(downAt.Add(failAfter + time.Second))
	if n := len(s.held); n != 0 {
		t.Fatalf("%d records still held after the next check", n)
	}
	got := fs.sentByID()
	for i := range 2000 {
		if len(got[uint64(i)]) != 1 {
			t.Fatalf("record %d sent by %v, want exactly one replica", i, got[uint64(i)])
		}
	}
	for _, reason := range []string{dropNoCollector, dropRemoved, dropHoldFull} {
		if v := value(s.m.dropped.WithLabelValues(reason)); v != 0 {
			t.Errorf("dropped{reason=%q} = %v, want 0", reason, v)
		}
	}
}
