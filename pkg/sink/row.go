package sink

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/flowlens/flowlens/pkg/correlate"
)

// Row is one output row by column, as a sink stored it: what readers of
// the JSON lines (ParseJSONRow) and of the ClickHouse table get, so both
// can be compared with each other and with RowOf a record.
type Row struct {
	vals []value
}

type value struct {
	s   string
	n   uint64
	set bool
}

// NewRow is a row with no column set.
func NewRow() Row { return Row{vals: make([]value, len(columns))} }

// RowOf is the row a sink writes for r.
func RowOf(r *correlate.Record, m *Meta) Row {
	row := NewRow()
	for i := range columns {
		c := &columns[i]
		row.vals[i] = value{s: c.Str(r, m), n: c.Num(r, m), set: true}
	}
	return row
}

func (r *Row) at(name string) *value {
	i, ok := columnIndex[name]
	if !ok || i >= len(r.vals) {
		return nil
	}
	return &r.vals[i]
}

// Has reports whether the row carried the column.
func (r *Row) Has(name string) bool {
	v := r.at(name)
	return v != nil && v.set
}

// Str is a String column's value ("" when absent or not a String).
func (r *Row) Str(name string) string {
	if v := r.at(name); v != nil {
		return v.s
	}
	return ""
}

// Num is a numeric column's value (DateTime: Unix seconds).
func (r *Row) Num(name string) uint64 {
	if v := r.at(name); v != nil {
		return v.n
	}
	return 0
}

// Time is a DateTime column's value.
func (r *Row) Time(name string) time.Time { return time.Unix(int64(r.Num(name)), 0).UTC() }

// SetStr sets a String column.
func (r *Row) SetStr(name, s string) error {
	c, v, err := r.settable(name)
	if err != nil {
		return err
	}
	if c.Type != TypeString {
		return fmt.Errorf("column %s: %s, not String", name, c.Type)
	}
	*v = value{s: s, set: true}
	return nil
}

// SetNum sets a numeric column, rejecting a value its type cannot hold.
func (r *Row) SetNum(name string, n uint64) error {
	c, v, err := r.settable(name)
	if err != nil {
		return err
	}
	if !c.Type.Numeric() {
		return fmt.Errorf("column %s: String, not a number", name)
	}
	if n > c.Type.Max() {
		return fmt.Errorf("column %s: %d out of range for %s", name, n, c.Type)
	}
	*v = value{n: n, set: true}
	return nil
}

func (r *Row) settable(name string) (*Column, *value, error) {
	i, ok := columnIndex[name]
	if !ok {
		return nil, nil, fmt.Errorf("no column %q", name)
	}
	if r.vals == nil {
		r.vals = make([]value, len(columns))
	}
	return &columns[i], &r.vals[i], nil
}

// Diff lists the columns where r and o differ, as "name: a != b".
func (r *Row) Diff(o *Row) []string {
	var out []string
	for i, c := range columns {
		var a, b value
		if i < len(r.vals) {
			a = r.vals[i]
		}
		if i < len(o.vals) {
			b = o.vals[i]
		}
		if a != b {
			if c.Type.Numeric() {
				out = append(out, fmt.Sprintf("%s: %d (set %v) != %d (set %v)", c.Name, a.n, a.set, b.n, b.set))
			} else {
				out = append(out, fmt.Sprintf("%s: %q (set %v) != %q (set %v)", c.Name, a.s, a.set, b.s, b.set))
			}
		}
	}
	return out
}

// jsonKeys are the `"name":` prefixes of every column, built once.
var jsonKeys = func() [][]byte {
	ks := make([][]byte, len(columns))
	for i, c := range columns {
		ks[i] = append(strconv.AppendQuote(nil, c.Name), ':')
	}
	return ks
}()

// AppendJSON appends r as one flat JSON object: every column, named and
// typed as in the table (see Type), in column order.
func AppendJSON(dst []byte, r *correlate.Record, m *Meta) []byte {
	return appendObject(dst, func(c *Column, _ int) (string, uint64, bool) {
		if c.Type.Numeric() {
			return "", c.Num(r, m), true
		}
		return c.Str(r, m), 0, true
	})
}

// MarshalJSON writes the row as AppendJSON does, leaving out unset
// columns.
func (r Row) MarshalJSON() ([]byte, error) {
	return appendObject(nil, func(_ *Column, i int) (string, uint64, bool) {
		if i >= len(r.vals) {
			return "", 0, false
		}
		v := r.vals[i]
		return v.s, v.n, v.set
	}), nil
}

// appendObject writes the columns that get reports as set.
func appendObject(dst []byte, get func(c *Column, i int) (s string, n uint64, ok bool)) []byte {
	dst = append(dst, '{')
	first := true
	for i := range columns {
		c := &columns[i]
		s, n, ok := get(c, i)
		if !ok {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, jsonKeys[i]...)
		if c.Type.Numeric() {
			dst = strconv.AppendUint(dst, n, 10)
		} else {
			dst = appendJSONString(dst, s)
		}
	}
	return append(dst, '}')
}

// appendJSONString quotes s for JSON; invalid UTF-8 becomes U+FFFD, as
// encoding/json does, so a line is always valid JSON.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			switch {
			case b == '"' || b == '\\':
				dst = append(dst, '\\', b)
			case b == '\n':
				dst = append(dst, '\\', 'n')
			case b == '\r':
				dst = append(dst, '\\', 'r')
			case b == '\t':
				dst = append(dst, '\\', 't')
			case b < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xf])
			default:
				dst = append(dst, b)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// ErrNotObject is returned by ParseJSONRow for a line that is not a JSON
// object.
var ErrNotObject = errors.New("not a JSON object")

// ParseJSONRow reads one JSON line as AppendJSON writes it. A field of the
// wrong type is an error naming it; unknown fields are ignored (a newer
// flowlens may have more columns) and missing ones are left unset.
func ParseJSONRow(line []byte) (Row, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(line, &fields); err != nil || fields == nil {
		return Row{}, ErrNotObject
	}
	row := NewRow()
	for name, raw := range fields {
		c, ok := LookupColumn(name)
		if !ok {
			continue
		}
		if string(raw) == "null" {
			// Unmarshal would leave the zero value and hide the gap.
			return Row{}, fmt.Errorf("field %s: null, want a %s", name, c.Type)
		}
		if c.Type.Numeric() {
			var n uint64
			if err := json.Unmarshal(raw, &n); err != nil {
				return Row{}, fmt.Errorf("field %s: want a %s number, got %s", name, c.Type, raw)
			}
			if err := row.SetNum(name, n); err != nil {
				return Row{}, err
			}
			continue
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return Row{}, fmt.Errorf("field %s: want a string, got %s", name, raw)
		}
		if err := row.SetStr(name, s); err != nil {
			return Row{}, err
		}
	}
	return row, nil
}
