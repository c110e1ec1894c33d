package ipfixexport

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/flow"
)

// recordBuffer is the exporter's bounded FIFO of records waiting to be
// encoded, kept without a single pointer so that the garbage collector
// never scans it (issue 12: 100k buffered flow.Records were 49-60 MB of
// string headers marked by every collection).
//
// A record is split into its fixed part (every byte of flow.Record except
// its string headers: the Conn, counters, times, flags), copied into a slot
// of one []byte, and its strings, appended to a circular byte arena, each
// prefixed with its length as a uvarint. Which bytes are strings is read
// from flow.Record's type once (recordLayout), so fields added to the record
// later are carried without changes here; a field of a kind that holds a
// pointer other than a string (slice, map, pointer...) makes New fail
// rather than be copied unsafely.
//
// The arena starts with arenaBytesPerRecord bytes of strings per slot (a
// Kubernetes record without L7 fields needs about 120) and doubles when a
// record does not fit, up to maxArenaBytesPerRecord per slot (L7 fields,
// HTTP transactions above all, are larger); a record whose strings do not
// fit even then makes the buffer full, as a record beyond the slot count
// does. So memory is about the strings' own size, as with flow.Records
// whose strings are allocated separately, but in one pointer-free block.
type recordBuffer struct {
	lay   *recordLayout
	fixed []byte // slots × lay.fixed
	// str[i] is slot i's strings in the arena: offset and length.
	strOff, strLen []uint32
	arena          []byte
	head, n        int // slots
	aHead, aTail   int // arena bytes in use: [aHead, aTail), wrapping
}

// arenaBytesPerRecord is the string space per slot; minArena keeps room for
// any record that fits in a message, however few slots there are.
const (
	arenaBytesPerRecord    = 128
	maxArenaBytesPerRecord = 1024
	minArena               = 2*maxTCPMessage + 4096
)

// recordLayout is where flow.Record keeps its strings.
type recordLayout struct {
	size  uintptr
	strs  []uintptr // offsets of the string headers
	spans [][2]int  // byte ranges [from, to) of everything else
	fixed int       // bytes in spans
}

func newRecordLayout() (*recordLayout, error) {
	t := reflect.TypeOf(flow.Record{})
	l := &recordLayout{size: t.Size()}
	if err := l.walk(t, 0, "flow.Record"); err != nil {
		return nil, err
	}
	from := 0
	for _, off := range l.strs {
		if int(off) > from {
			l.spans = append(l.spans, [2]int{from, int(off)})
		}
		from = int(off) + int(unsafe.Sizeof(""))
	}
	if int(l.size) > from {
		l.spans = append(l.spans, [2]int{from, int(l.size)})
	}
	for _, s := range l.spans {
		l.fixed += s[1] - s[0]
	}
	return l, nil
}

// walk records the string fields of t at base, and rejects every other
// kind that holds a pointer.
func (l *recordLayout) walk(t reflect.Type, base uintptr, path string) error {
	switch t.Kind() {
	case reflect.String:
		l.strs = append(l.strs, base)
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			if err := l.walk(f.Type, base+f.Offset, path+"."+f.Name); err != nil {
				return err
			}
		}
	case reflect.Array:
		var el recordLayout
		if err := el.walk(t.Elem(), 0, path+"[]"); err != nil {
			return err
		}
		if len(el.strs) > 0 {
			return fmt.Errorf("%s: an array holding strings, which the export buffer does not support", path)
		}
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
	default:
		return fmt.Errorf("%s: a %s holds a pointer the export buffer cannot copy", path, t.Kind())
	}
	return nil
}

func newRecordBuffer(lay *recordLayout, slots int) recordBuffer {
	return recordBuffer{
		lay:    lay,
		fixed:  make([]byte, slots*lay.fixed),
		strOff: make([]uint32, slots),
		strLen: make([]uint32, slots),
		arena:  make([]byte, max(minArena, slots*arenaBytesPerRecord)),
	}
}

