package offheap

import (
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

type pair struct {
	A [16]byte
	B uint64
}

func TestMakeIsZeroedWritableAndOutsideTheHeap(t *testing.T) {
	const n = 1 << 20 // 24 MiB of pair
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rss0 := rss(t)
	s, m := Make[pair](n)
	if len(s) != n || cap(s) != n {
		t.Fatalf("len %d cap %d, want %d", len(s), cap(s), n)
	}
	if runtime.GOOS == "linux" && !m.Mapped() {
		t.Fatal("not mapped on linux")
	}
	for i := range s {
		if s[i] != (pair{}) {
			t.Fatalf("element %d not zero: %+v", i, s[i])
		}
		s[i].B = uint64(i)
		s[i].A[15] = byte(i)
	}
	for i := range s {
		if s[i].B != uint64(i) || s[i].A[15] != byte(i) {
			t.Fatalf("element %d reads back %+v", i, s[i])
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 1<<20 {
		t.Errorf("the Go heap grew by %d bytes for a %d-byte mapping: it counts toward the heap goal", grew, n*24)
	}
	if runtime.GOOS != "linux" {
		return
	}
	touched := rss(t)
	if touched-rss0 < n*24*9/10 {
		t.Errorf("RSS grew by %d bytes after writing %d: is the memory really there?", touched-rss0, n*24)
	}
	if err := m.Free(); err != nil {
		t.Fatal(err)
	}
	if m.Mapped() {
		t.Error("still mapped after Free")
	}
	if err := m.Free(); err != nil {
		t.Errorf("second Free: %v", err)
	}
	if freed := touched - rss(t); freed < n*24*9/10 {
		t.Errorf("RSS fell by %d bytes after Free of %d: not returned at once", freed, n*24)
	}
}

func TestMakeOfNothing(t *testing.T) {
	s, m := Make[pair](0)
	if s != nil || m.Mapped() {
		t.Fatalf("Make(0) = %v, mapped %v", s, m.Mapped())
	}
	var zero Mapping
	if err := zero.Free(); err != nil {
		t.Fatal(err)
	}
}

func TestMakeRefusesPointers(t *testing.T) {
	type withString struct {
		N int
		S string
	}
	type nested struct {
		Ok  [4]uint32
		Bad [2]struct{ P *int }
	}
	for name, make := range map[string]func(){
		"string": func() { Make[withString](1) },
		"nested": func() { Make[nested](1) },
		"slice":  func() { Make[[]byte](1) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(r.(string), "holds a pointer") {
					t.Fatalf("recovered %v, want a panic naming the pointer", r)
				}
			}()
			make()
		})
	}
	if p := PointerPath(reflect.TypeFor[nested]()); p != "Bad.[]P.ptr" {
		t.Errorf("PointerPath = %q", p)
	}
	if p := PointerPath(reflect.TypeFor[pair]()); p != "" {
		t.Errorf("PointerPath of a pointer-free type = %q", p)
	}
}

// rss reads this process's resident memory in bytes.
func rss(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
