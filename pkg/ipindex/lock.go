package ipindex

import (
	"math/rand/v2"
	"sync"
)

// lockShards is how many read locks readers spread over.
const lockShards = 16

// shardedRWMutex is a reader-writer lock whose readers do not share a cache
// line: a sync.RWMutex's reader count is one word every reader writes, and
// with enrichment and L7 lookups on several cores that word bouncing between
// them cost more than the lookups (measured: two cores together did fewer
// lookups per second than one). A reader locks one random shard; a writer
// locks all of them. Writers are informer events and file reloads, rare next
// to lookups.
type shardedRWMutex struct {
	shards [lockShards]struct {
		sync.RWMutex
		_ [64 - 24]byte // one shard per cache line
	}
}

// RLock read-locks one shard and returns it for RUnlock.
func (m *shardedRWMutex) RLock() int {
	i := int(rand.Uint32() % lockShards)
	m.shards[i].RLock()
	return i
}

// RUnlock releases the shard RLock returned.
func (m *shardedRWMutex) RUnlock(i int) { m.shards[i].RUnlock() }

// Lock write-locks every shard, always in the same order.
func (m *shardedRWMutex) Lock() {
	for i := range m.shards {
		m.shards[i].Lock()
	}
}

// Unlock releases what Lock took.
func (m *shardedRWMutex) Unlock() {
	for i := range m.shards {
		m.shards[i].Unlock()
	}
}
