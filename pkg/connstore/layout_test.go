package connstore

import (
	"net/netip"
	"testing"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// natForms are the shapes of NAT fields a report can carry; each must come
// back from the store exactly, whether it is held inline or in an ext slot.
func natForms() map[string]func(c *flow.Conn) {
	node := netip.MustParseAddr("192.168.1.7").As16()
	return map[string]func(c *flow.Conn){
		"untranslated": func(c *flow.Conn) { c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort },
		"no orig dst":  func(c *flow.Conn) { c.OrigDstIP, c.OrigDstPort = [16]byte{}, 0 },
		"dnat":         func(c *flow.Conn) { c.OrigDstIP, c.OrigDstPort = vip.As16(), 80 },
		"dnat port only": func(c *flow.Conn) {
			c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, 80
		},
		"snat": func(c *flow.Conn) {
			c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort
			c.ProxySnatIP, c.ProxySnatPort = node, 31000
		},
		"dnat and snat": func(c *flow.Conn) {
			c.OrigDstIP, c.OrigDstPort = vip.As16(), 80
			c.ProxySnatIP, c.ProxySnatPort = node, 31000
		},
		"snat port without address": func(c *flow.Conn) {
			c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort
			c.ProxySnatPort = 31000
		},
		"orig dst zero address, a port": func(c *flow.Conn) { c.OrigDstIP, c.OrigDstPort = [16]byte{}, 80 },
	}
}

// fullConn is a connection with every field set, so a field the entry
// dropped or mixed up shows.
func fullConn(port uint16) flow.Conn {
	c := conn(port, 77, 3, 2)
	c.Zone, c.Mark, c.Status = 5, 0xdead, 0x18e
	c.Counters = flow.CountersBPF
	c.StartNanos, c.StopNanos = t0.UnixNano()-int64(sec), 0
	return c
}

func TestConnFieldsComeBackExactlyInEveryNATForm(t *testing.T) {
	forms := natForms()
	for from, setFrom := range forms {
		for to, setTo := range forms {
			t.Run(from+" then "+to, func(t *testing.T) {
				h := newHarness(t, 16)
				s := h.store
				c := fullConn(40000)
				setFrom(&c)
				if ch := s.Upsert(&c, t0); ch != Created {
					t.Fatalf("upsert: %v", ch)
				}
				checkStored(t, s, c)
				// A later report with other NAT fields (and moved
				// counters): the stored connection takes them.
				c.Fwd.Packets, c.Fwd.Bytes = 4, 400
				setTo(&c)
				if ch := s.Upsert(&c, t0.Add(sec)); ch != Updated {
					t.Fatalf("second upsert: %v", ch)
				}
				checkStored(t, s, c)
				wantExt := 0
				if _, n := altKeysOf(&c); n > 0 || !inlineNAT(&c) {
					wantExt = 1
				}
				if s.exts.used != wantExt {
					t.Errorf("%d ext slots held, want %d", s.exts.used, wantExt)
				}
				h.tick(16 * sec) // idle: exported
				s.Upsert(&c, t0.Add(16*sec))
				c.Rev.Packets++
				s.Close(&c, t0.Add(17*sec))
				h.tick(18 * sec) // end-of-flow: forgotten (no dump, no events: no tombstone)
				if s.Len() != 0 || s.exts.used != 0 || s.bases.used != 0 || s.entries.used != 0 {
					t.Errorf("after the end: %d connections, %d entries, %d ext and %d base slots held; want none",
						s.Len(), s.entries.used, s.exts.used, s.bases.used)
				}
				for _, r := range h.full {
					want := c
					want.Fwd, want.Rev, want.StopNanos, want.TCPState = r.Fwd, r.Rev, r.StopNanos, r.TCPState
					if r.Conn != want {
						t.Errorf("record %v: conn %+v, want %+v", r.EndReason, r.Conn, want)
					}
				}
			})
		}
	}
}

// inlineNAT reports whether c's NAT fields need no ext slot.
func inlineNAT(c *flow.Conn) bool {
	if c.ProxySnatIP != ([16]byte{}) || c.ProxySnatPort != 0 {
		return false
	}
	return (c.OrigDstIP == c.Tuple.DstIP && c.OrigDstPort == c.Tuple.DstPort) ||
		(c.OrigDstIP == [16]byte{} && c.OrigDstPort == 0)
}

// altKeysOf lists the tuples other observers know c by: the Service VIP
// form of a DNATed connection, the translated source of a source-NATed one.
func altKeysOf(c *flow.Conn) (keys [2]flow.Tuple, n int) {
	if c.OrigDstIP != ([16]byte{}) && c.IsDNATed() {
		keys[n] = flow.Tuple{SrcIP: c.Tuple.SrcIP, DstIP: c.OrigDstIP, SrcPort: c.Tuple.SrcPort, DstPort: c.OrigDstPort, Proto: c.Tuple.Proto}
		n++
	}
	if c.IsSNATed() {
		keys[n] = c.CorrelationTuple()
		n++
	}
	return keys, n
}

// checkStored checks that Peek and LookupConn (under every tuple the
// connection is known by) return c exactly, and that no other tuple finds
// it.
func checkStored(t *testing.T, s *Store, c flow.Conn) {
	t.Helper()
	if got, ok := s.Peek(c.Tuple); !ok || got != c {
		t.Fatalf("Peek = %+v, %v; want %+v", got, ok, c)
	}
	if got, ok := s.LookupConn(c.Tuple.Reverse()); !ok || got != c {
		t.Fatalf("LookupConn(reverse) = %+v, %v; want %+v", got, ok, c)
	}
	keys, n := altKeysOf(&c)
	for i := range n {
		if got, ok := s.LookupConn(keys[i]); !ok || got != c {
			t.Fatalf("LookupConn(%s) = %+v, %v; want %+v", keys[i], got, ok, c)
		}
	}
	viaVIP := flow.Tuple{SrcIP: c.Tuple.SrcIP, DstIP: vip.As16(), SrcPort: c.Tuple.SrcPort, DstPort: 80, Proto: c.Tuple.Proto}
	if _, ok := s.LookupConn(viaVIP); ok != (c.OrigDstIP == vip.As16() && c.OrigDstPort == 80) {
		t.Fatalf("LookupConn through the VIP found %v with orig dst %s:%d", ok, netip.AddrFrom16(c.OrigDstIP), c.OrigDstPort)
	}
}

func TestBaseCountersAreKeptOnlyWhileCountersMoved(t *testing.T) {
	h := newHarness(t, 16)
	s := h.store
	c := conn(40000, 1, 10, 5)
	s.Upsert(&c, t0)
	if s.bases.used != 0 {
		t.Fatalf("a new connection holds %d base slots, want 0 (its base is zero)", s.bases.used)
	}
	h.tick(5 * sec) // active timeout: the first record, full counters
	if s.bases.used != 0 {
		t.Fatalf("after its record: %d base slots, want 0 (its base is its counters)", s.bases.used)
	}
	c.Fwd.Packets, c.Fwd.Bytes = 13, 1300
	s.Upsert(&c, t0.Add(6*sec))
	if s.bases.used != 1 {
		t.Fatalf("counters moved: %d base slots, want 1", s.bases.used)
	}
	c.Rev.Packets, c.Rev.Bytes = 9, 900
	s.Upsert(&c, t0.Add(7*sec))
	if s.bases.used != 1 {
		t.Fatalf("counters moved again: %d base slots, want still 1", s.bases.used)
	}
	h.tick(10 * sec) // active timeout: the deltas since the first record
	h.tick(26 * sec) // idle (counters still since 7 s): nothing new, no record
	want := []rec{
		{port: 40000, id: 1, reason: flow.EndActiveTimeout, fwd: 10, rev: 5, at: 5 * sec},
		{port: 40000, id: 1, reason: flow.EndActiveTimeout, fwd: 3, rev: 4, at: 10 * sec},
		{port: 40000, id: 1, reason: flow.EndIdleTimeout, at: 26 * sec},
	}
	if !equalRecs(h.got, want) {
		t.Fatalf("records %+v, want %+v", h.got, want)
	}
	if s.bases.used != 0 {
		t.Fatalf("idle: %d base slots, want 0", s.bases.used)
	}
	// A replacement (new id) ends the old connection with its deltas and
	// starts the new one from zero.
	c.Fwd.Packets, c.Fwd.Bytes = 20, 2000
	s.Upsert(&c, t0.Add(30*sec))
	c2 := conn(40000, 2, 1, 1)
	if ch := s.Upsert(&c2, t0.Add(31*sec)); ch != Replaced {
		t.Fatalf("upsert of a new id: %v", ch)
	}
	if last := h.got[len(h.got)-1]; last.reason != flow.EndOfFlow || last.fwd != 7 || last.rev != 0 {
		t.Fatalf("replaced connection's final record %+v, want end-of-flow with 7 packets forward", last)
	}
	if s.bases.used != 0 {
		t.Fatalf("after the replacement: %d base slots, want 0", s.bases.used)
	}
	h.tick(36 * sec)
	if last := h.got[len(h.got)-1]; last.id != 2 || last.fwd != 1 || last.rev != 1 {
		t.Fatalf("new connection's first record %+v, want its full counters", last)
	}
}

func equalRecs(a, b []rec) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLargeStoreMapsItsMemoryAndReleasesIt(t *testing.T) {
	const n = 100_000 // beyond the entries kept on the Go heap, an index of more than 1 MiB
	h := newHarness(t, n)
	s := h.store
	for i := 0; i < n; i++ {
		c := synthMixed(i)
		s.Upsert(&c, t0)
	}
	if !s.entries.maps[len(s.entries.maps)-1].Mapped() || s.entries.maps[0].Mapped() {
		t.Errorf("entry chunks: first mapped %v, last mapped %v; want the first on the heap and the last mapped",
			s.entries.maps[0].Mapped(), s.entries.maps[len(s.entries.maps)-1].Mapped())
	}
	if !s.byTuple.mem.Mapped() {
		t.Errorf("index of %d slots (%d bytes) not mapped", len(s.byTuple.slots), s.byTuple.bytes())
	}
	want := len(s.entries.chunks)*(1<<entryChunkBits)*int(unsafe.Sizeof(entry{})) +
		len(s.exts.chunks)*(1<<sideChunkBits)*int(unsafe.Sizeof(extSlot{})) +
		len(s.bases.chunks)*(1<<sideChunkBits)*int(unsafe.Sizeof(baseSlot{})) +
		8*(len(s.byTuple.slots)+len(s.byVIP.slots))
	if got := gaugeValue(t, s.m.memory); got != float64(want) {
		t.Errorf("memory gauge %v, want %d", got, want)
	}
	if per := float64(want) / n; per > 200 {
		t.Errorf("%.0f bytes per connection, want at most 200", per)
	}
	// Every connection is still found after the growth.
	for i := 0; i < n; i += 97 {
		c := synthMixed(i)
		if got, ok := s.LookupConn(c.Tuple); !ok || got.Tuple != c.Tuple || got.ID != c.ID {
			t.Fatalf("connection %d: %+v, %v", i, got, ok)
		}
	}
	if err := s.Release(); err != nil {
		t.Fatal(err)
	}
	if got := gaugeValue(t, s.m.memory); got != 0 {
		t.Errorf("memory gauge %v after Release, want 0", got)
	}
	if _, ok := s.LookupConn(synthMixed(1).Tuple); ok {
		t.Error("a released store still finds connections")
	}
}

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
