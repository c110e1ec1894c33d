package bpfcounters

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// bulkSlots is BULK_SLOTS in bpf/counters.c: the keys one bulk run takes.
const bulkSlots = 1024

// bulkOps looks up or deletes many keys with one run of a syscall-type
// program each (flow_lookup_bulk, flow_delete_bulk): the keys are written
// into the bulk_slots array, which is mapped into this process, and the
// program's answers read from it. A read round and a tick's deletions then
// cost one system call each, not one per key; and a missing key costs
// nothing more, where it ends a batch delete. The caller serialises use
// (mapTable's mutex).
type bulkOps struct {
	lookup, del *ebpf.Program
	mem         []byte
	slots       []bpfBulkSlot
	args        bpfBulkArgs
	attr        testRunAttr
}

// testRunAttr is the kernel's bpf_attr for BPF_PROG_TEST_RUN.
type testRunAttr struct {
	progFD, retval           uint32
	dataSizeIn, dataSizeOut  uint32
	dataIn, dataOut          uint64
	repeat, duration         uint32
	ctxSizeIn, ctxSizeOut    uint32
	ctxIn, ctxOut            uint64
	flags, cpu, batchSize, _ uint32
}

// loadBulk loads the bulk programs against the loaded maps and maps the
// slots; an error says which part this kernel refused.
func loadBulk(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, slots *ebpf.Map) (*bulkOps, error) {
	if slots.MaxEntries() != bulkSlots || slots.ValueSize() != uint32(unsafe.Sizeof(bpfBulkSlot{})) {
		return nil, fmt.Errorf("%s: %d entries of %d bytes, want %d of %d", bpfMapBulkSlots, slots.MaxEntries(), slots.ValueSize(), bulkSlots, unsafe.Sizeof(bpfBulkSlot{}))
	}
	b := &bulkOps{}
	var progs struct {
		Lookup *ebpf.Program `ebpf:"flow_lookup_bulk"`
		Del    *ebpf.Program `ebpf:"flow_delete_bulk"`
	}
	if err := spec.LoadAndAssign(&progs, opts); err != nil {
		return nil, fmt.Errorf("load %s and %s: %w", bpfProgFlowLookupBulk, bpfProgFlowDeleteBulk, err)
	}
	b.lookup, b.del = progs.Lookup, progs.Del
	size := bulkSlots * int(unsafe.Sizeof(bpfBulkSlot{}))
	page := os.Getpagesize()
	mem, err := unix.Mmap(slots.FD(), 0, (size+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		b.close()
		return nil, fmt.Errorf("map %s into memory: %w", bpfMapBulkSlots, err)
	}
	b.mem = mem
	b.slots = unsafe.Slice((*bpfBulkSlot)(unsafe.Pointer(&mem[0])), bulkSlots)
	b.attr = testRunAttr{
		ctxSizeIn: uint32(unsafe.Sizeof(b.args)),
		ctxIn:     uint64(uintptr(unsafe.Pointer(&b.args))),
	}
	// A run that does nothing proves the kernel runs this program type.
	if _, err := b.run(b.lookup, 0); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// run runs p over the first n slots.
func (b *bulkOps) run(p *ebpf.Program, n int) (int, error) {
	b.args = bpfBulkArgs{N: uint32(n)}
	b.attr.progFD = uint32(p.FD())
	// b is heap-allocated and never moves; attr points into it.
	_, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(unix.BPF_PROG_TEST_RUN), uintptr(unsafe.Pointer(&b.attr)), unsafe.Sizeof(b.attr))
	runtime.KeepAlive(b)
	if errno != 0 {
		return 0, fmt.Errorf("run %s: %w", p, errno)
	}
	if int(b.args.Done) != n {
		return 0, fmt.Errorf("run %s: handled %d of %d keys", p, b.args.Done, n)
	}
	return n, nil
}

// runOn runs p over the first keys of ks, as many as the slots hold; it
// returns how many that was.
func (b *bulkOps) runOn(p *ebpf.Program, ks []bpfFlowKey) (int, error) {
	n := min(len(ks), bulkSlots)
	for i := 0; i < n; i++ {
		b.slots[i].Key = ks[i]
	}
	return b.run(p, n)
}

// lookupKeys looks every key of ks up: found[i] and vs[i] are its answer.
func (b *bulkOps) lookupKeys(ks []bpfFlowKey, vs []bpfFlowVal, found []bool) error {
	for len(ks) > 0 {
		n, err := b.runOn(b.lookup, ks)
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			s := &b.slots[i]
			switch s.Err {
			case 0:
				vs[i], found[i] = s.Val, true
			case -int32(unix.ENOENT):
				found[i] = false
			default:
				return fmt.Errorf("look up flow %s: %w", viewOf(&ks[i]), unix.Errno(-s.Err))
			}
		}
		ks, vs, found = ks[n:], vs[n:], found[n:]
	}
	return nil
}

// deleteKeys deletes every key of ks there is.
func (b *bulkOps) deleteKeys(ks []bpfFlowKey) error {
	var errs []error
	for len(ks) > 0 {
		n, err := b.runOn(b.del, ks)
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if e := b.slots[i].Err; e != 0 && e != -int32(unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete flow %s: %w", viewOf(&ks[i]), unix.Errno(-e)))
			}
		}
		ks = ks[n:]
	}
	return errors.Join(errs...)
}

func (b *bulkOps) close() error {
	var errs []error
	if b.mem != nil {
		errs = append(errs, unix.Munmap(b.mem))
		b.mem, b.slots = nil, nil
	}
	for _, p := range []*ebpf.Program{b.lookup, b.del} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(errs...)
}
