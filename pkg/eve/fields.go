package eve

import (
	"fmt"
	"reflect"
	"strings"
	"unsafe"
)

// The scanner's key -> field tables are derived once, at package
// initialisation, from the json tags of rawRecord and the types it holds:
// the tags are the one place an EVE key is named, read both by the scanner
// and by encoding/json (which the tests compare it with). Adding a field is
// adding a tagged struct field; its Go type picks the decoder. The tables
// are never written after initialisation.
//
// A field is decoded in place through its offset in the struct (reflect
// computes the offsets; the decoder for each field is chosen by its type,
// so the pointer and the type always agree). This keeps the scanner's
// speed: a table lookup per key, no reflection per value.

// rawRecordCodec and headersCodec are the read-only tables the parser uses.
var (
	rawRecordCodec = newCodecs().object(reflect.TypeFor[rawRecord]())
	headersDecoder = newCodecs().decoder(reflect.TypeFor[[]rawHeader](), "")
)

// decodeFunc decodes the value at the scanner's position into the field at
// p, consuming the value whatever its type.
type decodeFunc func(s *scanner, p unsafe.Pointer) error

// codec is the table of one struct type: its fields by JSON key. A key is
// found by its length and first byte (index), then one compare: a struct
// has a dozen keys, so that pair almost always names one candidate, and a
// key that is not there (most keys of a record) usually costs no compare.
type codec struct {
	fields []fieldCodec
	// index[len(key)][key[0]] is 1 + the index in fields of the first
	// candidate, 0 for none; candidates chain through fieldCodec.next.
	index [][128]uint16
}

type fieldCodec struct {
	key  string
	off  uintptr
	kind fieldKind
	next uint16 // 1 + index of the next key of the same length and first byte
	// decode is used for kindOther; the common kinds are called directly.
	decode decodeFunc
}

type fieldKind uint8

const (
	kindOther fieldKind = iota
	kindString
	kindUint
)

func (c *codec) add(f fieldCodec) {
	if f.key[0] >= 128 {
		panic(fmt.Sprintf("eve: key %q does not start with an ASCII byte", f.key))
	}
	for len(c.index) <= len(f.key) {
		c.index = append(c.index, [128]uint16{})
	}
	slot := &c.index[len(f.key)][f.key[0]]
	f.next = *slot
	c.fields = append(c.fields, f)
	*slot = uint16(len(c.fields))
}

func (c *codec) lookup(key []byte) *fieldCodec {
	n := len(key)
	if n == 0 || n >= len(c.index) || key[0] >= 128 {
		return nil
	}
	for i := c.index[n][key[0]]; i != 0; {
		f := &c.fields[i-1]
		if f.key == string(key) {
			return f
		}
		i = f.next
	}
	return nil
}

// decode decodes the object at the scanner (at its '{') into the struct at
// p. It is scanObject's loop with the field dispatch written in, which
// saves an indirect call per member: this is the parser's inner loop.
func (c *codec) decode(s *scanner, p unsafe.Pointer) error {
	empty, err := s.openObject()
	defer func() { s.depth-- }()
	if err != nil || empty {
		return err
	}
	for {
		key, err := s.memberKey()
		if err != nil {
			return err
		}
		if f := c.lookup(key); f == nil {
			_, err = s.skip()
		} else {
			fp := unsafe.Add(p, f.off)
			switch f.kind {
			case kindString:
				err = s.strField((*string)(fp))
			case kindUint:
				err = s.uintField((*flexUint)(fp))
			default:
				err = f.decode(s, fp)
			}
		}
		if err != nil {
			return err
		}
		if more, err := s.nextMember(); !more || err != nil {
			return err
		}
	}
}

// codecs builds the tables, sharing one codec per struct type.
type codecs map[reflect.Type]*codec

func newCodecs() codecs { return codecs{} }

func (cs codecs) object(t reflect.Type) *codec {
	if c, ok := cs[t]; ok {
		return c
	}
	c := &codec{}
	cs[t] = c
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if key == "" || key == "-" {
			continue
		}
		if c.lookup([]byte(key)) != nil {
			panic(fmt.Sprintf("eve: %s: key %q declared twice", t, key))
		}
		fc := fieldCodec{key: key, off: f.Offset, decode: cs.decoder(f.Type, f.Tag.Get("eve"))}
		switch {
		case f.Type == reflect.TypeFor[string]() && f.Tag.Get("eve") == "":
			fc.kind = kindString
		case f.Type == reflect.TypeFor[flexUint]():
			fc.kind = kindUint
		}
		c.add(fc)
	}
	return c
}

