package offheap

import (
	"runtime"
	"testing"
	"unsafe"
)

// Make documents "a zeroed slice of n Ts"; for a zero-size T it returns
// an empty slice, so s[i] for i < n panics in the caller.
func TestReviewMakeZeroSizeTypeHasLengthN(t *testing.T) {
	s, m := Make[struct{}](3)
	defer m.Free()
	if len(s) != 3 {
		t.Errorf("Make[struct{}](3) has length %d, want 3", len(s))
	}
	a, ma := Make[[0]uint64](5)
	defer ma.Free()
	if len(a) != 5 {
		t.Errorf("Make[[0]uint64](5) has length %d, want 5", len(a))
	}
}

// Free says "freeing twice does nothing", but a Mapping is a value: a copy
// freed after the original unmaps whatever mapping the kernel put at the
// same address since (here: another live array), which then faults on use.
func TestReviewFreeOfACopyDoesNotUnmapAnotherArray(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("mappings only on linux here")
	}
	const n = 1 << 16
	_, m := Make[uint64](n)
	if !m.Mapped() {
		t.Fatal("not mapped")
	}
	cp := m // e.g. kept in a struct copied by value
	addr := addrOf(cp)
	if err := m.Free(); err != nil {
		t.Fatal(err)
	}
	s2, m2 := Make[uint64](n) // the kernel usually hands out the same range
	if &s2[0] != (*uint64)(addr) {
		t.Skip("the kernel placed the new mapping elsewhere; nothing to show")
	}
	err := cp.Free() // "freeing twice does nothing"
	// If the second Free unmapped s2's memory, m2.Free now fails (the
	// range is gone) and any use of s2 would fault.
	err2 := m2.Free()
	if err == nil && err2 != nil {
		t.Fatalf("Free of a copy of an already freed Mapping returned nil and unmapped another live array (its own Free now fails: %v)", err2)
	}
}

func addrOf(m Mapping) unsafe.Pointer { return unsafe.Pointer(&m.r.mem[0]) }
