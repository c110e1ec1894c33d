package ipfixcollect

import (
	"encoding/binary"
	"encoding/json"
	"net"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

// The health IEs are built here by hand, not by ipfixexport, so a mistake
// shared by both sides of the table cannot hide: IANA's
// droppedPacketDeltaCount and its RFC 5103 reverse at their registry
// length, then ids 14..23 of 32473 (unsigned32) and 24, 25 (strings).
func TestHealthIEsDecodeByNameIntoTheRecord(t *testing.T) {
	fields := []spec{srcV4, dstV4, pktDelta4, {0, 133, 8}, {29305, 133, 8}}
	for id := uint16(14); id <= 23; id++ {
		fields = append(fields, spec{32473, id, 4})
	}
	fields = append(fields, spec{32473, 24, 65535}, spec{32473, 25, 65535})

	data := simpleData(1)
	data = binary.BigEndian.AppendUint64(data, 3)
	data = binary.BigEndian.AppendUint64(data, 1<<32+1) // saturates
	u32 := []uint32{120, 250, 900, 4, 2, 1, 1, 0, 1500, 6}
	for _, v := range u32 {
		data = binary.BigEndian.AppendUint32(data, v)
	}
	for _, s := range []string{"NETFILTER_DROP", "api.example.com"} {
		data = append(append(data, byte(len(s))), s...)
	}

	c, _, s, _ := run(t, TCP)
	conn, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(newMsg(1).set(2, tmplRecord(302, fields...)).set(302, data).bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one record", func() bool { return len(s.all()) == 1 })
	r := s.all()[0]
	fr, err := r.FlowRecord()
	if err != nil {
		t.Fatal(err)
	}
	want := flow.Health{
		FwdDrops: 3, RevDrops: 1<<32 - 1,
		RTTMinMicros: 120, RTTAvgMicros: 250, RTTMaxMicros: 900, RTTSamples: 4,
		FwdRetransmits: 2, RevRetransmits: 1, FwdResets: 1, RevResets: 0,
		EstablishMicros: 1500, ZeroWindows: 6, DropReason: "NETFILTER_DROP",
	}
	if fr.Health != want || fr.DestinationName != "api.example.com" {
		t.Errorf("decoded %+v %q\nwant    %+v %q", fr.Health, fr.DestinationName, want, "api.example.com")
	}
	var obj map[string]any
	if err := json.Unmarshal(r.AppendJSON(nil), &obj); err != nil {
		t.Fatalf("JSON: %v", err)
	}
	for name, v := range map[string]any{
		"droppedPacketDeltaCount": 3.0, "tcpRttAvgMicroseconds": 250.0, "tcpZeroWindowDeltaCount": 6.0,
		"packetDropReason": "NETFILTER_DROP", "destinationDnsName": "api.example.com",
	} {
		if obj[name] != v {
			t.Errorf("JSON %s = %#v, want %#v", name, obj[name], v)
		}
	}
}