// decoder returns the decoder for a field of type t. It follows
// encoding/json's semantics for each kind (see scan.go); a type the EVE
// structs do not use is a programming error caught at start-up.
func (cs codecs) decoder(t reflect.Type, opt string) decodeFunc {
	switch t {
	case reflect.TypeFor[string]():
		if opt == "intern" {
			return func(s *scanner, p unsafe.Pointer) error { return s.internField((*string)(p), knownNames) }
		}
		return func(s *scanner, p unsafe.Pointer) error { return s.strField((*string)(p)) }
	case reflect.TypeFor[flexUint]():
		return func(s *scanner, p unsafe.Pointer) error { return s.uintField((*flexUint)(p)) }
	case reflect.TypeFor[span]():
		return func(s *scanner, p unsafe.Pointer) error { return s.spanField((*span)(p)) }
	case reflect.TypeFor[map[string]span]():
		return func(s *scanner, p unsafe.Pointer) error { return s.spanMapField((*map[string]span)(p)) }
	}
	switch {
	case t.Kind() == reflect.Struct:
		c := cs.object(t)
		return func(s *scanner, p unsafe.Pointer) error { return structField(s, c, p) }
	case t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct:
		c := cs.object(t.Elem())
		return func(s *scanner, p unsafe.Pointer) error { return ptrField(s, c, t.Elem(), (*unsafe.Pointer)(p)) }
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		c := cs.object(t.Elem())
		return func(s *scanner, p unsafe.Pointer) error { return sliceField(s, c, reflect.NewAt(t, p).Elem()) }
	}
	panic(fmt.Sprintf("eve: no JSON decoder for field type %s", t))
}

// structField decodes an object into the struct at p; null and other types
// leave it.
func structField(s *scanner, c *codec, p unsafe.Pointer) error {
	if s.peek() != '{' {
		_, err := s.skip()
		return err
	}
	return c.decode(s, p)
}

// ptrField decodes into *pp (allocating a t) when the value is an object
// and sets it to nil for null, as encoding/json does for pointers.
func ptrField(s *scanner, c *codec, t reflect.Type, pp *unsafe.Pointer) error {
	switch s.peek() {
	case '{':
		if *pp == nil {
			*pp = reflect.New(t).UnsafePointer()
		}
		return c.decode(s, *pp)
	case 'n':
		if err := s.literal("null"); err != nil {
			return err
		}
		*pp = nil
		return nil
	}
	_, err := s.skip()
	return err
}

// sliceAppender appends one decoded element per array element; elements
// that are not objects are appended as zero values, as encoding/json does.
type sliceAppender struct {
	c *codec
	v reflect.Value // the addressable slice
}

func (a sliceAppender) element(s *scanner) error {
	n := a.v.Len()
	a.v.Grow(1)
	a.v.SetLen(n + 1)
	e := a.v.Index(n)
	e.SetZero() // the backing array may hold an earlier decode's element
	if s.peek() == '{' {
		return a.c.decode(s, e.Addr().UnsafePointer())
	}
	_, err := s.skip()
	return err
}

// sliceField decodes an array of objects into the slice v, reusing its
// backing array; null sets it to nil.
func sliceField(s *scanner, c *codec, v reflect.Value) error {
	switch s.peek() {
	case '[':
		v.SetLen(0)
		err := scanArray(s, sliceAppender{c, v})
		if v.IsNil() {
			v.Set(reflect.MakeSlice(v.Type(), 0, 0))
		}
		return err
	case 'n':
		if err := s.literal("null"); err != nil {
			return err
		}
		v.SetZero()
		return nil
	}
	_, err := s.skip()
	return err
}

func (s *scanner) spanMapField(p *map[string]span) error {
	switch s.peek() {
	case '{':
		if *p == nil {
			*p = map[string]span{}
		}
		return scanObject(s, spanMap(*p))
	case 'n':
		if err := s.literal("null"); err != nil {
			return err
		}
		*p = nil
		return nil
	}
	_, err := s.skip()
	return err
}
