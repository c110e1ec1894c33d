package correlate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/flowlens/flowlens/pkg/flow"
)

// MergeHTTPVals unions two httpVals objects (Antrea's encoding: one JSON
// object keyed by transaction id) into one valid JSON object. An empty or
// invalid side never removes what the other side holds: Antrea's aggregator
// let an empty value from one node overwrite the full one from the other.
// When both sides carry the same transaction id, a's value is kept unless it
// is null or an empty string. err reports an input that was not a JSON
// object; the result is still the union of what parsed.
func MergeHTTPVals(a, b string) (string, error) {
	if b == "" || b == a {
		if err := validObject(a); err != nil {
			return "", fmt.Errorf("merge httpVals: %w", err)
		}
		return a, nil
	}
	if a == "" {
		if err := validObject(b); err != nil {
			return "", fmt.Errorf("merge httpVals: %w", err)
		}
		return b, nil
	}
	am, errA := parseObject(a)
	bm, errB := parseObject(b)
	switch {
	case errA != nil && errB != nil:
		return "", fmt.Errorf("merge httpVals: both sides invalid: %w", errA)
	case errA != nil:
		return b, fmt.Errorf("merge httpVals: existing value: %w", errA)
	case errB != nil:
		return a, fmt.Errorf("merge httpVals: incoming value: %w", errB)
	}
	for k, v := range bm {
		if cur, ok := am[k]; !ok || isEmptyJSON(cur) {
			am[k] = v
		}
	}
	return encodeObject(am), nil
}

// validObject checks s without building it: the common case (one side
// empty) then costs no allocation.
func validObject(s string) error {
	if s == "" {
		return nil
	}
	t := strings.TrimLeft(s, " \t\r\n")
	if !strings.HasPrefix(t, "{") || !json.Valid([]byte(s)) {
		_, err := parseObject(s)
		if err == nil {
			err = errors.New("not a JSON object")
		}
		return fmt.Errorf("parse JSON object: %w", err)
	}
	return nil
}

func parseObject(s string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("parse JSON object: %w", err)
	}
	if m == nil { // the literal null
		m = map[string]json.RawMessage{}
	}
	return m, nil
}

func isEmptyJSON(v json.RawMessage) bool {
	t := bytes.TrimSpace(v)
	return len(t) == 0 || bytes.Equal(t, []byte("null")) || bytes.Equal(t, []byte(`""`))
}

// encodeObject writes keys in transaction order (numeric where they are
// numbers) so the same union always yields the same string.
func encodeObject(m map[string]json.RawMessage) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		ni, ei := strconv.ParseInt(keys[i], 10, 64)
		nj, ej := strconv.ParseInt(keys[j], 10, 64)
		if ei == nil && ej == nil {
			return ni < nj
		}
		if (ei == nil) != (ej == nil) {
			return ei == nil
		}
		return keys[i] < keys[j]
	})
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, _ := json.Marshal(k) // a string always marshals
		buf.Write(kb)
		buf.WriteByte(':')
		var compact bytes.Buffer
		if err := json.Compact(&compact, m[k]); err != nil {
			buf.Write(m[k]) // already validated by Unmarshal; keep as received
		} else {
			buf.Write(compact.Bytes())
		}
	}
	buf.WriteByte('}')
	return buf.String()
}

// mergeL7 folds in into dst. HTTPVals unions by transaction id; every other
// field (appProtocolName and whatever DNS/TLS fields flow.L7 grows) takes
// the non-empty value, keeping dst's when both are set. Walking the struct
// by reflection keeps fields added to flow.L7 later merged correctly without
// a change here.
func mergeL7(dst *flow.L7, in *flow.L7) error {
	var err error
	dst.HTTPVals, err = MergeHTTPVals(dst.HTTPVals, in.HTTPVals)
	dv := reflect.ValueOf(dst).Elem()
	iv := reflect.ValueOf(in).Elem()
	for _, i := range l7Plain {
		if dv.Field(i).IsZero() && !iv.Field(i).IsZero() {
			dv.Field(i).Set(iv.Field(i))
		}
	}
	return err
}

// l7Plain are the indexes of flow.L7's exported fields other than
// HTTPVals, computed once (reflect's StructField allocates).
var l7Plain = func() []int {
	var idx []int
	t := reflect.TypeOf(flow.L7{})
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); f.IsExported() && f.Name != "HTTPVals" {
			idx = append(idx, i)
		}
	}
	return idx
}()

// l7ConnectionFields are the flow.L7 fields that describe the connection
// rather than one transaction: they stay on every row of the connection,
// as the agent keeps them (pkg/l7). Every other field is exported once.
var l7ConnectionFields = map[string]struct{}{
	"AppProtocolName": {},
	"TLSServerName":   {},
	"TLSVersion":      {},
	"TLSJA3":          {},
	"TLSJA3S":         {},
	"TLSJA4":          {},
}

// resetTransactions clears the per-transaction fields once an export has
// delivered them, so each transaction is in exactly one row.
func resetTransactions(l *flow.L7) {
	v := reflect.ValueOf(l).Elem()
	for _, i := range l7Transaction {
		v.Field(i).SetZero()
	}
}

// l7Transaction are the indexes of flow.L7's exported fields not in
// l7ConnectionFields, computed once.
var l7Transaction = func() []int {
	var idx []int
	t := reflect.TypeOf(flow.L7{})
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if _, conn := l7ConnectionFields[f.Name]; f.IsExported() && !conn {
			idx = append(idx, i)
		}
	}
	return idx
}()
