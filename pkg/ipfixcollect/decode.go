package ipfixcollect

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/flowlens/flowlens/pkg/ipfixie"
)

const (
	headerLen        = 16
	ipfixVersion     = 10
	templateSetID    = 2
	optionsSetID     = 3
	minDataSetID     = 256
	variableLenMark  = 255
	maxMessageLength = 65535
)

// session is what one exporter transport session (a TCP connection, or a
// UDP source address) announced: its templates, by observation domain.
type session struct {
	exporter  netip.AddrPort
	lim       sessionLimits
	templates map[templateKey]*template
	// templateFields is the number of field specifiers over all templates:
	// what the templates cost in memory.
	templateFields int
	// fieldsLeft is what the message being decoded may still decode.
	fieldsLeft int
	rec        Record // reused for every record
}

// sessionLimits bound what one peer can make a session hold or decode
// (Config.MaxTemplatesPerSession, MaxTemplateFieldsPerSession,
// MaxFieldsPerMessage).
type sessionLimits struct {
	maxTemplates      int
	maxTemplateFields int
	maxFields         int
}

type templateKey struct {
	domain uint32
	id     uint16
}

type template struct {
	elems  []ipfixie.Element
	minLen int
}

func newSession(exporter netip.AddrPort, lim sessionLimits) *session {
	return &session{exporter: exporter, lim: lim, templates: map[templateKey]*template{}}
}

// decodeError names what was wrong, for the error counter's reason label.
type decodeError struct {
	reason string
	err    error
}

func (e *decodeError) Error() string { return e.reason + ": " + e.err.Error() }

func malformed(format string, args ...any) error {
	return &decodeError{reason: reasonMalformed, err: fmt.Errorf(format, args...)}
}

// Reasons a message is not decoded to its end (the error counter's label).
const (
	reasonMalformed  = "malformed"
	reasonFieldLimit = "field_limit"
)

// stats counts what decoding one message skipped without failing.
type stats struct {
	records          int
	unknownTemplates int
	unknownSets      int
	// zeroLength counts templates rejected for a fixed-length field of
	// length 0.
	zeroLength int
	// templatesRefused and templateFieldsRefused count templates not kept
	// because the session is at MaxTemplatesPerSession or would exceed
	// MaxTemplateFieldsPerSession.
	templatesRefused      int
	templateFieldsRefused int
}

// message decodes one IPFIX message, calling emit for each data record. A
// malformed set ends decoding of the message; the records before it were
// emitted.
func (s *session) message(msg []byte, emit func(*Record)) (stats, error) {
	var st stats
	if len(msg) < headerLen {
		return st, malformed("message of %d bytes, shorter than the header", len(msg))
	}
	if v := binary.BigEndian.Uint16(msg); v != ipfixVersion {
		return st, malformed("version %d, want %d", v, ipfixVersion)
	}
	if l := int(binary.BigEndian.Uint16(msg[2:])); l != len(msg) {
		return st, malformed("header length %d, message has %d bytes", l, len(msg))
	}
	s.rec.Exporter = s.exporter
	s.rec.ExportTime = binary.BigEndian.Uint32(msg[4:])
	s.rec.SequenceNumber = binary.BigEndian.Uint32(msg[8:])
	domain := binary.BigEndian.Uint32(msg[12:])
	s.rec.ObservationDomainID = domain
	s.fieldsLeft = s.lim.maxFields
	p := msg[headerLen:]
	for len(p) > 0 {
		if len(p) < 4 {
			return st, malformed("%d trailing bytes, too short for a set header", len(p))
		}
		id, l := binary.BigEndian.Uint16(p), int(binary.BigEndian.Uint16(p[2:]))
		if l < 4 || l > len(p) {
			return st, malformed("set %d length %d, %d bytes left", id, l, len(p))
		}
		body := p[4:l]
		p = p[l:]
		var err error
		switch {
		case id == templateSetID || id == optionsSetID:
			err = s.templateSet(domain, id, body, &st)
		case id >= minDataSetID:
			t, ok := s.templates[templateKey{domain, id}]
			if !ok {
				st.unknownTemplates++
				continue
			}
			s.rec.TemplateID = id
			var n int
			n, err = s.dataSet(t, body, emit)
			st.records += n
		default:
			st.unknownSets++
		}
		if err != nil {
			return st, err
		}
	}
	return st, nil
}

