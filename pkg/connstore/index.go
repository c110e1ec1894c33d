package connstore

import (
	"encoding/binary"
	"math/bits"

	"github.com/flowlens/flowlens/pkg/flow"
)

// index maps a tuple to a slab index. It is an open-addressing table with
// linear probing whose slots pack the low 32 bits of the key's hash with
// index+1, so a slot is 8 bytes instead of the 44 a map[flow.Tuple]uint32
// slot takes, probing rejects most mismatches without touching the slab, and
// growing rehashes without reading any key. Keys themselves live only in the
// slab.
type index struct {
	slots []uint64 // 0: empty
	n     int
}

const minIndexSlots = 1024

func packSlot(h uint64, idx uint32) uint64 { return uint64(uint32(h))<<32 | (uint64(idx) + 1) }

func slotIdx(sl uint64) uint32 { return uint32(sl) - 1 }

func slotHome(sl uint64, mask uint64) uint64 { return (sl >> 32) & mask }

// insert adds idx under hash h; the caller knows the key is absent.
func (x *index) insert(h uint64, idx uint32) {
	// Grow at 3/4 load so that a probe always ends at an empty slot soon.
	if (x.n+1)*4 > len(x.slots)*3 {
		x.grow()
	}
	mask := uint64(len(x.slots) - 1)
	for p := uint64(uint32(h)) & mask; ; p = (p + 1) & mask {
		if x.slots[p] == 0 {
			x.slots[p] = packSlot(h, idx)
			x.n++
			return
		}
	}
}

func (x *index) grow() {
	n := max(2*len(x.slots), minIndexSlots)
	old := x.slots
	x.slots = make([]uint64, n)
	mask := uint64(n - 1)
	for _, sl := range old {
		if sl == 0 {
			continue
		}
		p := slotHome(sl, mask)
		for x.slots[p] != 0 {
			p = (p + 1) & mask
		}
		x.slots[p] = sl
	}
}

// posOf returns the slot holding idx under hash h, or -1.
func (x *index) posOf(h uint64, idx uint32) int {
	if len(x.slots) == 0 {
		return -1
	}
	want := packSlot(h, idx)
	mask := uint64(len(x.slots) - 1)
	for p := uint64(uint32(h)) & mask; ; p = (p + 1) & mask {
		switch x.slots[p] {
		case 0:
			return -1
		case want:
			return int(p)
		}
	}
}

// deleteAt empties slot p and shifts later members of the probe run back so
// that lookups never need tombstones.
func (x *index) deleteAt(p int) {
	mask := uint64(len(x.slots) - 1)
	i := uint64(p)
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		sl := x.slots[j]
		if sl == 0 {
			break
		}
		home := slotHome(sl, mask)
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