// grow doubles the arena (up to its bound), moving the strings of the
// records held to its start in order. It reports whether it grew.
func (b *recordBuffer) grow() bool {
	limit := max(minArena, b.slots()*maxArenaBytesPerRecord)
	if len(b.arena) >= limit {
		return false
	}
	arena := make([]byte, min(limit, 2*len(b.arena)))
	p := 0
	for k, i := 0, b.head; k < b.n; k++ {
		p += copy(arena[p:], b.arena[b.strOff[i]:b.strOff[i]+b.strLen[i]])
		b.strOff[i] = uint32(p) - b.strLen[i]
		if i++; i == b.slots() {
			i = 0
		}
	}
	b.arena, b.aHead, b.aTail = arena, 0, p
	return true
}

func (b *recordBuffer) slots() int { return len(b.strOff) }

// bytesOf views r's memory; only read through it, and write only the
// non-pointer spans, so the garbage collector's view of r's strings stays
// exact.
func (b *recordBuffer) bytesOf(r *flow.Record) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(r)), b.lay.size)
}

func (b *recordBuffer) str(r *flow.Record, off uintptr) *string {
	return (*string)(unsafe.Add(unsafe.Pointer(r), off))
}

// stringBytes is what r's strings take in the arena.
func (b *recordBuffer) stringBytes(r *flow.Record) int {
	n := 0
	for _, off := range b.lay.strs {
		l := len(*b.str(r, off))
		n += l + uvarintLen(l)
	}
	return n
}

func uvarintLen(v int) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

// fits reports whether a record whose strings take need bytes can be
// pushed now, growing the arena if that makes room.
func (b *recordBuffer) fits(need int) bool {
	if b.n == b.slots() {
		return false
	}
	for b.arenaAt(need) < 0 {
		if !b.grow() {
			return false
		}
	}
	return true
}

// arenaAt is where need contiguous free arena bytes start, or -1. When
// the tail end is too short the record starts over at 0, leaving the end
// unused until the head passes it.
func (b *recordBuffer) arenaAt(need int) int {
	if b.n == 0 {
		b.aHead, b.aTail = 0, 0
	}
	if b.aTail >= b.aHead {
		if len(b.arena)-b.aTail >= need {
			return b.aTail
		}
		// Strictly below aHead, so that aTail == aHead only when empty.
		if need < b.aHead {
			return 0
		}
		return -1
	}
	if b.aHead-b.aTail > need {
		return b.aTail
	}
	return -1
}

// push copies r in; it reports false, changing nothing, when the buffer
// has no room for it.
func (b *recordBuffer) push(r *flow.Record) bool {
	need := b.stringBytes(r)
	if !b.fits(need) {
		return false
	}
	at := b.arenaAt(need)
	i := b.head + b.n
	if i >= b.slots() {
		i -= b.slots()
	}
	src := b.bytesOf(r)
	dst := b.fixed[i*b.lay.fixed:]
	o := 0
	for _, s := range b.lay.spans {
		o += copy(dst[o:], src[s[0]:s[1]])
	}
	p := at
	for _, off := range b.lay.strs {
		s := *b.str(r, off)
		p += binary.PutUvarint(b.arena[p:], uint64(len(s)))
		p += copy(b.arena[p:], s)
	}
	b.strOff[i], b.strLen[i] = uint32(at), uint32(need)
	b.aTail = at + need
	b.n++
	return true
}

// peek fills r with the oldest record. Its strings point into the arena:
// valid until that record is popped, so r must not outlive the buffer's
// lock; with clone they are copies.
func (b *recordBuffer) peek(r *flow.Record, clone bool) {
	i := b.head
	*r = flow.Record{}
	dst := b.bytesOf(r)
	src := b.fixed[i*b.lay.fixed:]
	o := 0
	for _, s := range b.lay.spans {
		o += copy(dst[s[0]:s[1]], src[o:])
	}
	p := int(b.strOff[i])
	for _, off := range b.lay.strs {
		l, k := binary.Uvarint(b.arena[p:])
		p += k
		if l == 0 {
			continue
		}
		bs := b.arena[p : p+int(l)]
		p += int(l)
		if clone {
			*b.str(r, off) = string(bs)
		} else {
			*b.str(r, off) = unsafe.String(&bs[0], len(bs))
		}
	}
}

// pop drops the oldest record.
func (b *recordBuffer) pop() {
	i := b.head
	b.aHead = int(b.strOff[i] + b.strLen[i])
	b.head++
	if b.head == b.slots() {
		b.head = 0
	}
	b.n--
}

// reset empties the buffer.
func (b *recordBuffer) reset() { b.head, b.n, b.aHead, b.aTail = 0, 0, 0, 0 }
