package tcphealth

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// replaceAfterWalk is the kernel acting between the sweep's walk of the
// socket map and its deletes: a new connection's socket reuses the tuple
// of a closed, untaken entry and upsert() replaces that entry with a
// fresh, open one (FLAG_REPLACED, closed_ns 0).
type replaceAfterWalk struct {
	*fakeTable
	key bpfSockKey
}

func (r *replaceAfterWalk) each(fn func(k *bpfSockKey, v *bpfSockStats)) error {
	err := r.fakeTable.each(fn)
	r.fakeTable.socks[r.key] = bpfSockStats{BornNs: 1 << 40, Flags: flagReplaced, Retrans: 2}
	return err
}

// TestReviewSweepDeletesEntryReplacedDuringWalk: the sweep decides from
// its walk that an entry is closed and untaken, and deletes it later under
// the lock without looking again. If a new connection's socket replaced
// that entry in between, the sweep deletes the live entry of the new
// connection: its events so far are lost (and, as the entry was never
// read, not even counted as vanished).
func TestReviewSweepDeletesEntryReplacedDuringWalk(t *testing.T) {
	f := newFixture(t, Config{ClosedGrace: time.Minute})
	old := sockKey(flow.NewTuple(podA, podB, 41000, 8080, flow.ProtoTCP))
	f.tab.add(old, func(s *bpfSockStats) { s.ClosedNs = uint64(f.mono) })
	f.mono += int64(2 * time.Minute)
	tab := &replaceAfterWalk{fakeTable: f.tab, key: old}
	f.tr.sweepTable = tab

	f.tr.sweep(nil)

	got, ok := f.tab.socks[old]
	if !ok || got.Retrans != 2 {
		t.Fatalf("the sweep deleted the open entry a new connection put on the tuple after the walk (present %v, %+v)", ok, got)
	}
}
