package ipfixcollect

import (
	"encoding/json"
	"net"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

// The workload IEs are built here by hand, not by ipfixexport, so a mistake
// shared by both sides of the table cannot hide.
func TestWorkloadIEsDecodeByNameAndFillBothEnds(t *testing.T) {
	// Template 301: addresses, packetDeltaCount, then ids 10..13 of 32473.
	fields := []spec{srcV4, dstV4, pktDelta4}
	for id := uint16(10); id <= 13; id++ {
		fields = append(fields, spec{32473, id, 65535})
	}
	names := []string{"sourcePodWorkloadKind", "sourcePodWorkloadName", "destinationPodWorkloadKind", "destinationPodWorkloadName"}
	values := []string{"Deployment", "web", "", "db"} // an empty kind decodes as empty
	c, _, s, _ := run(t, TCP)
	conn, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	data := simpleData(1)
	for _, v := range values {
		data = append(append(data, byte(len(v))), v...)
	}
	if _, err := conn.Write(newMsg(1).set(2, tmplRecord(301, fields...)).set(301, data).bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one record", func() bool { return len(s.all()) == 1 })
	r := s.all()[0]
	fr, err := r.FlowRecord()
	if err != nil {
		t.Fatal(err)
	}
	want := [2]flow.Endpoint{{WorkloadKind: "Deployment", WorkloadName: "web"}, {WorkloadName: "db"}}
	if fr.Source != want[0] || fr.Destination != want[1] {
		t.Errorf("endpoints = %+v -> %+v, want %+v -> %+v", fr.Source, fr.Destination, want[0], want[1])
	}
	var obj map[string]any
	if err := json.Unmarshal(r.AppendJSON(nil), &obj); err != nil {
		t.Fatalf("JSON: %v", err)
	}
	for i, name := range names {
		if obj[name] != values[i] {
			t.Errorf("JSON %s = %#v, want %q", name, obj[name], values[i])
		}
	}
}
