package connstore

import (
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

func TestIndexDeleteKeepsProbeRunsReachable(t *testing.T) {
	const last = minIndexSlots - 1
	tests := []struct {
		name   string
		homes  []uint64 // home slot of idx 0, 1, 2, ...
		delete uint32   // idx removed
	}{
		{"run wrapping past the end, head removed", []uint64{last, last, last, 0}, 0},
		{"run wrapping past the end, middle removed", []uint64{last, last, 0, last}, 1},
		{"entry at its home after the hole stays", []uint64{5, 5, 7, 6}, 0},
		{"two interleaved runs", []uint64{last - 1, last, last - 1, 0, last}, 2},
		{"only entry removed", []uint64{3}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var x index
			for i, h := range tt.homes {
				x.insert(h, uint32(i))
			}
			p := x.posOf(tt.homes[tt.delete], tt.delete)
			if p < 0 {
				t.Fatalf("idx %d not found before delete", tt.delete)
			}
			x.deleteAt(p)
			if x.posOf(tt.homes[tt.delete], tt.delete) >= 0 {
				t.Fatalf("idx %d still found after delete", tt.delete)
			}
			for i, h := range tt.homes {
				if uint32(i) != tt.delete && x.posOf(h, uint32(i)) < 0 {
					t.Fatalf("idx %d (home %d) unreachable after deleting idx %d; slots near end/start: %x %x",
						i, h, tt.delete, x.slots[last-2:], x.slots[:4])
				}
			}
			if x.n != len(tt.homes)-1 {
				t.Fatalf("n = %d, want %d", x.n, len(tt.homes)-1)
			}
		})
	}
}

func TestHashSpreadsSimilarTuples(t *testing.T) {
	s, _ := newBenchStore(t, 100_000, func(*flow.Record) {})
	for i := 0; i < 100_000; i++ {
		c := synthConn(i)
		s.Upsert(&c, t0)
	}
	for name, x := range map[string]*index{"byTuple": &s.byTuple, "byVIP": &s.byVIP} {
		mask := uint64(len(x.slots) - 1)
		var total, worst uint64
		for p, sl := range x.slots {
			if sl == 0 {
				continue
			}
			d := (uint64(p) - slotHome(sl, mask)) & mask
			total += d
			worst = max(worst, d)
		}
		if avg := float64(total) / float64(x.n); avg > 1 || worst > 64 {
			t.Errorf("%s: %d entries in %d slots probe %.2f slots on average, %d at worst; want <= 1 and <= 64",
				name, x.n, len(x.slots), avg, worst)
		}
	}
}
