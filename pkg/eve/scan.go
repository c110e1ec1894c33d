package eve

import (
	"errors"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// A hand-written single-pass decoder for the fields of rawRecord.
//
// encoding/json validates the whole line, then decodes it with reflection:
// about 30 MB/s here, i.e. some 40,000 EVE http lines per second, far below
// what a busy node's Suricata writes. This scanner validates and decodes in
// one pass, skips unneeded values without allocating and allocates only the
// strings it keeps. It follows encoding/json's semantics (validity, null
// handling, a wrongly typed field leaves the field alone, invalid UTF-8 and
// lone surrogates become U+FFFD, the last of duplicate keys wins), except
// that keys match exactly where encoding/json also accepts other cases: EVE
// keys are lower case, and a "Src_IP" key is not Suricata's. The tests
// compare both decoders over every line of the testdata and under fuzzing.
// Which key goes to which field is not written here: fields.go derives it
// from rawRecord's json tags.

var errSyntax = errors.New("invalid JSON")

// maxDepth bounds nesting as encoding/json does, so hostile input cannot
// exhaust the stack.
const maxDepth = 10000

type scanner struct {
	b     []byte
	i     int
	depth int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// str scans a string starting at its opening quote and returns its raw
// content and whether it contains escapes.
func (s *scanner) str() (raw []byte, esc bool, err error) {
	s.i++ // opening quote
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			raw = s.b[start:s.i]
			s.i++
			return raw, esc, nil
		case c == '\\':
			esc = true
			if s.i+1 >= len(s.b) {
				return nil, false, errSyntax
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.b) {
					return nil, false, errSyntax
				}
				for _, h := range s.b[s.i+2 : s.i+6] {
					if !isHex(h) {
						return nil, false, errSyntax
					}
				}
				s.i += 6
			default:
				return nil, false, errSyntax
			}
		case c < 0x20:
			return nil, false, errSyntax
		default:
			s.i++
		}
	}
	return nil, false, errSyntax
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// number scans a JSON number.
func (s *scanner) number() error {
	if s.peek() == '-' {
		s.i++
	}
	switch c := s.peek(); {
	case c == '0':
		s.i++
	case '1' <= c && c <= '9':
		for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
			s.i++
		}
	default:
		return errSyntax
	}
	if s.peek() == '.' {
		s.i++
		if !s.digits() {
			return errSyntax
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			return errSyntax
		}
	}
	return nil
}

func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

func (s *scanner) literal(lit string) error {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return errSyntax
	}
	s.i += len(lit)
	return nil
}

// skip scans any value and returns its raw bytes.
func (s *scanner) skip() ([]byte, error) {
	start := s.i
	var err error
	switch c := s.peek(); {
	case c == '"':
		_, _, err = s.str()
	case c == '{':
		err = scanObject(s, skipper{})
	case c == '[':
		err = scanArray(s, skipper{})
	case c == 't':
		err = s.literal("true")
	case c == 'f':
		err = s.literal("false")
	case c == 'n':
		err = s.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		err = s.number()
	default:
		err = errSyntax
	}
	if err != nil {
		return nil, err
	}
	return s.b[start:s.i], nil
}

// fielder decodes one object member; field is called positioned at the
// value and must consume it. scanObject and scanArray are generic over it
// rather than taking an interface, so a fielder that is a small struct
// (sliceAppender) is passed by value and never allocated.
type fielder interface {
	field(s *scanner, key []byte) error
}

// elementer decodes one array element, which it must consume.
type elementer interface {
	element(s *scanner) error
}

// skipper consumes whatever it is given.
type skipper struct{}

func (skipper) field(s *scanner, _ []byte) error { _, err := s.skip(); return err }
func (skipper) element(s *scanner) error         { _, err := s.skip(); return err }

// scanObject scans an object starting at '{', calling f with each key
// (unescaped). (codec.decode is the same loop for the EVE structs.)
func scanObject[F fielder](s *scanner, f F) error {
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
		if err := f.field(s, key); err != nil {
			return err
		}
		if more, err := s.nextMember(); !more || err != nil {
			return err
		}
	}
}

// openObject consumes an object's '{' and, if the object is empty, its
// '}'. It counts the nesting depth, which the caller must decrement when
// it leaves the object, error or not.
func (s *scanner) openObject() (empty bool, err error) {
	if s.depth++; s.depth > maxDepth {
		return false, errSyntax
	}
	s.i++
	s.ws()
	if s.peek() == '}' {
		s.i++
		return true, nil
	}
	return false, nil
}

