package wal

import (
	"reflect"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
)

// A log written before version 2 (no proxy SNAT, no cluster id) still
// replays after an upgrade: its inputs decode with those fields empty.
func TestVersion1InputStillDecodes(t *testing.T) {
	in := sampleInput()
	in.Seq = 0
	in.Record.ProxySnatIP, in.Record.ProxySnatPort, in.Record.ClusterID = [16]byte{}, 0, ""
	b := AppendInput(nil, &in)
	// Version 2 appended 16 + 2 address and port bytes and a one-byte
	// length of the empty cluster id.
	v1 := append([]byte{1}, b[1:len(b)-19]...)
	var out correlate.Input
	if err := DecodeInput(v1, &out); err != nil {
		t.Fatalf("DecodeInput(version 1): %v", err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("version 1 input decoded as\n%+v\nwant\n%+v", out, in)
	}
	if err := DecodeInput(append(v1, 0), new(correlate.Input)); err == nil {
		t.Error("version 1 input with a trailing byte accepted")
	}
}
