package ipfixcollect

import (
	"encoding/hex"
	"errors"
	"math"
	"net/netip"
	"strconv"
	"unicode/utf8"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixie"
)

// Record is one decoded data record. The collector reuses a Record and its
// Fields for the next one once the callback returns: Clone what you keep.
type Record struct {
	Exporter            netip.AddrPort
	ObservationDomainID uint32
	ExportTime          uint32 // message export time, Unix seconds
	SequenceNumber      uint32
	TemplateID          uint16
	// Fields are in template order. Element.Length is the length the
	// template announced (VariableLength for variable-length fields).
	Fields []Field
}

// Field is one decoded IE; which Value member is set follows Element.Type
// (see ipfixie.Value).
type Field struct {
	ipfixie.Element
	ipfixie.Value
}

// Get returns the first field named name.
func (r *Record) Get(name string) (*Field, bool) {
	for i := range r.Fields {
		if r.Fields[i].Name == name {
			return &r.Fields[i], true
		}
	}
	return nil, false
}

// Clone returns a copy that stays valid after the callback returns.
func (r *Record) Clone() Record {
	c := *r
	c.Fields = make([]Field, len(r.Fields))
	copy(c.Fields, r.Fields)
	for i := range c.Fields {
		if b := c.Fields[i].Bytes; b != nil {
			c.Fields[i].Bytes = append([]byte(nil), b...)
		}
	}
	return c
}

// ErrNotFlow is returned by FlowRecord for records without flow addresses,
// such as options records.
var ErrNotFlow = errors.New("record has no source/destination address IEs")

// FlowRecord converts the record into a flow.Record using the shared IE
// tables (ipfixie.FlowIEs, and, when the exporter sent them, the DNS/TLS
// details of ipfixie.L7Details filling flow.L7, the workloads, and the
// ipfixie.HealthElements filling Health and DestinationName); other IEs
// are ignored.
// See ipfixie.FlowBuilder for what the wire format cannot carry.
func (r *Record) FlowRecord() (flow.Record, error) {
	var fb ipfixie.FlowBuilder
	haveSrc, haveDst := false, false
	for i := range r.Fields {
		f := &r.Fields[i]
		if !fb.Set(&f.Element, &f.Value) || f.Enterprise != ipfixie.EnterpriseIANA {
			continue
		}
		switch f.Name {
		case "sourceIPv4Address", "sourceIPv6Address":
			haveSrc = f.Addr.IsValid()
		case "destinationIPv4Address", "destinationIPv6Address":
			haveDst = f.Addr.IsValid()
		}
	}
	if !haveSrc || !haveDst {
		return flow.Record{}, ErrNotFlow
	}
	return fb.Record(), nil
}

// Interface returns the value as a Go value: uint64, int64, float64, bool,
// string (strings, addresses, MAC addresses) or []byte.
func (f *Field) Interface() any {
	switch f.valueKind() {
	case kindUint:
		return f.Uint
	case kindInt:
		return f.Int
	case kindFloat:
		return f.Float
	case kindBool:
		return f.Uint == 1
	case kindString:
		return f.Str
	case kindAddr:
		return f.Addr.String()
	case kindMAC:
		return macString(f.Bytes)
	}
	return f.Bytes
}

type valueKind uint8

const (
	kindBytes valueKind = iota
	kindUint
	kindInt
	kindFloat
	kindBool
	kindString
	kindAddr
	kindMAC
)

// valueKind says which member decode filled; a type whose length did not
// fit it was kept as bytes.
func (f *Field) valueKind() valueKind {
	if f.Bytes != nil && f.Type != ipfixie.MacAddress {
		return kindBytes
	}
	switch f.Type {
	case ipfixie.Unsigned8, ipfixie.Unsigned16, ipfixie.Unsigned32, ipfixie.Unsigned64,
		ipfixie.DateTimeSeconds, ipfixie.DateTimeMilliseconds, ipfixie.DateTimeMicroseconds, ipfixie.DateTimeNanoseconds:
		return kindUint
	case ipfixie.Signed8, ipfixie.Signed16, ipfixie.Signed32, ipfixie.Signed64:
		return kindInt
	case ipfixie.Float32, ipfixie.Float64:
		return kindFloat
	case ipfixie.Boolean:
		return kindBool
	case ipfixie.String:
		return kindString
	case ipfixie.IPv4Address, ipfixie.IPv6Address:
		return kindAddr
	case ipfixie.MacAddress:
		return kindMAC
	}
	return kindBytes
}

func macString(b []byte) string {
	out := make([]byte, 0, len(b)*3)
	for i, c := range b {
		if i > 0 {
			out = append(out, ':')
		}
		out = hex.AppendEncode(out, []byte{c})
	}
	return string(out)
}

// MarshalJSON encodes the record as one object keyed by IE name in template
// order: numbers for integers and times (dateTimeSeconds as Unix seconds),
// strings for strings, addresses and MAC addresses, hex strings for octet
// arrays and unknown IEs.
func (r *Record) MarshalJSON() ([]byte, error) { return r.AppendJSON(nil), nil }

// AppendJSON appends the MarshalJSON encoding to b.
func (r *Record) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	for i := range r.Fields {
		f := &r.Fields[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, f.Name)
		b = append(b, ':')
		switch f.valueKind() {
		case kindUint:
			b = strconv.AppendUint(b, f.Uint, 10)
		case kindInt:
			b = strconv.AppendInt(b, f.Int, 10)
		case kindFloat:
			if math.IsNaN(f.Float) || math.IsInf(f.Float, 0) {
				b = append(b, "null"...)
			} else {
				b = strconv.AppendFloat(b, f.Float, 'g', -1, 64)
			}
		case kindBool:
			b = strconv.AppendBool(b, f.Uint == 1)
		case kindString:
			b = appendJSONString(b, f.Str)
		case kindAddr:
			b = append(b, '"')
			b = f.Addr.AppendTo(b)
			b = append(b, '"')
		case kindMAC:
			b = appendJSONString(b, macString(f.Bytes))
		default:
			b = append(b, '"')
			b = hex.AppendEncode(b, f.Bytes)
			b = append(b, '"')
		}
	}
	return append(b, '}')
}

// appendJSONString quotes s for JSON; invalid UTF-8 becomes U+FFFD so the
// output stays valid whatever an exporter sent.
func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
