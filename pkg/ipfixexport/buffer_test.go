package ipfixexport

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/flow"
)

// The layout covers every byte of flow.Record: its string headers and the
// rest, and finds the strings nested in Endpoint and L7.
func TestRecordLayoutCoversTheRecord(t *testing.T) {
	lay, err := newRecordLayout()
	if err != nil {
		t.Fatal(err)
	}
	if got := lay.fixed + len(lay.strs)*int(unsafe.Sizeof("")); got != int(lay.size) {
		t.Fatalf("fixed %d + %d strings = %d bytes, flow.Record has %d", lay.fixed, len(lay.strs), got, lay.size)
	}
	var r flow.Record
	want := map[uintptr]bool{
		unsafe.Offsetof(r.Source) + unsafe.Offsetof(r.Source.PodName):     true,
		unsafe.Offsetof(r.Destination) + unsafe.Offsetof(r.Source.Labels): true,
		unsafe.Offsetof(r.ServicePortName):                                true,
		unsafe.Offsetof(r.L7) + unsafe.Offsetof(r.L7.HTTPVals):            true,
	}
	for _, off := range lay.strs {
		delete(want, off)
	}
	if len(want) != 0 {
		t.Fatalf("string fields at offsets %v not found", want)
	}
	t.Logf("flow.Record: %d bytes, %d strings, %d fixed bytes per buffered record", lay.size, len(lay.strs), lay.fixed)
}

// A field holding a pointer other than a string is refused, not copied.
func TestRecordLayoutRejectsPointers(t *testing.T) {
	type withSlice struct {
		A int
		B []byte
	}
	type withStringArray struct{ A [2]string }
	for _, v := range []any{withSlice{}, withStringArray{}, struct{ P *int }{}} {
		l := &recordLayout{}
		if err := l.walk(reflect.TypeOf(v), 0, "x"); err == nil {
			t.Errorf("%T accepted", v)
		}
	}
}

// randomRecord fills every field, strings of random lengths included.
func randomRecord(rnd *rand.Rand, seq uint64) flow.Record {
	r := testRecord(seq, rnd.IntN(3) == 0)
	setL7Details(&r)
	str := func() string {
		if rnd.IntN(4) == 0 {
			return ""
		}
		return strings.Repeat(string(rune('a'+rnd.IntN(26))), rnd.IntN(300))
	}
	r.Source.PodName, r.Destination.Labels, r.L7.HTTPVals, r.ClusterID = str(), str(), str(), str()
	r.Mark, r.Zone, r.Status = rnd.Uint32(), uint16(rnd.Uint32()), rnd.Uint32()
	r.RevDelta.Bytes = rnd.Uint64()
	r.ClusterIP = rnd.IntN(2) == 0
	return r
}

// Records come out as they went in, in order, through wrap-arounds of the
// slots and the arena and its growth.
func TestRecordBufferRoundTrip(t *testing.T) {
	lay, err := newRecordLayout()
	if err != nil {
		t.Fatal(err)
	}
	b := newRecordBuffer(lay, 300)
	rnd := rand.New(rand.NewPCG(7, 7))
	var want []flow.Record
	seq, grew, refused := uint64(0), 0, 0
	for round := 0; round < 20000; round++ {
		if rnd.IntN(2) == 0 {
			r := randomRecord(rnd, seq)
			before := len(b.arena)
			if !b.push(&r) {
				refused++
				if b.n < b.slots() && len(b.arena) < b.slots()*maxArenaBytesPerRecord {
					t.Fatalf("push refused with %d of %d slots and a %d-byte arena", b.n, b.slots(), len(b.arena))
				}
				continue
			}
			if len(b.arena) > before {
				grew++
			}
			seq++
			want = append(want, r)
			continue
		}
		if b.n == 0 {
			continue
		}
		var got flow.Record
		b.peek(&got, rnd.IntN(2) == 0)
		if !reflect.DeepEqual(got, want[0]) {
			t.Fatalf("round %d: got %+v\nwant %+v", round, got, want[0])
		}
		b.pop()
		want = want[1:]
	}
	if b.n != len(want) {
		t.Fatalf("buffer holds %d, want %d", b.n, len(want))
	}
	t.Logf("arena grew %d times to %d bytes; %d pushes refused (full)", grew, len(b.arena), refused)
}

// Filling up: the slot count bounds the buffer, and the arena grows for
// records with long strings up to its bound, beyond which it is full.
func TestRecordBufferBounds(t *testing.T) {
	lay, err := newRecordLayout()
	if err != nil {
		t.Fatal(err)
	}
	b := newRecordBuffer(lay, 1000)
	small := testRecord(1, false)
	small.L7 = flow.L7{}
	for i := range 1000 {
		if !b.push(&small) {
			t.Fatalf("record %d of 1000 refused", i)
		}
	}
	if b.push(&small) {
		t.Fatal("a 1001st record was taken by a 1000-slot buffer")
	}
	b.reset()
	big := testRecord(2, false)
	big.L7.HTTPVals = strings.Repeat("x", 4000)
	n := 0
	for b.push(&big) {
		n++
	}
	if limit := 1000 * maxArenaBytesPerRecord / b.stringBytes(&big); n < limit-1 || n > limit {
		t.Fatalf("%d records of 4 KB held, want about %d (the arena's bound)", n, limit)
	}
	if len(b.arena) != 1000*maxArenaBytesPerRecord {
		t.Fatalf("arena of %d bytes, want its bound %d", len(b.arena), 1000*maxArenaBytesPerRecord)
	}
}
