package agent

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/flowlens/flowlens/pkg/shard"
)

// A NodePort connection from outside: the node it entered by reports the
// client's tuple with the source NAT it applied, the backend's node only
// the translated source. Both agents must pick the same replica, or the
// aggregator can never join the halves.
func TestShardedSinkRoutesSourceNATedHalvesToTheSameReplica(t *testing.T) {
	fsA, fsB := newFakeReplicas(), newFakeReplicas()
	a := newTestSink(t, fsA, nil, nil)
	b := newTestSink(t, fsB, nil, func(c *ShardedSinkConfig) {
		c.Collectors = []string{"10.0.0.2:4739", "10.0.0.3:4739", "10.0.0.1:4739"}
	})
	rnd := rand.New(rand.NewPCG(7, 7))
	nodeA := netip.MustParseAddr("172.18.0.2")
	const n = 3000
	byClientTuple := 0 // how often the client's tuple alone would have split them
	ring := shard.NewRing("10.0.0.1:4739", "10.0.0.2:4739", "10.0.0.3:4739")
	for i := range uint64(n) {
		entry := shardRecord(rnd, i)
		entry.ProxySnatIP, entry.ProxySnatPort = nodeA.As16(), uint16(30000+i)
		backend := entry
		backend.Tuple = entry.CorrelationTuple()
		backend.ProxySnatIP, backend.ProxySnatPort = [16]byte{}, 0
		if !a.Export(&entry) || !b.Export(&backend) {
			t.Fatalf("record %d dropped", i)
		}
		if ring.OwnerID(shard.Key(entry.Tuple)) != ring.OwnerID(shard.Key(backend.Tuple)) {
			byClientTuple++
		}
	}
	gotA, gotB := fsA.bufferedByID(), fsB.bufferedByID()
	for i := range uint64(n) {
		if len(gotA[i]) != 1 || len(gotB[i]) != 1 || gotA[i][0] != gotB[i][0] {
			t.Fatalf("record %d: the SNAT node sent it to %v, the backend's node to %v; want one and the same replica", i, gotA[i], gotB[i])
		}
	}
	// Two of three random pairs of keys land apart: the test would catch
	// routing by the client's tuple.
	if byClientTuple < n/2 {
		t.Errorf("only %d of %d connections would have been split by the client's tuple: the test does not exercise the SNAT key", byClientTuple, n)
	}
}
