// Package offheap allocates large arrays of pointer-free values outside the
// Go heap, in anonymous memory mappings.
//
// Why: the garbage collector sizes its heap goal as a multiple of the live
// heap (GOGC=100: twice), and the runtime keeps the pages below that goal
// resident once it has used them. The agent's connection store is most of
// its live heap at scale (about 250 MB for a million connections), so a
// start-up that produces garbage grows the process to twice the store, and
// the idle agent keeps it: at 1M idle connections 474 MiB of RSS held
// 250 MiB of live data. Memory that is mapped here is not part of the heap
// goal, is freed at once by Free (not when a scavenger gets to it), and is
// never scanned: the heap goal then follows only what the rest of the
// program keeps.
//
// Only values without pointers may live here: the garbage collector does
// not see this memory, so a pointer stored in it would not keep its target
// alive. Make refuses such types. Memory is freed only by Free: the owner
// frees it when it is done (a type whose arrays live here has a Close).
package offheap

import (
	"fmt"
	"reflect"
	"unsafe"

	"k8s.io/klog/v2"
)

// Mapping is the memory behind a slice Make returned. Its zero value (a
// slice on the Go heap) frees nothing. Copies share the mapping: freeing
// one frees it for all, and freeing any of them again does nothing (a
// stale copy must never unmap whatever the kernel mapped at the same
// address since).
type Mapping struct {
	r *region
}

type region struct {
	mem []byte
}

// Make returns a zeroed slice of n Ts in a new anonymous mapping, and the
// mapping, which Free releases. When the mapping cannot be made (the
// kernel refused it, or the platform has none) the slice is allocated on
// the Go heap instead and the mapping is the zero value: callers work the
// same either way. n <= 0 gives an empty slice.
//
// T must hold no pointers (no pointer, slice, string, map, channel,
// function or interface, at any depth); Make panics otherwise, since that
// is a mistake in the calling code, not in its input.
func Make[T any](n int) ([]T, Mapping) {
	typ := reflect.TypeFor[T]()
	if p := PointerPath(typ); p != "" {
		panic(fmt.Sprintf("offheap: %s holds a pointer at %s: it must live on the Go heap", typ, p))
	}
	size := int(typ.Size())
	switch {
	case n <= 0:
		return nil, Mapping{}
	case size == 0:
		return make([]T, n), Mapping{} // takes no memory
	}
	mem, err := mapAnon(n * size)
	if err != nil {
		// Rare (at growth only) and harmless: the same memory, on the
		// heap, counted in the garbage collector's goal.
		klog.InfoS("Could not map memory outside the Go heap; using the heap", "bytes", n*size, "err", err)
		return make([]T, n), Mapping{}
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&mem[0])), n), Mapping{r: &region{mem: mem}}
}

// Mapped reports whether m is a mapping (not the Go heap).
func (m Mapping) Mapped() bool { return m.r != nil && m.r.mem != nil }

// Free unmaps m. Every slice into it must be dropped first: using one
// afterwards faults. Freeing the zero Mapping, or freeing twice, does
// nothing.
func (m *Mapping) Free() error {
	if !m.Mapped() {
		return nil
	}
	mem := m.r.mem
	m.r.mem = nil
	if err := unmap(mem); err != nil {
		return fmt.Errorf("offheap: unmap %d bytes: %w", len(mem), err)
	}
	return nil
}

// PointerPath names the first field of typ that is or holds a pointer
// ("" when none does), for tests and for Make's check.
func PointerPath(typ reflect.Type) string {
	switch typ.Kind() {
	case reflect.Struct:
		for i := range typ.NumField() {
			f := typ.Field(i)
			if p := PointerPath(f.Type); p != "" {
				return f.Name + "." + p
			}
		}
		return ""
	case reflect.Array:
		if typ.Len() == 0 {
			return ""
		}
		if p := PointerPath(typ.Elem()); p != "" {
			return "[]" + p
		}
		return ""
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return ""
	}
	return typ.Kind().String()
}
