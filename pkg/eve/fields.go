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

// codec is the table of one struct type: its fields by JSON key.
type codec struct {
	fields map[string]fieldCodec
}

type fieldCodec struct {
	off    uintptr
	decode decodeFunc
}

// objectDecoder decodes the members of an object into the struct at p.
type objectDecoder struct {
	c *codec
	p unsafe.Pointer
}

func (d objectDecoder) field(s *scanner, key []byte) error {
	if f, ok := d.c.fields[string(key)]; ok {
		return f.decode(s, unsafe.Add(d.p, f.off))
	}
	_, err := s.skip()
	return err
}

// codecs builds the tables, sharing one codec per struct type.
type codecs map[reflect.Type]*codec

func newCodecs() codecs { return codecs{} }

func (cs codecs) object(t reflect.Type) *codec {
	if c, ok := cs[t]; ok {
		return c
	}
	c := &codec{fields: map[string]fieldCodec{}}
	cs[t] = c
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if key == "" || key == "-" {
			continue
		}
		if _, dup := c.fields[key]; dup {
			panic(fmt.Sprintf("eve: %s: key %q declared twice", t, key))
		}
		c.fields[key] = fieldCodec{off: f.Offset, decode: cs.decoder(f.Type, f.Tag.Get("eve"))}
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
	return scanObject(s, objectDecoder{c, p})
}

// ptrField decodes into *pp (allocating a t) when the value is an object
// and sets it to nil for null, as encoding/json does for pointers.
func ptrField(s *scanner, c *codec, t reflect.Type, pp *unsafe.Pointer) error {
	switch s.peek() {
	case '{':
		if *pp == nil {
			*pp = reflect.New(t).UnsafePointer()
		}
		return scanObject(s, objectDecoder{c, *pp})
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
		return scanObject(s, objectDecoder{a.c, e.Addr().UnsafePointer()})
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