// memberKey scans a member's key (unescaped) and the ':' after it, leaving
// the scanner at the value.
func (s *scanner) memberKey() ([]byte, error) {
	s.ws()
	if s.peek() != '"' {
		return nil, errSyntax
	}
	key, esc, err := s.str()
	if err != nil {
		return nil, err
	}
	if esc {
		key = []byte(unescape(key))
	}
	s.ws()
	if s.peek() != ':' {
		return nil, errSyntax
	}
	s.i++
	s.ws()
	return key, nil
}

// nextMember scans what follows a member's value: ',' (more members) or
// '}' (the end of the object).
func (s *scanner) nextMember() (more bool, err error) {
	s.ws()
	switch s.peek() {
	case ',':
		s.i++
		return true, nil
	case '}':
		s.i++
		return false, nil
	}
	return false, errSyntax
}

// scanArray scans an array starting at '[', calling e at each element.
func scanArray[E elementer](s *scanner, e E) error {
	if s.depth++; s.depth > maxDepth {
		return errSyntax
	}
	defer func() { s.depth-- }()
	s.i++
	s.ws()
	if s.peek() == ']' {
		s.i++
		return nil
	}
	for {
		s.ws()
		if err := e.element(s); err != nil {
			return err
		}
		s.ws()
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		default:
			return errSyntax
		}
	}
}

// strField stores a string value into dst; null and other types leave it.
func (s *scanner) strField(dst *string) error {
	if s.peek() != '"' {
		_, err := s.skip()
		return err
	}
	raw, esc, err := s.str()
	if err != nil {
		return err
	}
	if !esc && utf8.Valid(raw) {
		*dst = string(raw)
	} else {
		*dst = unescape(raw)
	}
	return nil
}

// internField is strField for values from a small known set: the
// canonical string is reused instead of allocating one per line.
func (s *scanner) internField(dst *string, known map[string]string) error {
	if s.peek() == '"' {
		start := s.i
		raw, esc, err := s.str()
		if err != nil {
			return err
		}
		if v, ok := known[string(raw)]; ok && !esc {
			*dst = v
			return nil
		}
		s.i = start
	}
	return s.strField(dst)
}

func (s *scanner) uintField(dst *flexUint) error {
	raw, err := s.skip()
	if err != nil {
		return err
	}
	return dst.UnmarshalJSON(raw)
}

func (s *scanner) spanField(dst *span) error {
	raw, err := s.skip()
	if err != nil {
		return err
	}
	*dst = raw
	return nil
}

type spanMap map[string]span

func (m spanMap) field(s *scanner, key []byte) error {
	raw, err := s.skip()
	m[string(key)] = raw
	return err
}

// unescape decodes a string's raw content the way encoding/json does.
func unescape(raw []byte) string {
	b := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == '\\' && i+1 < len(raw):
			switch raw[i+1] {
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r := hex4(raw[i+2:])
				i += 6
				if utf16.IsSurrogate(r) {
					if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
						if dec := utf16.DecodeRune(r, hex4(raw[i+2:])); dec != utf8.RuneError {
							b = utf8.AppendRune(b, dec)
							i += 6
							continue
						}
					}
					r = utf8.RuneError
				}
				b = utf8.AppendRune(b, r)
				continue
			default: // " \ /
				b = append(b, raw[i+1])
			}
			i += 2
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, size := utf8.DecodeRune(raw[i:])
			if r == utf8.RuneError && size == 1 {
				b = utf8.AppendRune(b, utf8.RuneError)
			} else {
				b = append(b, raw[i:i+size]...)
			}
			i += size
		}
	}
	return string(b)
}

// hex4 decodes 4 hex digits (validated by str), -1 if short.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// decodeRecord fills raw from one line, validating all of it.
func decodeRecord(line []byte, raw *rawRecord) error {
	s := scanner{b: line}
	s.ws()
	if s.peek() != '{' {
		return errSyntax
	}
	if err := rawRecordCodec.decode(&s, unsafe.Pointer(raw)); err != nil {
		return err
	}
	s.ws()
	if s.i != len(s.b) {
		return errSyntax // trailing data, e.g. two records on one line
	}
	return nil
}
