// Package shard decides which aggregator replica (and which ClickHouse
// shard) a connection belongs to. Both nodes that see an inter-node
// connection export it independently, so the choice must depend only on the
// connection, never on which end reported it or in which orientation.
package shard

import (
	"bytes"
	"encoding/binary"
	"hash/fnv"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Key is a 64-bit hash of a connection that is the same for a tuple and its
// Reverse: the two endpoints are ordered before hashing. FNV-1a is used
// rather than a seeded hash because every agent and aggregator, in separate
// processes and versions, must compute the same value.
//
// FNV-1a alone is not enough: ClickHouse shards by key % n, and FNV-1a's
// low bit is the XOR of the low bits of every input byte, so connections of
// one pod pair whose ephemeral ports step by 2 (Linux connect()) would all
// land on one of two shards. The SplitMix64 finaliser makes every output bit
// depend on every input bit. Changing this function moves connections to
// other replicas and shards: it is an incompatible change (see
// TestOwnersArePinned and TestKeysArePinned).
func Key(t flow.Tuple) uint64 {
	aIP, aPort, bIP, bPort := t.SrcIP, t.SrcPort, t.DstIP, t.DstPort
	if c := bytes.Compare(aIP[:], bIP[:]); c > 0 || (c == 0 && aPort > bPort) {
		aIP, aPort, bIP, bPort = bIP, bPort, aIP, aPort
	}
	var buf [16 + 2 + 16 + 2 + 1]byte
	copy(buf[0:16], aIP[:])
	binary.BigEndian.PutUint16(buf[16:18], aPort)
	copy(buf[18:34], bIP[:])
	binary.BigEndian.PutUint16(buf[34:36], bPort)
	buf[36] = t.Proto
	h := fnv.New64a()
	h.Write(buf[:])
	// mix64 (ring.go) is a bijection: distinct FNV values stay distinct.
	return mix64(h.Sum64())
}

// RecordKey is the key of the connection r reports, as every node that
// reports it computes it: Key of r's CorrelationTuple, so a NodePort or
// LoadBalancer connection that one node source-NATed maps to the same
// replica from that node and from the backend's node.
func RecordKey(r *flow.Record) uint64 { return Key(r.CorrelationTuple()) }
