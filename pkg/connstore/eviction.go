package connstore

import (
	"math"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"k8s.io/klog/v2"
)

// An eviction samples evictSample open connections, probing at most
// evictProbes slots.
const (
	evictSample = 8
	evictProbes = 64
)

// evictOne drops the least recently active of a few open connections
// sampled at random, after handing out its final record.
func (s *Store) evictOne(now int64) {
	if s.entries.hw == 0 {
		return
	}
	victim, fallback := int64(-1), int64(-1)
	oldest := int64(math.MaxInt64)
	// A small slab is examined whole, so eviction there is exact.
	exact := s.entries.hw <= evictProbes
	for probes, found := 0, 0; probes < evictProbes && (exact || found < evictSample); probes++ {
		idx := uint32(probes)
		if !exact {
			idx = s.rng.Uint32N(s.entries.hw)
		} else if idx >= s.entries.hw {
			break
		}
		e := s.at(idx)
		switch {
		case e.flags&fLive == 0:
		case e.flags&fClosed != 0:
			fallback = int64(idx)
		default:
			found++
			if e.lastActive < oldest {
				oldest, victim = e.lastActive, int64(idx)
			}
		}
	}
	if victim < 0 {
		victim = fallback
	}
	if victim < 0 {
		// The slab is mostly free slots: walk from a random point to the
		// first live one, which exists since the store is full.
		start := s.rng.Uint32N(s.entries.hw)
		for i := uint32(0); i < s.entries.hw; i++ {
			idx := (start + i) % s.entries.hw
			if s.at(idx).flags&fLive != 0 {
				victim = int64(idx)
				break
			}
		}
	}
	if victim < 0 {
		return
	}
	idx := uint32(victim)
	s.m.evicted.Inc()
	s.evictedSinceLog++
	if now-s.lastEvictLog >= int64(time.Minute) {
		klog.InfoS("Connection store full: evicting least recently active connections",
			"maxConnections", s.max, "evictedSinceLastLog", s.evictedSinceLog)
		s.lastEvictLog, s.evictedSinceLog = now, 0
	}
	s.fill(s.at(idx), flow.EndLackResources, now)
	s.remove(idx)
}
