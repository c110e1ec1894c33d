package wal

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
)

// fillDistinct sets every leaf field reachable from v to a distinct
// non-zero value, so a field the codec forgets comes back different.
func fillDistinct(v reflect.Value, n *int) {
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				fillDistinct(v.Field(i), n)
			}
		}
	case reflect.Array:
		for i := 0; i < v.Len(); i++ {
			fillDistinct(v.Index(i), n)
		}
	case reflect.String:
		*n++
		v.SetString(fmt.Sprintf("s%d-ü", *n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		*n++
		v.SetUint(uint64(*n))
	case reflect.Int64, reflect.Int:
		*n++
		v.SetInt(-int64(*n) * 1_000_000_007)
	default:
		panic(fmt.Sprintf("fillDistinct: add kind %s", v.Kind()))
	}
}

func sampleInput() correlate.Input {
	var in correlate.Input
	n := 0
	fillDistinct(reflect.ValueOf(&in).Elem(), &n)
	// Which source counted a connection is the agent's business: IPFIX
	// does not carry it, so at the aggregator it is always zero.
	in.Record.Counters = 0
	return in
}

// A field added to flow.Record or correlate.Input that the codec does not
// carry fails here (replay would silently lose it).
func TestInputCodecCoversEveryField(t *testing.T) {
	in := sampleInput()
	in.Seq = 0 // assigned by the log, not encoded
	b := AppendInput(nil, &in)
	var out correlate.Input
	if err := DecodeInput(b, &out); err != nil {
		t.Fatalf("DecodeInput: %v", err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip changed the input:\n in %+v\nout %+v", in, out)
	}
	var zero, out0 correlate.Input
	if err := DecodeInput(AppendInput(nil, &zero), &out0); err != nil || !reflect.DeepEqual(zero, out0) {
		t.Errorf("zero input round trip: %v %+v", err, out0)
	}
}

func TestDecodeInputRejectsDamage(t *testing.T) {
	in := sampleInput()
	in.Seq = 0
	b := AppendInput(nil, &in)
	for cut := 0; cut < len(b); cut++ {
		var out correlate.Input
		if err := DecodeInput(b[:cut], &out); err == nil {
			t.Fatalf("DecodeInput of %d of %d bytes succeeded", cut, len(b))
		}
	}
	if err := DecodeInput(append(b, 0), new(correlate.Input)); err == nil {
		t.Error("trailing byte accepted")
	}
	bad := append([]byte(nil), b...)
	bad[0] = 99
	if err := DecodeInput(bad, new(correlate.Input)); err == nil {
		t.Error("unknown version accepted")
	}
}

func FuzzDecodeInputNeverPanics(f *testing.F) {
	in := sampleInput()
	in.Seq = 0
	f.Add(AppendInput(nil, &in))
	f.Fuzz(func(t *testing.T, b []byte) {
		var out correlate.Input
		if DecodeInput(b, &out) != nil {
			return
		}
		// Varints have several spellings; what they mean must survive.
		var again correlate.Input
		if err := DecodeInput(AppendInput(nil, &out), &again); err != nil || !reflect.DeepEqual(out, again) {
			t.Fatalf("decoded input does not survive a round trip: %v", err)
		}
	})
}
