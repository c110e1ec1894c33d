package sink

import (
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// The health and destination-name columns: named as their IPFIX
// elements, appended after every older column (an existing table gains
// them by ADD COLUMN), each reading its own field.
func TestHealthColumns(t *testing.T) {
	var r correlate.Record
	r.Health = flow.Health{
		RTTMinMicros: 1, RTTAvgMicros: 2, RTTMaxMicros: 3, RTTSamples: 4,
		FwdRetransmits: 5, RevRetransmits: 6, FwdResets: 7, RevResets: 8,
		EstablishMicros: 9, ZeroWindows: 10, FwdDrops: 11, RevDrops: 1<<32 - 1,
		DropReason: "NETFILTER_DROP",
	}
	r.DestinationName = "api.example.com"
	nums := []struct {
		name string
		want uint64
	}{
		{"tcpRttMinMicroseconds", 1}, {"tcpRttAvgMicroseconds", 2}, {"tcpRttMaxMicroseconds", 3}, {"tcpRttSampleCount", 4},
		{"tcpRetransmitDeltaCount", 5}, {"reverseTcpRetransmitDeltaCount", 6},
		{"tcpResetDeltaCount", 7}, {"reverseTcpResetDeltaCount", 8},
		{"tcpEstablishMicroseconds", 9}, {"tcpZeroWindowDeltaCount", 10},
		{"droppedPacketDeltaCount", 11}, {"reverseDroppedPacketDeltaCount", 1<<32 - 1},
	}
	strs := []struct{ name, want string }{{"packetDropReason", "NETFILTER_DROP"}, {"destinationDnsName", "api.example.com"}}
	row := RowOf(&r, &Meta{})
	prev := columnIndex["dnsErrors"]
	next := func(name string) {
		t.Helper()
		if i, ok := columnIndex[name]; !ok || i <= prev {
			t.Errorf("column %s at %d (%v), want after column %d", name, i, ok, prev)
		} else {
			prev = i
		}
	}
	for _, n := range nums {
		next(n.name)
		if c, _ := LookupColumn(n.name); c.Type != TypeUInt32 {
			t.Errorf("column %s is %s, want UInt32", n.name, c.Type)
		}
		if got := row.Num(n.name); got != n.want {
			t.Errorf("%s = %d, want %d", n.name, got, n.want)
		}
	}
	for _, s := range strs {
		next(s.name)
		if got := row.Str(s.name); got != s.want {
			t.Errorf("%s = %q, want %q", s.name, got, s.want)
		}
	}
	// UInt32 holds the whole field and nothing more.
	if err := row.SetNum("tcpRttMinMicroseconds", 1<<32); err == nil {
		t.Error("UInt32 column accepted 2^32")
	}
	// A record without health leaves them zero (tcpRttSampleCount 0 says
	// the zero RTT is no measurement).
	empty := RowOf(&correlate.Record{}, &Meta{})
	for _, n := range nums {
		if got := empty.Num(n.name); got != 0 {
			t.Errorf("empty record: %s = %d", n.name, got)
		}
	}
}
