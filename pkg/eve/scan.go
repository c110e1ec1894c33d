package eve

import (
	"errors"
	"unicode/utf16"
	"unicode/utf8"
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
		err = s.object(skipper{})
	case c == '[':
		err = s.array(skipper{})
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
// value and must consume it. Methods rather than closures keep the scanner
// from allocating one closure per object.
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

// object scans an object starting at '{', calling f with each key
// (unescaped).
func (s *scanner) object(f fielder) error {
	if s.depth++; s.depth > maxDepth {
		return errSyntax
	}
	defer func() { s.depth-- }()
	s.i++
	s.ws()
	if s.peek() == '}' {
		s.i++
		return nil
	}
	for {
		s.ws()
		if s.peek() != '"' {
			return errSyntax
		}
		key, esc, err := s.str()
		if err != nil {
			return err
		}
		if esc {
			key = []byte(unescape(key))
		}
		s.ws()
		if s.peek() != ':' {
			return errSyntax
		}
		s.i++
		s.ws()
		if err := f.field(s, key); err != nil {
			return err
		}
		s.ws()
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return errSyntax
		}
	}
}

// array scans an array starting at '[', calling e at each element.
func (s *scanner) array(e elementer) error {
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

// structField decodes an object into f; null and other types leave it.
func (s *scanner) structField(f fielder) error {
	if s.peek() != '{' {
		_, err := s.skip()
		return err
	}
	return s.object(f)
}

// ptrField decodes into *p (allocating it) when the value is an object and
// sets it to nil for null, as encoding/json does for pointers.
func ptrField[T any, PT interface {
	*T
	fielder
}](s *scanner, p **T) error {
	switch s.peek() {
	case '{':
		if *p == nil {
			*p = new(T)
		}
		return s.object(PT(*p))
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

// sliceAppender appends one decoded element per array element; elements
// that are not objects are appended as zero values, as encoding/json does.
type sliceAppender[T any, PT interface {
	*T
	fielder
}] struct{ out []T }

func (a *sliceAppender[T, PT]) element(s *scanner) error {
	var v T
	if s.peek() == '{' {
		if err := s.object(PT(&v)); err != nil {
			return err
		}
	} else if _, err := s.skip(); err != nil {
		return err
	}
	a.out = append(a.out, v)
	return nil
}

// sliceField decodes an array of objects into *p; null sets it to nil.
func sliceField[T any, PT interface {
	*T
	fielder
}](s *scanner, p *[]T) error {
	switch s.peek() {
	case '[':
		a := sliceAppender[T, PT]{out: (*p)[:0]}
		err := s.array(&a)
		if a.out == nil {
			a.out = []T{}
		}
		*p = a.out
		return err
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

func (s *scanner) spanMapField(p *map[string]span) error {
	switch s.peek() {
	case '{':
		if *p == nil {
			*p = map[string]span{}
		}
		return s.object(spanMap(*p))
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
	if err := s.object(raw); err != nil {
		return err
	}
	s.ws()
	if s.i != len(s.b) {
		return errSyntax // trailing data, e.g. two records on one line
	}
	return nil
}

func (r *rawRecord) field(s *scanner, key []byte) error {
	switch string(key) {
	case "timestamp":
		return s.strField(&r.Timestamp)
	case "flow_id":
		return s.uintField(&r.FlowID)
	case "event_type":
		return s.strField(&r.EventType)
	case "src_ip":
		return s.strField(&r.SrcIP)
	case "src_port":
		return s.uintField(&r.SrcPort)
	case "dest_ip":
		return s.strField(&r.DestIP)
	case "dest_port":
		return s.uintField(&r.DestPort)
	case "proto":
		return s.strField(&r.Proto)
	case "tx_id":
		return s.uintField(&r.TxID)
	case "app_proto":
		return s.strField(&r.AppProto)
	case "http":
		return ptrField(s, &r.HTTP)
	case "dns":
		return ptrField(s, &r.DNS)
	case "tls":
		return ptrField(s, &r.TLS)
	}
	_, err := s.skip()
	return err
}

func (h *rawHTTP) field(s *scanner, key []byte) error {
	switch string(key) {
	case "hostname":
		return s.strField(&h.Hostname)
	case "url":
		return s.strField(&h.URL)
	case "http_user_agent":
		return s.strField(&h.UserAgent)
	case "http_content_type":
		return s.strField(&h.ContentType)
	case "http_method":
		return s.strField(&h.Method)
	case "protocol":
		return s.strField(&h.Protocol)
	case "status":
		return s.uintField(&h.Status)
	case "length":
		return s.uintField(&h.Length)
	case "version":
		return s.strField(&h.Version)
	case "request_headers":
		return s.spanField(&h.RequestHeaders)
	case "response_headers":
		return s.spanField(&h.ResponseHeaders)
	}
	_, err := s.skip()
	return err
}

func (d *rawDNS) field(s *scanner, key []byte) error {
	switch string(key) {
	case "version":
		return s.uintField(&d.Version)
	case "type":
		return s.strField(&d.Type)
	case "id":
		return s.uintField(&d.ID)
	case "tx_id":
		return s.uintField(&d.TxID)
	case "rrname":
		return s.strField(&d.RRName)
	case "rrtype":
		return s.strField(&d.RRType)
	case "rcode":
		return s.strField(&d.RCode)
	case "rdata":
		return s.strField(&d.RData)
	case "queries":
		return sliceField(s, &d.Queries)
	case "answers":
		return sliceField(s, &d.Answers)
	case "grouped":
		return s.spanMapField(&d.Grouped)
	}
	_, err := s.skip()
	return err
}

func (q *rawDNSRecord) field(s *scanner, key []byte) error {
	switch string(key) {
	case "rrname":
		return s.strField(&q.RRName)
	case "rrtype":
		return s.strField(&q.RRType)
	case "rdata":
		return s.strField(&q.RData)
	}
	_, err := s.skip()
	return err
}

func (t *rawTLS) field(s *scanner, key []byte) error {
	switch string(key) {
	case "sni":
		return s.strField(&t.SNI)
	case "version":
		return s.strField(&t.Version)
	case "ja3":
		return s.structField(&t.JA3)
	case "ja3s":
		return s.structField(&t.JA3S)
	case "ja4":
		return s.strField(&t.JA4)
	}
	_, err := s.skip()
	return err
}

func (h *rawHash) field(s *scanner, key []byte) error {
	if string(key) == "hash" {
		return s.strField(&h.Hash)
	}
	_, err := s.skip()
	return err
}

func (h *rawHeader) field(s *scanner, key []byte) error {
	switch string(key) {
	case "name":
		return s.strField(&h.Name)
	case "value":
		return s.strField(&h.Value)
	}
	_, err := s.skip()
	return err
}
