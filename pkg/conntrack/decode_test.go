package conntrack

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
	"github.com/flowlens/flowlens/pkg/flow"
)

var (
	cli4 = netip.MustParseAddr("198.18.0.1")
	vip4 = netip.MustParseAddr("198.19.0.10")
	ep4  = netip.MustParseAddr("198.18.1.2")
	cli6 = netip.MustParseAddr("fd00::1")
	vip6 = netip.MustParseAddr("fd00:96::10")
	ep6  = netip.MustParseAddr("fd00:1::2")
	// node4/node6: a node's own address, the source masquerade picks.
	node4 = netip.MustParseAddr("198.18.255.1")
	node6 = netip.MustParseAddr("fd00:ff::1")
)

func a16(a netip.Addr) [16]byte { return a.As16() }

func TestDecodeConn(t *testing.T) {
	tests := []struct {
		name  string
		entry conntracktest.Entry
		want  flow.Conn
	}{
		{
			name: "plain IPv4 TCP keeps both tuples' endpoints and all counters",
			entry: conntracktest.Entry{
				Proto: 6, OrigSrc: cli4, OrigDst: ep4, OrigSrcPort: 40000, OrigDstPort: 8080,
				ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 8080, ReplyDstPort: 40000,
				TCPState: 3, Status: 0xe, Mark: 7, ID: 99,
				FwdPackets: 5, FwdBytes: 1234, RevPackets: 4, RevBytes: 4321,
				Start: 1_700_000_000_000_000_001,
			},
			want: flow.Conn{
				Tuple:     flow.NewTuple(cli4, ep4, 40000, 8080, 6),
				OrigDstIP: a16(ep4), OrigDstPort: 8080,
				TCPState: flow.TCPStateEstablished, Status: 0xe, Mark: 7, ID: 99,
				Fwd: flow.Counters{Packets: 5, Bytes: 1234}, Rev: flow.Counters{Packets: 4, Bytes: 4321},
				StartNanos: 1_700_000_000_000_000_001,
			},
		},
		{
			name: "DNATed IPv4 connection keys on the endpoint and keeps the VIP as OrigDst",
			entry: conntracktest.Entry{
				Proto: 6, OrigSrc: cli4, OrigDst: vip4, OrigSrcPort: 40001, OrigDstPort: 80,
				ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 8080, ReplyDstPort: 40001,
				TCPState: 7, Zone: 5,
			},
			want: flow.Conn{
				Tuple:     flow.NewTuple(cli4, ep4, 40001, 8080, 6),
				OrigDstIP: a16(vip4), OrigDstPort: 80, Zone: 5, TCPState: flow.TCPStateTimeWait,
			},
		},
		{
			name: "DNATed IPv6 connection with stop timestamp",
			entry: conntracktest.Entry{
				Proto: 6, OrigSrc: cli6, OrigDst: vip6, OrigSrcPort: 40002, OrigDstPort: 443,
				ReplySrc: ep6, ReplyDst: cli6, ReplySrcPort: 8443, ReplyDstPort: 40002,
				TCPState: 8, Start: 10, Stop: 20, FwdPackets: 1, RevBytes: 2,
			},
			want: flow.Conn{
				Tuple:     flow.NewTuple(cli6, ep6, 40002, 8443, 6),
				OrigDstIP: a16(vip6), OrigDstPort: 443, TCPState: flow.TCPStateClose,
				StartNanos: 10, StopNanos: 20,
				Fwd: flow.Counters{Packets: 1}, Rev: flow.Counters{Bytes: 2},
			},
		},
		{
			name: "UDP has no TCP state",
			entry: conntracktest.Entry{
				Proto: 17, OrigSrc: cli4, OrigDst: vip4, OrigSrcPort: 5353, OrigDstPort: 53,
				ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 53, ReplyDstPort: 5353,
			},
			want: flow.Conn{Tuple: flow.NewTuple(cli4, ep4, 5353, 53, 17), OrigDstIP: a16(vip4), OrigDstPort: 53},
		},
		{
			name: "ICMP echo puts the id in SrcPort and type<<8|code in DstPort",
			entry: conntracktest.Entry{
				Proto: 1, OrigSrc: cli4, OrigDst: ep4, OrigSrcPort: 0x1234, OrigDstPort: 8 << 8,
				ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 0x1234, ReplyDstPort: 0,
			},
			want: flow.Conn{Tuple: flow.NewTuple(cli4, ep4, 0x1234, 8<<8, 1), OrigDstIP: a16(ep4), OrigDstPort: 8 << 8},
		},
		{
			name: "ICMPv6 echo uses the ICMPv6 attributes the same way",
			entry: conntracktest.Entry{
				Proto: 58, OrigSrc: cli6, OrigDst: ep6, OrigSrcPort: 7, OrigDstPort: 128 << 8,
				ReplySrc: ep6, ReplyDst: cli6, ReplySrcPort: 7, ReplyDstPort: 129 << 8,
			},
			want: flow.Conn{Tuple: flow.NewTuple(cli6, ep6, 7, 128<<8, 58), OrigDstIP: a16(ep6), OrigDstPort: 128 << 8},
		},
		{
			name: "NodePort from outside: DNAT to the endpoint and masquerade to the node keep the SNAT address and port",
			entry: conntracktest.Entry{
				Proto: 6, OrigSrc: cli4, OrigDst: node4, OrigSrcPort: 40003, OrigDstPort: 30080,
				ReplySrc: ep4, ReplyDst: node4, ReplySrcPort: 8080, ReplyDstPort: 61000,
				TCPState: 3,
			},
			want: flow.Conn{
				Tuple:     flow.NewTuple(cli4, ep4, 40003, 8080, 6),
				OrigDstIP: a16(node4), OrigDstPort: 30080, TCPState: flow.TCPStateEstablished,
				ProxySnatIP: a16(node4), ProxySnatPort: 61000,
			},
		},
		{
			name: "a port-only source rewrite is SNAT too",
			entry: conntracktest.Entry{
				Proto: 17, OrigSrc: cli4, OrigDst: ep4, OrigSrcPort: 5000, OrigDstPort: 53,
				ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 53, ReplyDstPort: 5001,
			},
			want: flow.Conn{
				Tuple: flow.NewTuple(cli4, ep4, 5000, 53, 17), OrigDstIP: a16(ep4), OrigDstPort: 53,
				ProxySnatIP: a16(cli4), ProxySnatPort: 5001,
			},
		},
		{
			name: "IPv6 SNAT keeps the whole address",
			entry: conntracktest.Entry{
				Proto: 6, OrigSrc: cli6, OrigDst: vip6, OrigSrcPort: 40004, OrigDstPort: 443,
				ReplySrc: ep6, ReplyDst: node6, ReplySrcPort: 8443, ReplyDstPort: 40004,
			},
			want: flow.Conn{
				Tuple:     flow.NewTuple(cli6, ep6, 40004, 8443, 6),
				OrigDstIP: a16(vip6), OrigDstPort: 443,
				ProxySnatIP: a16(node6), ProxySnatPort: 40004,
			},
		},
		{
			name: "SNATed ICMP has an address but no port",
			entry: conntracktest.Entry{
				Proto: 1, OrigSrc: cli4, OrigDst: ep4, OrigSrcPort: 0x1234, OrigDstPort: 8 << 8,
				ReplySrc: ep4, ReplyDst: node4, ReplySrcPort: 0x1234, ReplyDstPort: 0,
			},
			want: flow.Conn{
				Tuple: flow.NewTuple(cli4, ep4, 0x1234, 8<<8, 1), OrigDstIP: a16(ep4), OrigDstPort: 8 << 8,
				ProxySnatIP: a16(node4),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got flow.Conn
			got.Mark = 0xdead // a stale value from the previous entry must not survive
			if err := decodeConn(conntracktest.AppendAttrs(nil, tt.entry), &got); err != nil {
				t.Fatalf("decodeConn: %v", err)
			}
			if got != tt.want {
				t.Errorf("decodeConn:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeConnReads32BitCounters(t *testing.T) {
	e := conntracktest.Entry{Proto: 17, OrigSrc: cli4, OrigDst: ep4, ReplySrc: ep4, ReplyDst: cli4}
	b := conntracktest.AppendAttrs(nil, e)
	// CTA_COUNTERS_ORIG { CTA_COUNTERS32_PACKETS=3, CTA_COUNTERS32_BYTES=300 }
	nest := []byte{20, 0, ctaCountersOrig, 0x80, 8, 0, 3, 0, 0, 0, 0, 3, 8, 0, 4, 0, 0, 0, 1, 44}
	b = append(b, nest...)
	var c flow.Conn
	if err := decodeConn(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.Fwd != (flow.Counters{Packets: 3, Bytes: 300}) {
		t.Errorf("Fwd = %+v, want 3 packets 300 bytes", c.Fwd)
	}
}

func TestDecodeConnRejectsMalformedInput(t *testing.T) {
	good := conntracktest.AppendAttrs(nil, conntracktest.Entry{
		Proto: 6, OrigSrc: cli4, OrigDst: vip4, OrigSrcPort: 1, OrigDstPort: 2,
		ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 3, ReplyDstPort: 1, TCPState: 3,
		FwdPackets: 1, FwdBytes: 2, Start: 3,
	})
	onlyOrig := conntracktest.AppendAttrs(nil, conntracktest.Entry{Proto: 6, OrigSrc: cli4, OrigDst: vip4, ReplySrc: ep4, ReplyDst: cli4})
	// Cut the message right after the first (original) tuple.
	origLen := int(binary.NativeEndian.Uint16(onlyOrig))
	tests := []struct {
		name    string
		in      []byte
		wantErr error
	}{
		{"attribute header cut short", good[:2], errTruncated},
		{"attribute longer than the message", good[:len(good)-1], errTruncated},
		{"attribute length below its header", []byte{2, 0, 1, 0}, errTruncated},
		{"reply tuple missing", onlyOrig[:origLen], errMissingTuple},
		{"empty message has no tuples", nil, errMissingTuple},
		{"IPv4 address of 3 bytes", []byte{
			20, 0, ctaTupleOrig, 0x80,
			16, 0, ctaTupleIP, 0x80,
			7, 0, ctaIPv4Src, 0, 1, 2, 3, 0,
			4, 0, 0, 0,
		}, errBadLength},
		{"status of 2 bytes", append(append([]byte{}, good...), 6, 0, ctaStatus, 0, 1, 2, 0, 0), errBadLength},
		{"tuple without protocol", []byte{
			24, 0, ctaTupleOrig, 0x80,
			20, 0, ctaTupleIP, 0x80,
			8, 0, ctaIPv4Src, 0, 1, 2, 3, 4,
			8, 0, ctaIPv4Dst, 0, 1, 2, 3, 5,
			24, 0, ctaTupleReply, 0x80,
			20, 0, ctaTupleIP, 0x80,
			8, 0, ctaIPv4Src, 0, 1, 2, 3, 5,
			8, 0, ctaIPv4Dst, 0, 1, 2, 3, 4,
		}, errBadTuple},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c flow.Conn
			err := decodeConn(tt.in, &c)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("decodeConn error = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestDecodeConnFailsOnEveryCutInsideAnAttribute(t *testing.T) {
	good := conntracktest.AppendAttrs(nil, conntracktest.SyntheticEntry(3))
	var c flow.Conn
	if err := decodeConn(good, &c); err != nil {
		t.Fatalf("full message: %v", err)
	}
	// A cut between top-level attributes is a shorter valid message once
	// both tuples are in; any other cut must be reported.
	boundary := map[int]bool{}
	for off := 0; off < len(good); {
		boundary[off] = true
		off += (int(binary.NativeEndian.Uint16(good[off:])) + 3) &^ 3
	}
	cuts := 0
	for n := 0; n < len(good); n++ {
		if boundary[n] {
			continue
		}
		cuts++
		if err := decodeConn(good[:n], &c); err == nil {
			t.Errorf("message cut to %d of %d bytes decoded without error", n, len(good))
		}
	}
	if cuts < len(good)/2 {
		t.Fatalf("only %d cuts tried", cuts)
	}
}

func TestDecodeConnDoesNotAllocate(t *testing.T) {
	b := conntracktest.AppendAttrs(nil, conntracktest.SyntheticEntry(0))
	var c flow.Conn
	allocs := testing.AllocsPerRun(1000, func() {
		if err := decodeConn(b, &c); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("decodeConn allocates %.1f times per entry, want 0", allocs)
	}
}

func FuzzDecode(f *testing.F) {
	for i := range 8 {
		f.Add(conntracktest.AppendAttrs(nil, conntracktest.SyntheticEntry(i)))
	}
	for _, fx := range loadFixtures(f) {
		f.Add(fx)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var clean flow.Conn
		errClean := decodeConn(b, &clean)
		// A Conn left over from another entry must be fully overwritten:
		// the dump reuses one.
		dirty := flow.Conn{Mark: 1, ID: 2, Zone: 3, StopNanos: 4, Fwd: flow.Counters{Packets: 5}}
		errDirty := decodeConn(b, &dirty)
		if (errClean == nil) != (errDirty == nil) {
			t.Fatalf("decode differs with a reused Conn: %v vs %v", errClean, errDirty)
		}
		if errClean == nil && clean != dirty {
			t.Fatalf("reused Conn kept stale fields:\n%+v\n%+v", dirty, clean)
		}
		// The framing around the decoder must not panic on the same bytes.
		var st decodeStats
		s := &Source{m: mustMetrics(t), filter: newFilter(Config{})}
		s.handleEvents(b, &clean, &st, func(Event) {})
	})
}

func mustMetrics(tb testing.TB) *metrics {
	tb.Helper()
	m, err := newMetrics(nil)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}
