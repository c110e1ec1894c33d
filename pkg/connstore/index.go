package connstore

import (
	"encoding/binary"
	"math/bits"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/offheap"
)

// index maps a tuple to a slab index. It is an open-addressing table with
// linear probing whose slots pack the low 32 bits of the key's hash with
// index+1, so a slot is 8 bytes instead of the 44 a map[flow.Tuple]uint32
// slot takes, probing rejects most mismatches without touching the slab, and
// growing rehashes without reading any key. Keys themselves live only in the
// slab.
//
// A key's home slot is its 32-bit hash scaled to the table's size
// ((h * size) >> 32), so the size need not be a power of two: the table
// grows by half (not double) when three quarters full, which keeps its
// load between 1/2 and 3/4 (8 B / load: 11-16 bytes per connection)
// instead of 3/8 and 3/4 (up to 21 bytes). Tables of 1 MiB and more are
// mapped outside the Go heap, and the old one is unmapped as soon as it
// was rehashed.
type index struct {
	slots []uint64 // 0: empty
	mem   offheap.Mapping
	n     int
}

const (
	minIndexSlots = 1024
	// indexHeapBytes: smaller tables stay on the Go heap.
	indexHeapBytes = 1 << 20
)

func packSlot(h uint64, idx uint32) uint64 { return uint64(uint32(h))<<32 | (uint64(idx) + 1) }

func slotIdx(sl uint64) uint32 { return uint32(sl) - 1 }

// homeOf is where a key whose hash has tag as its low 32 bits starts
// probing in a table of size slots.
func homeOf(tag uint32, size int) int { return int(uint64(tag) * uint64(size) >> 32) }

func slotHome(sl uint64, size int) int { return homeOf(uint32(sl>>32), size) }

// insert adds idx under hash h; the caller knows the key is absent.
func (x *index) insert(h uint64, idx uint32) {
	// Grow at 3/4 load so that a probe always ends at an empty slot soon.
	if (x.n+1)*4 > len(x.slots)*3 {
		x.grow()
	}
	x.place(packSlot(h, idx))
	x.n++
}

// place puts sl in the first empty slot from its home.
func (x *index) place(sl uint64) {
	n := len(x.slots)
	for p := slotHome(sl, n); ; {
		if x.slots[p] == 0 {
			x.slots[p] = sl
			return
		}
		if p++; p == n {
			p = 0
		}
	}
}

func (x *index) grow() {
	n := max(len(x.slots)+len(x.slots)/2, minIndexSlots)
	old, oldMem := x.slots, x.mem
	if n*8 >= indexHeapBytes {
		x.slots, x.mem = offheap.Make[uint64](n)
	} else {
		x.slots, x.mem = make([]uint64, n), offheap.Mapping{}
	}
	for _, sl := range old {
		if sl != 0 {
			x.place(sl)
		}
	}
	// Unmapping cannot fail for a mapping Make returned; if it did, the
	// old table would only stay mapped.
	_ = oldMem.Free()
}

// posOf returns the slot holding idx under hash h, or -1.
func (x *index) posOf(h uint64, idx uint32) int {
	n := len(x.slots)
	if n == 0 {
		return -1
	}
	want := packSlot(h, idx)
	for p := homeOf(uint32(h), n); ; {
		switch x.slots[p] {
		case 0:
			return -1
		case want:
			return p
		}
		if p++; p == n {
			p = 0
		}
	}
}

// deleteAt empties slot p and shifts later members of the probe run back so
// that lookups never need tombstones.
func (x *index) deleteAt(p int) {
	n := len(x.slots)
	i := p
	for j := p + 1; ; j++ {
		if j == n {
			j = 0
		}
		sl := x.slots[j]
		if sl == 0 {
			break
		}
		home := slotHome(sl, n)
		// The entry at j may fill the hole at i unless its home lies
		// cyclically within (i, j]: then moving it would put it before
		// its home and lookups would miss it.
		var stays bool
		if i <= j {
			stays = i < home && home <= j
		} else {
			stays = i < home || home <= j
		}
		if !stays {
			x.slots[i] = sl
			i = j
		}
	}
	x.slots[i] = 0
	x.n--
}

func (x *index) bytes() int { return len(x.slots) * 8 }

// release drops the table (unmapping it when it was mapped).
func (x *index) release() error {
	err := x.mem.Free()
	*x = index{}
	return err
}

// hashTuple mixes the tuple with a per-store random seed, so that peers
// choosing addresses and ports cannot aim for long probe runs.
func hashTuple(t *flow.Tuple, seed uint64) uint64 {
	const (
		k0 = 0xa0761d6478bd642f
		k1 = 0xe7037ed1a0b428db
		k2 = 0x8ebc6af09c88c6e3
		k3 = 0x589965cc75374cc3
	)
	le := binary.LittleEndian
	ports := uint64(t.SrcPort)<<24 | uint64(t.DstPort)<<8 | uint64(t.Proto)
	h := mix(le.Uint64(t.SrcIP[0:8])^seed^k0, le.Uint64(t.SrcIP[8:16])^k1)
	h = mix(le.Uint64(t.DstIP[0:8])^h^k2, le.Uint64(t.DstIP[8:16])^k3)
	return mix(h^ports^k1, seed^k2)
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}