func (s *session) templateSet(domain uint32, setID uint16, body []byte, st *stats) error {
	// Fewer than 4 bytes left is padding (RFC 7011 section 3.3.1).
	for len(body) >= 4 {
		id, count := binary.BigEndian.Uint16(body), int(binary.BigEndian.Uint16(body[2:]))
		body = body[4:]
		if count == 0 {
			s.withdraw(domain, setID, id)
			continue
		}
		if id < minDataSetID {
			return malformed("template id %d below %d", id, minDataSetID)
		}
		if setID == optionsSetID {
			if len(body) < 2 {
				return malformed("options template %d: no scope field count", id)
			}
			body = body[2:]
		}
		// count is the peer's claim: size the slice by what the set holds.
		t := &template{elems: make([]ipfixie.Element, 0, min(count, len(body)/4))}
		zeroLength := false
		for range count {
			if len(body) < 4 {
				return malformed("template %d: truncated field specifier", id)
			}
			eid, length := binary.BigEndian.Uint16(body), binary.BigEndian.Uint16(body[2:])
			body = body[4:]
			ent := ipfixie.EnterpriseIANA
			if eid&0x8000 != 0 {
				if len(body) < 4 {
					return malformed("template %d: truncated enterprise number", id)
				}
				eid &^= 0x8000
				ent = binary.BigEndian.Uint32(body)
				body = body[4:]
			}
			switch length {
			case 0:
				// A field that takes no bytes lets a record take (almost)
				// none: one datagram would decode as tens of thousands of
				// records of thousands of fields each.
				zeroLength = true
				continue
			case ipfixie.VariableLength:
				t.minLen++
			default:
				t.minLen += int(length)
			}
			if zeroLength {
				continue // the template is dropped: only parse past it
			}
			e, ok := ipfixie.Lookup(ent, eid)
			if !ok {
				e = ipfixie.Unknown(ent, eid, length)
			}
			e.Length = length
			t.elems = append(t.elems, e)
		}
		key := templateKey{domain, id}
		// Whatever happens to the new definition, the old one is void:
		// decoding later data with it would misread the exporter's records.
		s.remove(key)
		switch {
		case zeroLength:
			st.zeroLength++
		case len(s.templates) >= s.lim.maxTemplates:
			st.templatesRefused++
		case s.templateFields+len(t.elems) > s.lim.maxTemplateFields:
			st.templateFieldsRefused++
		default:
			s.templates[key] = t
			s.templateFields += len(t.elems)
		}
	}
	return nil
}

func (s *session) remove(k templateKey) {
	if t, ok := s.templates[k]; ok {
		s.templateFields -= len(t.elems)
		delete(s.templates, k)
	}
}

// withdraw handles a template withdrawal; the set id as template id
// withdraws all templates of that kind (RFC 7011 section 8.1).
func (s *session) withdraw(domain uint32, setID, id uint16) {
	if id != setID {
		s.remove(templateKey{domain, id})
		return
	}
	for k := range s.templates {
		if k.domain == domain {
			s.remove(k)
		}
	}
}

func (s *session) dataSet(t *template, body []byte, emit func(*Record)) (int, error) {
	n := 0
	// Fewer bytes than the shortest record is padding.
	for len(body) >= t.minLen {
		if len(t.elems) > s.fieldsLeft {
			return n, &decodeError{reason: reasonFieldLimit,
				err: fmt.Errorf("template %d: more than MaxFieldsPerMessage (%d) fields in one message", s.rec.TemplateID, s.lim.maxFields)}
		}
		s.fieldsLeft -= len(t.elems)
		fields := s.rec.Fields[:0]
		for _, e := range t.elems {
			l := int(e.Length)
			if e.Length == ipfixie.VariableLength {
				if len(body) < 1 {
					return n, malformed("template %d: truncated variable length", s.rec.TemplateID)
				}
				l, body = int(body[0]), body[1:]
				if l == variableLenMark {
					if len(body) < 2 {
						return n, malformed("template %d: truncated variable length", s.rec.TemplateID)
					}
					l, body = int(binary.BigEndian.Uint16(body)), body[2:]
				}
			}
			if len(body) < l {
				return n, malformed("template %d: field %s needs %d bytes, %d left", s.rec.TemplateID, e.Name, l, len(body))
			}
			fields = append(fields, Field{Element: e, Value: decodeValue(e.Type, body[:l])})
			body = body[l:]
		}
		s.rec.Fields = fields
		emit(&s.rec)
		n++
	}
	return n, nil
}

// decodeValue decodes b per its type. Lengths the type cannot have (reduced
// encodings are allowed, RFC 7011 section 6.2) keep the raw bytes instead.
func decodeValue(t ipfixie.DataType, b []byte) ipfixie.Value {
	var v ipfixie.Value
	switch t {
	case ipfixie.Unsigned8, ipfixie.Unsigned16, ipfixie.Unsigned32, ipfixie.Unsigned64,
		ipfixie.DateTimeSeconds, ipfixie.DateTimeMilliseconds, ipfixie.DateTimeMicroseconds, ipfixie.DateTimeNanoseconds,
		ipfixie.Boolean:
		if len(b) >= 1 && len(b) <= 8 {
			v.Uint = beUint(b)
			return v
		}
	case ipfixie.Signed8, ipfixie.Signed16, ipfixie.Signed32, ipfixie.Signed64:
		if len(b) >= 1 && len(b) <= 8 {
			shift := uint(64 - 8*len(b))
			v.Int = int64(beUint(b)<<shift) >> shift
			return v
		}
	case ipfixie.Float32, ipfixie.Float64:
		switch len(b) {
		case 4:
			v.Float = float64(math.Float32frombits(binary.BigEndian.Uint32(b)))
			return v
		case 8:
			v.Float = math.Float64frombits(binary.BigEndian.Uint64(b))
			return v
		}
	case ipfixie.String:
		// RFC 7011 strings are UTF-8; an exporter that sends other bytes
		// must not make every consumer (Prometheus labels, which panic on
		// them, JSON, ClickHouse) cope: invalid bytes become U+FFFD here.
		if utf8.Valid(b) {
			v.Str = string(b)
		} else {
			v.Str = strings.ToValidUTF8(string(b), "\uFFFD")
		}
		return v
	case ipfixie.IPv4Address, ipfixie.IPv6Address:
		if a, ok := netip.AddrFromSlice(b); ok {
			v.Addr = a
			return v
		}
	}
	v.Bytes = append(make([]byte, 0, len(b)), b...)
	return v
}

func beUint(b []byte) uint64 {
	var x uint64
	for _, c := range b {
		x = x<<8 | uint64(c)
	}
	return x
}
