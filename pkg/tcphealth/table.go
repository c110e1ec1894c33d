package tcphealth

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// table is the kernel maps as Enrich and the sweep use them; a fake in
// unit tests. One table is used by one goroutine at a time.
type table interface {
	// lookup reads a socket entry; false when there is none.
	lookup(k *bpfSockKey, v *bpfSockStats) (bool, error)
	// takeMinMax reads and deletes the socket's RTT extremes in one
	// operation, so a sample after it starts the next period.
	takeMinMax(k *bpfSockKey, mm *bpfRttMinmax) (bool, error)
	// delete removes the socket entry and its extremes; it reports
	// whether the socket entry existed.
	delete(k *bpfSockKey) (bool, error)
	// deleteClosed removes the socket entry and its extremes only if
	// the entry is still the closed one born at born; it reports whether
	// it removed it.
	deleteClosed(k *bpfSockKey, born uint64) (bool, error)
	// each calls fn for every socket entry (read in batches: an entry
	// changed during the walk may be seen before or after the change).
	each(fn func(k *bpfSockKey, v *bpfSockStats)) error
	// eachMinMax calls fn with the key of every min/max entry.
	eachMinMax(fn func(k *bpfSockKey)) error
	deleteMinMax(k *bpfSockKey) error
	// stat reads one per-CPU statistics slot, summed over CPUs.
	stat(slot uint32) (uint64, error)
}

// walkBatch is how many entries one batch syscall of a walk reads.
const walkBatch = 512

// mapTable is the kernel maps. Keys and values go through its scratch
// fields: a pointer handed to the map API escapes, so a local variable
// would cost an allocation per call.
type mapTable struct {
	socks, minmax, stats *ebpf.Map
	key                  bpfSockKey
	val                  bpfSockStats
	mm                   bpfRttMinmax
	percpu               []uint64
	slot                 uint32
	keys                 []bpfSockKey
	vals                 []bpfSockStats
	mms                  []bpfRttMinmax
}

func newMapTable(m *bpfMaps) *mapTable {
	return &mapTable{
		socks: m.Socks, minmax: m.Minmax, stats: m.Stats,
		percpu: make([]uint64, ebpf.MustPossibleCPU()),
	}
}

func (t *mapTable) lookup(k *bpfSockKey, v *bpfSockStats) (bool, error) {
	t.key = *k
	err := t.socks.Lookup(&t.key, &t.val)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up socket entry: %w", err)
	}
	*v = t.val
	return true, nil
}

func (t *mapTable) takeMinMax(k *bpfSockKey, mm *bpfRttMinmax) (bool, error) {
	t.key = *k
	err := t.minmax.LookupAndDelete(&t.key, &t.mm)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("take rtt min/max: %w", err)
	}
	*mm = t.mm
	return true, nil
}

func (t *mapTable) delete(k *bpfSockKey) (bool, error) {
	t.key = *k
	existed := true
	err := t.socks.Delete(&t.key)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		existed, err = false, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete socket entry: %w", err)
	}
	if err := t.deleteMinMax(k); err != nil {
		return existed, err
	}
	return existed, nil
}

// deleteClosed takes the entry (lookup and delete in one operation, so the
// kernel cannot replace it between the check and the delete) and puts it
// back if it is not the closed entry expected: a new connection's, which
// the kernel put on the tuple since the caller saw the closed one. An
// event of that connection in the short time it is out makes the kernel
// create a fresh entry instead; the put-back then fails (an error: the
// events it held are lost).
func (t *mapTable) deleteClosed(k *bpfSockKey, born uint64) (bool, error) {
	t.key = *k
	err := t.socks.LookupAndDelete(&t.key, &t.val)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("take closed socket entry: %w", err)
	}
	if t.val.BornNs == born && t.val.ClosedNs != 0 {
		return true, t.deleteMinMax(k)
	}
	if err := t.socks.Update(&t.key, &t.val, ebpf.UpdateNoExist); err != nil {
		return false, fmt.Errorf("put back a new connection's socket entry: %w", err)
	}
	return false, nil
}

func (t *mapTable) deleteMinMax(k *bpfSockKey) error {
	t.key = *k
	err := t.minmax.Delete(&t.key)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete rtt min/max: %w", err)
	}
	return nil
}

func (t *mapTable) each(fn func(k *bpfSockKey, v *bpfSockStats)) error {
	if t.keys == nil {
		t.keys = make([]bpfSockKey, walkBatch)
		t.vals = make([]bpfSockStats, walkBatch)
	}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := t.socks.BatchLookup(&cursor, t.keys, t.vals, nil)
		for i := range n {
			fn(&t.keys[i], &t.vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the walk is complete
		}
		if err != nil {
			return fmt.Errorf("walk socket map: %w", err)
		}
	}
}

func (t *mapTable) eachMinMax(fn func(k *bpfSockKey)) error {
	if t.keys == nil {
		t.keys = make([]bpfSockKey, walkBatch)
		t.vals = make([]bpfSockStats, walkBatch)
	}
	if t.mms == nil {
		t.mms = make([]bpfRttMinmax, walkBatch)
	}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := t.minmax.BatchLookup(&cursor, t.keys, t.mms, nil)
		for i := range n {
			fn(&t.keys[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("walk rtt min/max map: %w", err)
		}
	}
}

func (t *mapTable) stat(slot uint32) (uint64, error) {
	t.slot = slot
	if err := t.stats.Lookup(&t.slot, t.percpu); err != nil {
		return 0, fmt.Errorf("read statistics slot %d: %w", slot, err)
	}
	var sum uint64
	for _, v := range t.percpu {
		sum += v
	}
	return sum, nil
}
