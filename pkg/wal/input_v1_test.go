package wal

import (
	"reflect"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// v4Zero is what version 4 appends for a record without health: twelve
// one-byte zero counts and two one-byte lengths of empty strings.
const v4Zero = 14

// A log written before version 2 (no proxy SNAT, no cluster id) still
// replays after an upgrade: its inputs decode with those fields empty.
func TestVersion1InputStillDecodes(t *testing.T) {
	in := sampleInput()
	in.Seq = 0
	in.Record.ProxySnatIP, in.Record.ProxySnatPort, in.Record.ClusterID = [16]byte{}, 0, ""
	in.Record.Source.WorkloadKind, in.Record.Source.WorkloadName = "", ""
	in.Record.Destination.WorkloadKind, in.Record.Destination.WorkloadName = "", ""
	in.Record.Health, in.Record.DestinationName = flow.Health{}, ""
	b := AppendInput(nil, &in)
	// Version 2 appended 16 + 2 address and port bytes and a one-byte
	// length of the empty cluster id, version 3 four one-byte lengths of
	// the empty workload strings, version 4 twelve one-byte zero counts
	// and two one-byte lengths of empty strings.
	v1 := append([]byte{1}, b[1:len(b)-19-4-v4Zero]...)
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

// A log written by version 2 (before the workloads) still replays: its
// inputs decode with the workloads empty and everything else intact.
func TestVersion2InputStillDecodes(t *testing.T) {
	in := sampleInput()
	in.Seq = 0
	in.Record.Source.WorkloadKind, in.Record.Source.WorkloadName = "", ""
	in.Record.Destination.WorkloadKind, in.Record.Destination.WorkloadName = "", ""
	in.Record.Health, in.Record.DestinationName = flow.Health{}, ""
	b := AppendInput(nil, &in)
	v2 := append([]byte{2}, b[1:len(b)-4-v4Zero]...)
	var out correlate.Input
	if err := DecodeInput(v2, &out); err != nil {
		t.Fatalf("DecodeInput(version 2): %v", err)
	}
	if out.Record.ClusterID != in.Record.ClusterID || out.Record.ProxySnatPort != in.Record.ProxySnatPort ||
		out.Record.Source != in.Record.Source || out.Record.Destination != in.Record.Destination {
		t.Errorf("version 2 input decoded as\n%+v\nwant\n%+v", out, in)
	}
}

// A log written by version 3 (before the health and destination name)
// still replays: its inputs decode with them zero and everything else
// intact.
func TestVersion3InputStillDecodes(t *testing.T) {
	in := sampleInput()
	in.Seq = 0
	in.Record.Health, in.Record.DestinationName = flow.Health{}, ""
	b := AppendInput(nil, &in)
	v3 := append([]byte{3}, b[1:len(b)-v4Zero]...)
	var out correlate.Input
	if err := DecodeInput(v3, &out); err != nil {
		t.Fatalf("DecodeInput(version 3): %v", err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("version 3 input decoded as\n%+v\nwant\n%+v", out, in)
	}
	if err := DecodeInput(append(v3, 0), new(correlate.Input)); err == nil {
		t.Error("version 3 input with a trailing byte accepted")
	}
}
