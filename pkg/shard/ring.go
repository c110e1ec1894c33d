package shard

import (
	"hash/fnv"
	"slices"
)

// Ring assigns keys to replicas by rendezvous (highest random weight)
// hashing: a key belongs to the replica with the highest score(replica,
// key). Removing a replica moves only the keys it owned, each to the
// replica with its next-highest score, so every other assignment stays; and
// adding it back restores exactly the assignment before. That is what lets
// every agent take a dead aggregator out of its ring on its own and still
// agree with the others about where every other connection goes.
//
// The score depends only on the replica's id and the key, with no seed and
// no process state, so agents (and their versions) agree as long as they
// name the replicas the same way. A Ring is immutable and safe for
// concurrent use.
type Ring struct {
	ids    []string // sorted, unique
	hashes []uint64 // replicaHash of ids[i]
}

// NewRing builds a ring of the given replica ids ("host:port"); duplicates
// count once and the order does not matter.
func NewRing(ids ...string) *Ring {
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	r := &Ring{ids: sorted, hashes: make([]uint64, len(sorted))}
	for i, id := range sorted {
		r.hashes[i] = replicaHash(id)
	}
	return r
}

// Len is the number of replicas.
func (r *Ring) Len() int { return len(r.ids) }

// Members returns the replica ids, sorted; Owner's result indexes it.
func (r *Ring) Members() []string { return slices.Clone(r.ids) }

// Member returns the id of replica i (an index Owner returned).
func (r *Ring) Member(i int) string { return r.ids[i] }

// Owner returns the index (in Members) of the replica key belongs to, or
// -1 when the ring is empty. Its cost is one mix per replica.
func (r *Ring) Owner(key uint64) int {
	best, bestScore := -1, uint64(0)
	k := mix64(key)
	for i, h := range r.hashes {
		s := mix64(h ^ k)
		// Scores of different replicas can only be equal when their id
		// hashes are (mix64 is a bijection); the sorted order breaks that
		// tie the same way everywhere.
		if best < 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

// OwnerID returns the id of the replica key belongs to; "" when the ring
// is empty.
func (r *Ring) OwnerID(key uint64) string {
	if i := r.Owner(key); i >= 0 {
		return r.ids[i]
	}
	return ""
}

// replicaHash hashes a replica id. FNV-1a alone spreads similar ids
// ("10.0.0.1:4739", "10.0.0.2:4739") poorly in its high bits, hence the mix.
func replicaHash(id string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(id))
	return mix64(h.Sum64())
}

// mix64 is the SplitMix64 finaliser: a bijection on 64 bits in which every
// input bit flips about half of the output bits. Key ends with it too;
// mixing the key again before and after combining it with the replica's
// hash makes the scores of two replicas for the same key behave as
// independent (a bare XOR would keep their differences linear), which HRW's
// balance needs.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
