package connstore

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/offheap"
	"github.com/prometheus/client_golang/prometheus"
)

var t0 = time.Unix(1_700_000_000, 0)

const sec = time.Second

var (
	client = netip.MustParseAddr("10.0.0.1")
	server = netip.MustParseAddr("10.0.1.5")
	vip    = netip.MustParseAddr("10.96.0.10")
)

// conn builds a DNATed TCP connection from client:port to server:8080 via
// vip:80; bytes are 100 per packet so tests only count packets.
func conn(port uint16, id uint32, fwd, rev uint64) flow.Conn {
	return flow.Conn{
		Tuple:       flow.NewTuple(client, server, port, 8080, flow.ProtoTCP),
		OrigDstIP:   vip.As16(),
		OrigDstPort: 80,
		ID:          id,
		TCPState:    flow.TCPStateEstablished,
		Fwd:         flow.Counters{Packets: fwd, Bytes: 100 * fwd},
		Rev:         flow.Counters{Packets: rev, Bytes: 100 * rev},
	}
}

// rec is the part of a record the behaviour tests look at.
type rec struct {
	port     uint16
	id       uint32
	reason   flow.EndReason
	fwd, rev uint64 // delta packets
	at       time.Duration
}

func summarize(r *flow.Record) rec {
	return rec{
		port: r.Tuple.SrcPort, id: r.ID, reason: r.EndReason,
		fwd: r.FwdDelta.Packets, rev: r.RevDelta.Packets,
		at: time.Duration(r.ExportNanos - t0.UnixNano()),
	}
}

type harness struct {
	t     *testing.T
	store *Store
	queue *expirequeue.Queue
	reg   *prometheus.Registry
	got   []rec
	full  []flow.Record
}

func newHarness(t *testing.T, maxConns int) *harness {
	t.Helper()
	return newHarnessWithQueue(t, maxConns, expirequeue.Config{ActiveTimeout: 5 * sec, IdleTimeout: 15 * sec})
}

func newHarnessWithQueue(t *testing.T, maxConns int, qcfg expirequeue.Config) *harness {
	return newHarnessWith(t, Config{MaxConnections: maxConns}, qcfg)
}

func newHarnessWith(t *testing.T, cfg Config, qcfg expirequeue.Config) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry()}
	q, err := expirequeue.New(qcfg, h.reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Scheduler, cfg.Emit = q, h.emit
	s, err := New(cfg, h.reg)
	if err != nil {
		t.Fatal(err)
	}
	h.store, h.queue = s, q
	t.Cleanup(func() { release(t, s, q) })
	return h
}

func (h *harness) emit(r *flow.Record) {
	h.got = append(h.got, summarize(r))
	h.full = append(h.full, *r)
}

func (h *harness) tick(at time.Duration) {
	h.t.Helper()
	if _, err := h.queue.Expire(t0.Add(at), h.store, taking(h.emit)); err != nil {
		h.t.Fatal(err)
	}
}

// step is one thing the run loop does, with the records it must produce.
type step struct {
	do   func(h *harness)
	want []rec
}

func up(at time.Duration, c flow.Conn) func(*harness) {
	return func(h *harness) { h.store.Upsert(&c, t0.Add(at)) }
}

func upWant(at time.Duration, c flow.Conn, want Change) func(*harness) {
	return func(h *harness) {
		h.t.Helper()
		if got := h.store.Upsert(&c, t0.Add(at)); got != want {
			h.t.Fatalf("Upsert(port %d id %d) at %s = %s, want %s", c.Tuple.SrcPort, c.ID, at, got, want)
		}
	}
}

func closeAt(at time.Duration, c flow.Conn) func(*harness) {
	return func(h *harness) { h.store.Close(&c, t0.Add(at)) }
}

func closeWant(at time.Duration, c flow.Conn, want Change) func(*harness) {
	return func(h *harness) {
		h.t.Helper()
		if got := h.store.Close(&c, t0.Add(at)); got != want {
			h.t.Fatalf("Close(port %d id %d) at %s = %s, want %s", c.Tuple.SrcPort, c.ID, at, got, want)
		}
	}
}

func tick(at time.Duration) func(*harness) { return func(h *harness) { h.tick(at) } }

func dump(started time.Duration, wantStale int) func(*harness) {
	return func(h *harness) {
		h.t.Helper()
		if got := h.store.EndDump(t0.Add(started)); got != wantStale {
			h.t.Fatalf("EndDump(%s) closed %d connections, want %d", started, got, wantStale)
		}
	}
}

func wantLen(n int) func(*harness) {
	return func(h *harness) {
		h.t.Helper()
		if h.store.Len() != n {
			h.t.Fatalf("store holds %d connections, want %d", h.store.Len(), n)
		}
	}
}

func wantFound(c flow.Conn, found bool) func(*harness) {
	return func(h *harness) {
		h.t.Helper()
		if _, ok := h.store.LookupConn(c.Tuple); ok != found {
			h.t.Fatalf("Lookup(port %d) found = %v, want %v", c.Tuple.SrcPort, ok, found)
		}
	}
}

func TestStoreAndQueue(t *testing.T) {
	const (
		A, B, C = 40001, 40002, 40003
	)
	tests := []struct {
		name     string
		maxConns int
		steps    []step
	}{
		{
			name: "new connection's first active export carries its full counters",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: tick(4 * sec)},
				{do: tick(5 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 10, 5, 5 * sec}}},
			},
		},
		{
			name: "active timeout exports the deltas since the previous export",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: tick(5 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 10, 5, 5 * sec}}},
				{do: up(7*sec, conn(A, 1, 30, 9))},
				{do: tick(10 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 20, 4, 10 * sec}}},
				{do: up(12*sec, conn(A, 1, 31, 9))},
				{do: tick(15 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 1, 0, 15 * sec}}},
			},
		},
		{
			name: "still connection exported once as idle, kept, and resumed activity starts a new period",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: tick(5 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 10, 5, 5 * sec}}},
				{do: up(6*sec, conn(A, 1, 10, 5))},
				{do: tick(10 * sec)},
				{do: tick(15 * sec), want: []rec{{A, 1, flow.EndIdleTimeout, 0, 0, 15 * sec}}},
				{do: up(16*sec, conn(A, 1, 10, 5))},
				{do: tick(60 * sec)},
				{do: wantLen(1)},
				{do: up(61*sec, conn(A, 1, 12, 5))},
				{do: tick(65 * sec)},
				{do: tick(66 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 2, 0, 66 * sec}}},
			},
		},
		{
			name: "closed connection exported on next tick with end-of-flow, then removed",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: closeAt(2*sec, conn(A, 1, 12, 6))},
				{do: wantLen(1)},
				{do: tick(3 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 3 * sec}}},
				{do: wantLen(0)},
				{do: wantFound(conn(A, 1, 0, 0), false)},
				{do: tick(30 * sec)},
			},
		},
		{
			name: "closed connection exports only what the active export did not",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: tick(5 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 10, 5, 5 * sec}}},
				{do: closeAt(6*sec, conn(A, 1, 11, 6))},
				{do: tick(7 * sec), want: []rec{{A, 1, flow.EndOfFlow, 1, 1, 7 * sec}}},
				{do: tick(10 * sec)},
			},
		},
		{
			name: "DESTROY of a connection never dumped is still exported once",
			steps: []step{
				{do: closeAt(sec, conn(A, 1, 3, 2))},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 3, 2, 2 * sec}}},
				{do: wantLen(0)},
				{do: tick(20 * sec)},
			},
		},
		{
			name: "counter going backwards ends the old connection and starts a new one",
			steps: []step{
				{do: up(0, conn(A, 1, 100, 50))},
				{do: tick(5 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 100, 50, 5 * sec}}},
				{do: up(6*sec, conn(A, 1, 110, 55))},
				{do: upWant(7*sec, conn(A, 1, 3, 1), Replaced),
					want: []rec{{A, 1, flow.EndOfFlow, 10, 5, 7 * sec}}},
				{do: wantLen(1)},
				{do: tick(11 * sec)},
				{do: tick(12 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 3, 1, 12 * sec}}},
			},
		},
		{
			name: "new conntrack id on the same tuple ends the old connection",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: upWant(2*sec, conn(A, 2, 2, 1), Replaced),
					want: []rec{{A, 1, flow.EndOfFlow, 10, 5, 2 * sec}}},
				{do: tick(5 * sec)},
				{do: tick(7 * sec), want: []rec{{A, 2, flow.EndActiveTimeout, 2, 1, 7 * sec}}},
			},
		},
		{
			name: "closed connection replaced before its tick still gets one final record",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: closeAt(sec, conn(A, 1, 10, 5))},
				{do: upWant(2*sec, conn(A, 2, 1, 1), Replaced),
					want: []rec{{A, 1, flow.EndOfFlow, 10, 5, 2 * sec}}},
				{do: tick(3 * sec)},
				{do: tick(7 * sec), want: []rec{{A, 2, flow.EndActiveTimeout, 1, 1, 7 * sec}}},
			},
		},
		{
			name: "report of an older connection than the stored one is ignored",
			steps: []step{
				{do: up(0, with(conn(A, 2, 5, 5), func(c *flow.Conn) { c.StartNanos = 200 }))},
				{do: upWant(sec, with(conn(A, 1, 50, 50), func(c *flow.Conn) { c.StartNanos = 100 }), Ignored)},
				{do: tick(5 * sec), want: []rec{{A, 2, flow.EndActiveTimeout, 5, 5, 5 * sec}}},
			},
		},
		{
			name: "NEW event without counters does not reset the counters",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: upWant(sec, conn(A, 1, 0, 0), Updated)},
				{do: tick(5 * sec), want: []rec{{A, 1, flow.EndActiveTimeout, 10, 5, 5 * sec}}},
			},
		},
		{
			name:     "eviction at MaxConnections exports the least recently active with lack-of-resources",
			maxConns: 2,
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: up(0, conn(B, 2, 1, 1))},
				{do: up(3*sec, conn(B, 2, 2, 2))},
				{do: upWant(4*sec, conn(C, 3, 1, 0), Created),
					want: []rec{{A, 1, flow.EndLackResources, 10, 5, 4 * sec}}},
				{do: wantLen(2)},
				{do: wantFound(conn(A, 1, 0, 0), false)},
				{do: wantFound(conn(C, 3, 0, 0), true)},
				{do: tick(5 * sec), want: []rec{{B, 2, flow.EndActiveTimeout, 2, 2, 5 * sec}}},
				{do: tick(9 * sec), want: []rec{{C, 3, flow.EndActiveTimeout, 1, 0, 9 * sec}}},
			},
		},
		{
			name: "connection missing from a complete dump is closed, exported and removed",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: up(0, conn(B, 2, 3, 3))},
				{do: tick(5 * sec), want: []rec{
					{A, 1, flow.EndActiveTimeout, 10, 5, 5 * sec},
					{B, 2, flow.EndActiveTimeout, 3, 3, 5 * sec},
				}},
				{do: up(10*sec, conn(A, 1, 10, 5))}, // the dump that started at 10s
				{do: dump(10*sec, 1)},
				{do: tick(11 * sec), want: []rec{
					{B, 2, flow.EndOfFlow, 0, 0, 11 * sec}, // its counters went out at 5s
				}},
				{do: wantLen(1)},
				{do: wantFound(conn(A, 1, 0, 0), true)},
			},
		},
		{
			name: "dump row read before the close but handled after the export is ignored",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: dump(0, 0)},
				{do: closeAt(2*sec, conn(A, 1, 12, 6))},
				{do: tick(3 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 3 * sec}}},
				{do: upWant(3*sec+500*time.Millisecond, conn(A, 1, 12, 6), Ignored)},
				{do: closeAt(4*sec, conn(A, 1, 12, 6))}, // a duplicate DESTROY too
				{do: wantFound(conn(A, 1, 0, 0), false)},
				{do: wantLen(0)},
				{do: tick(20 * sec)},
			},
		},
		{
			name: "DESTROY handled after a dump already closed the connection as stale is not exported again",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: dump(0, 0)},
				{do: dump(10*sec, 1)}, // the entry was gone; its DESTROY still sits in the channel
				{do: tick(11 * sec), want: []rec{{A, 1, flow.EndOfFlow, 10, 5, 11 * sec}}},
				{do: closeWant(12*sec, conn(A, 1, 11, 5), Ignored)},
				{do: tick(13 * sec)},
				{do: tick(30 * sec)},
			},
		},
		{
			name: "tombstone is dropped by the first dump requested after the export that does not return it",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: dump(0, 0)},
				{do: closeAt(2*sec, conn(A, 1, 12, 6))},
				{do: tick(3 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 3 * sec}}},
				{do: upWant(3*sec+500*time.Millisecond, conn(A, 1, 12, 6), Ignored)},
				{do: dump(2*sec, 0)}, // requested before the export: keeps it
				{do: dump(4*sec, 0)}, // did not return it: the kernel entry is gone
				{do: func(h *harness) {
					if h.store.retired != 0 || h.store.byTuple.n != 0 {
						h.t.Fatalf("after a later dump: %d tombstones, %d indexed; want none", h.store.retired, h.store.byTuple.n)
					}
				}},
			},
		},
		{
			name: "ended connection whose entry lingers in TIME_WAIT is not exported again by later dumps",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: dump(0, 0)},
				{do: closeAt(2*sec, conn(A, 1, 12, 6))},
				{do: tick(3 * sec), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 3 * sec}}},
				{do: upWant(4*sec, conn(A, 1, 12, 6), Ignored)},
				{do: dump(4*sec, 0)},
				{do: upWant(5*sec, conn(A, 1, 13, 6), Ignored)}, // the last ACK
				{do: dump(5*sec, 0)},
				{do: upWant(6*sec, conn(A, 1, 13, 6), Ignored)},
				{do: dump(6*sec, 0)},
				{do: tick(30 * sec)},
				{do: dump(60*sec, 0)}, // the entry finally expired
				{do: func(h *harness) {
					if h.store.retired != 0 {
						h.t.Fatalf("%d tombstones once the entry is gone; want none", h.store.retired)
					}
				}},
			},
		},
		{
			name: "new kernel entry on an ended connection's tuple is tracked at once",
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: dump(0, 0)},
				{do: closeAt(2*sec, conn(A, 1, 10, 5))},
				{do: tick(3 * sec), want: []rec{{A, 1, flow.EndOfFlow, 10, 5, 3 * sec}}},
				{do: upWant(4*sec, conn(A, 2, 1, 1), Created)},
				{do: wantFound(conn(A, 2, 0, 0), true)},
				{do: tick(9 * sec), want: []rec{{A, 2, flow.EndActiveTimeout, 1, 1, 9 * sec}}},
			},
		},
		{
			name:     "tombstones make room before any live connection is evicted",
			maxConns: 2,
			steps: []step{
				{do: up(0, conn(A, 1, 10, 5))},
				{do: up(0, conn(B, 2, 1, 1))},
				{do: dump(0, 0)},
				{do: closeAt(sec, conn(A, 1, 10, 5))},
				{do: tick(2 * sec), want: []rec{{A, 1, flow.EndOfFlow, 10, 5, 2 * sec}}},
				{do: upWant(3*sec, conn(C, 3, 1, 1), Created)}, // no lack-of-resources record
				{do: wantLen(2)},
				{do: tick(5 * sec), want: []rec{{B, 2, flow.EndActiveTimeout, 1, 1, 5 * sec}}},
			},
		},
		{
			name: "connection first seen during the dump is not stale",
			steps: []step{
				{do: up(12*sec, conn(A, 1, 10, 5))},
				{do: dump(10*sec, 0)},
				{do: tick(13 * sec)},
				{do: wantLen(1)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.maxConns)
			for i, st := range tt.steps {
				h.got = nil
				st.do(h)
				if !slices.Equal(h.got, st.want) {
					t.Fatalf("step %d produced %+v, want %+v", i, h.got, st.want)
				}
			}
		})
	}
}

func with(c flow.Conn, f func(*flow.Conn)) flow.Conn {
	f(&c)
	return c
}

func TestStaleCloseSetsStopTime(t *testing.T) {
	h := newHarness(t, 0)
	h.store.Upsert(ptr(conn(1, 1, 1, 1)), t0)
	h.store.EndDump(t0.Add(10 * sec))
	h.tick(11 * sec)
	if len(h.full) != 1 || h.full[0].StopNanos != t0.Add(10*sec).UnixNano() {
		t.Fatalf("records %+v, want one with StopNanos at the dump start", h.full)
	}
}

func ptr[T any](v T) *T { return &v }

func TestRecordCarriesTheConnection(t *testing.T) {
	h := newHarness(t, 0)
	c := conn(1, 9, 4, 2)
	c.StartNanos = t0.UnixNano()
	h.store.Upsert(&c, t0)
	h.tick(5 * sec)
	if len(h.full) != 1 {
		t.Fatalf("got %d records, want 1", len(h.full))
	}
	if r := h.full[0]; r.Conn != c || r.ExportNanos != t0.Add(5*sec).UnixNano() {
		t.Errorf("record = %+v, want conn %+v at 5s", r, c)
	}
}

func TestLookup(t *testing.T) {
	h := newHarness(t, 0)
	dnat := conn(40000, 1, 1, 1)
	plainClient := netip.MustParseAddr("fd00::1")
	plainServer := netip.MustParseAddr("fd00::2")
	plain := flow.Conn{
		Tuple:       flow.NewTuple(plainClient, plainServer, 5000, 53, flow.ProtoUDP),
		OrigDstIP:   plainServer.As16(),
		OrigDstPort: 53,
		ID:          2,
	}
	// A NodePort connection from outside, source-NATed to the node's
	// address: the backend's interface sees only that address.
	outside := netip.MustParseAddr("172.31.0.9")
	nodeIP := netip.MustParseAddr("10.0.0.1")
	snat := flow.Conn{
		Tuple:       flow.NewTuple(outside, server, 51000, 8080, flow.ProtoTCP),
		OrigDstIP:   nodeIP.As16(),
		OrigDstPort: 30080,
		ProxySnatIP: nodeIP.As16(), ProxySnatPort: 61000,
		ID: 3,
	}
	h.store.Upsert(&dnat, t0)
	h.store.Upsert(&plain, t0)
	h.store.Upsert(&snat, t0)

	tests := []struct {
		name   string
		tuple  flow.Tuple
		wantID uint32 // 0: not found
	}{
		{"tuple as stored", dnat.Tuple, 1},
		{"reversed tuple (server side)", dnat.Tuple.Reverse(), 1},
		{"client-side tuple with the Service VIP", flow.NewTuple(client, vip, 40000, 80, flow.ProtoTCP), 1},
		{"reply to the client from the Service VIP", flow.NewTuple(vip, client, 80, 40000, flow.ProtoTCP), 1},
		{"VIP with the endpoint port is not the client-side tuple", flow.NewTuple(client, vip, 40000, 8080, flow.ProtoTCP), 0},
		{"other protocol on the same addresses", flow.NewTuple(client, server, 40000, 8080, flow.ProtoUDP), 0},
		{"IPv6 connection without DNAT", plain.Tuple, 2},
		{"IPv6 connection reversed", plain.Tuple.Reverse(), 2},
		{"unknown tuple", flow.NewTuple(client, server, 1, 2, flow.ProtoTCP), 0},
		{"source-NATed tuple as the backend sees it", flow.NewTuple(nodeIP, server, 61000, 8080, flow.ProtoTCP), 3},
		{"backend's reply to the translated source", flow.NewTuple(server, nodeIP, 8080, 61000, flow.ProtoTCP), 3},
		{"client-side tuple of the NodePort", flow.NewTuple(outside, nodeIP, 51000, 30080, flow.ProtoTCP), 3},
		{"translated source with another port", flow.NewTuple(nodeIP, server, 61001, 8080, flow.ProtoTCP), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok := h.store.LookupConn(tt.tuple)
			switch {
			case tt.wantID == 0 && ok:
				t.Fatalf("Lookup found id %d, want nothing", c.ID)
			case tt.wantID != 0 && !ok:
				t.Fatalf("Lookup found nothing, want id %d", tt.wantID)
			case ok && c.ID != tt.wantID:
				t.Fatalf("Lookup found id %d, want %d", c.ID, tt.wantID)
			}
		})
	}
}

func TestIndexStaysConsistentUnderChurn(t *testing.T) {
	h := newHarness(t, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	live := map[uint16]bool{}
	now := time.Duration(0)
	for round := 0; round < 10; round++ {
		for i := 0; i < 3000; i++ {
			p := uint16(rng.IntN(20000) + 1)
			h.store.Upsert(ptr(conn(p, uint32(p), 1, 1)), t0.Add(now))
			live[p] = true
		}
		for p := range live {
			if rng.IntN(2) == 0 {
				h.store.Close(ptr(conn(p, uint32(p), 1, 1)), t0.Add(now))
				delete(live, p)
			}
		}
		now += sec
		h.tick(now)
		if h.store.Len() != len(live) {
			t.Fatalf("round %d: store holds %d, model %d", round, h.store.Len(), len(live))
		}
		for p := uint16(1); p <= 20000; p++ {
			c, ok := h.store.LookupConn(conn(p, 0, 0, 0).Tuple)
			if ok != live[p] || (ok && c.ID != uint32(p)) {
				t.Fatalf("round %d: Lookup(port %d) = %v, model says %v", round, p, ok, live[p])
			}
		}
	}
}

// fakeScheduler records what the store asks of the queue, to test the store
// without one.
type fakeScheduler struct{ calls []string }

func (f *fakeScheduler) Track(h expirequeue.Handle, now int64) {
	f.calls = append(f.calls, fmt.Sprintf("track %d", uint32(h)))
}
func (f *fakeScheduler) Due(h expirequeue.Handle) {
	f.calls = append(f.calls, fmt.Sprintf("due %d", uint32(h)))
}

func TestStoreSchedulesOnlyPeriodStartsAndCloses(t *testing.T) {
	f := &fakeScheduler{}
	s, err := New(Config{MaxConnections: 10, Scheduler: f, Emit: func(*flow.Record) {}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := conn(1, 1, 1, 1)
	s.Upsert(&c, t0)
	for i := uint64(2); i < 100; i++ {
		s.Upsert(ptr(conn(1, 1, i, i)), t0.Add(time.Duration(i)*sec))
	}
	s.Close(ptr(conn(1, 1, 99, 99)), t0.Add(200*sec))
	s.EndDump(t0.Add(300 * sec)) // already closed: not closed twice
	want := []string{"track 0", "due 0"}
	if !slices.Equal(f.calls, want) {
		t.Fatalf("scheduler calls = %v, want %v (updates must not touch the queue)", f.calls, want)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	q, err := expirequeue.New(expirequeue.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	emit := func(*flow.Record) {}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"zero MaxConnections takes the default", Config{Scheduler: q, Emit: emit}, ""},
		{"negative MaxConnections is named", Config{MaxConnections: -1, Scheduler: q, Emit: emit}, "MaxConnections"},
		{"MaxConnections above the limit is named", Config{MaxConnections: MaxMaxConnections + 1, Scheduler: q, Emit: emit}, "MaxConnections"},
		{"missing Scheduler is named", Config{MaxConnections: 1, Emit: emit}, "Scheduler"},
		{"missing Emit is named", Config{MaxConnections: 1, Scheduler: q}, "Emit"},
		{"negative TombstoneMaxAge is named", Config{Scheduler: q, Emit: emit, TombstoneMaxAge: -sec}, "TombstoneMaxAge"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg, nil)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if s.max != DefaultMaxConnections || s.tombMaxAge != int64(DefaultTombstoneMaxAge) {
					t.Fatalf("max = %d, tombstone max age %s; want defaults %d, %s",
						s.max, time.Duration(s.tombMaxAge), DefaultMaxConnections, DefaultTombstoneMaxAge)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want one naming %s", err, tt.wantErr)
			}
		})
	}
}

func TestMetricsCountEveryOutcome(t *testing.T) {
	h := newHarness(t, 2)
	h.store.Upsert(ptr(conn(1, 1, 1, 1)), t0)
	h.store.Upsert(ptr(conn(1, 2, 1, 1)), t0)          // replaced: id
	h.store.Upsert(ptr(conn(2, 3, 5, 5)), t0)          // second slot
	h.store.Upsert(ptr(conn(2, 3, 1, 1)), t0.Add(sec)) // replaced: counters
	h.store.Upsert(ptr(conn(3, 4, 1, 1)), t0.Add(sec)) // evicts one
	h.store.Close(ptr(conn(3, 4, 2, 2)), t0.Add(sec))
	h.store.EndDump(t0.Add(2 * sec)) // the remaining one is stale
	h.tick(3 * sec)

	got := gather(t, h.reg)
	want := map[string]float64{
		"flowlens_connstore_connections":                                       0,
		"flowlens_connstore_connections_new_total":                             3,
		"flowlens_connstore_connections_closed_total":                          1,
		"flowlens_connstore_connections_stale_closed_total":                    1,
		"flowlens_connstore_connections_evicted_total":                         1,
		`flowlens_connstore_connections_replaced_total{cause="id"}`:            1,
		`flowlens_connstore_connections_replaced_total{cause="counters"}`:      1,
		`flowlens_connstore_records_emitted_total{reason="end-of-flow"}`:       4,
		`flowlens_connstore_records_emitted_total{reason="lack-of-resources"}`: 1,
		// Deadlines are never removed early: 5 period starts + 2 closes.
		"flowlens_expirequeue_max_size": 7,
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
}

// gather flattens reg into name{label="value"} -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			if lp := m.GetLabel(); len(lp) > 0 {
				name += fmt.Sprintf(`{%s=%q}`, lp[0].GetName(), lp[0].GetValue())
			}
			switch {
			case m.GetGauge() != nil:
				out[name] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[name] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func TestEntryStaysSmallAndPointerFree(t *testing.T) {
	// 144: what every connection has, inline; the NAT fields of translated
	// connections and the base counters of moving ones are side slots
	// (208 with the whole flow.Conn and both base counters inline).
	if got := unsafe.Sizeof(entry{}); got > 144 {
		t.Fatalf("entry is %d bytes, want at most 144 (memory budget per connection)", got)
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[entry](), reflect.TypeFor[extSlot](), reflect.TypeFor[baseSlot](), reflect.TypeFor[expirequeue.Handle]()} {
		if p := offheap.PointerPath(typ); p != "" {
			t.Errorf("%s holds a pointer at %s; it lives outside the Go heap, where the garbage collector would not see it", typ, p)
		}
	}
}

func TestEmitMayLookUpTheStore(t *testing.T) {
	var s *Store
	var seen []bool
	emit := func(r *flow.Record) {
		_, ok := s.LookupConn(r.Tuple) // records go out once the store is consistent
		seen = append(seen, ok)
	}
	q, err := expirequeue.New(expirequeue.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err = New(Config{MaxConnections: 1, Scheduler: q, Emit: emit}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Upsert(ptr(conn(1, 1, 1, 1)), t0)
	s.Upsert(ptr(conn(1, 2, 1, 1)), t0)                                 // replaced: Emit
	s.Upsert(ptr(conn(2, 3, 1, 1)), t0)                                 // evicts: Emit
	if _, err := q.Expire(t0.Add(5*sec), s, taking(emit)); err != nil { // active: Expire's emit
		t.Fatal(err)
	}
	if want := []bool{true, false, true}; !slices.Equal(seen, want) {
		t.Fatalf("emit's Lookup results = %v, want %v", seen, want)
	}
}

func TestCloseDelayCountsFromTheCloseNotFromLaterDumpRows(t *testing.T) {
	const A = 40001
	h := newHarnessWithQueue(t, 0, expirequeue.Config{ActiveTimeout: 5 * sec, IdleTimeout: 15 * sec, CloseDelay: sec})
	for i, st := range []step{
		{do: up(0, conn(A, 1, 10, 5))},
		{do: dump(0, 0)},
		{do: closeAt(2*sec, conn(A, 1, 12, 6))},
		{do: tick(2*sec + 100*time.Millisecond)},
		// The entry lingers in TIME_WAIT: dumps keep returning it.
		{do: up(2*sec+500*time.Millisecond, conn(A, 1, 12, 6))},
		{do: dump(2*sec+500*time.Millisecond, 0)},
		{do: tick(2*sec + 900*time.Millisecond)},
		{do: up(3*sec+500*time.Millisecond, conn(A, 1, 12, 6))},
		{do: tick(3*sec + 600*time.Millisecond), want: []rec{{A, 1, flow.EndOfFlow, 12, 6, 3*sec + 600*time.Millisecond}}},
		{do: tick(10 * sec)},
	} {
		h.got = nil
		st.do(h)
		if !slices.Equal(h.got, st.want) {
			t.Fatalf("step %d produced %+v, want %+v", i, h.got, st.want)
		}
	}
}

func TestExportAllFlushesWhatWasNotExportedYet(t *testing.T) {
	const A, B, C, D = 40001, 40002, 40003, 40004
	h := newHarness(t, 0)
	for i, st := range []step{
		{do: up(0, conn(A, 1, 10, 5))},
		{do: up(0, conn(B, 2, 20, 5))},
		{do: up(0, conn(C, 3, 30, 5))},
		{do: up(0, conn(D, 4, 40, 5))},
		{do: dump(0, 0)},
		{do: func(h *harness) {
			// Equal deadlines leave the heap in no defined order.
			h.tick(5 * sec)
			slices.SortFunc(h.got, func(a, b rec) int { return int(a.port) - int(b.port) })
		}, want: []rec{{A, 1, flow.EndActiveTimeout, 10, 5, 5 * sec}, {B, 2, flow.EndActiveTimeout, 20, 5, 5 * sec}, {C, 3, flow.EndActiveTimeout, 30, 5, 5 * sec}, {D, 4, flow.EndActiveTimeout, 40, 5, 5 * sec}}},
		{do: up(6*sec, conn(A, 1, 15, 7))},      // moved since its record
		{do: closeAt(6*sec, conn(B, 2, 22, 6))}, // closed, final record not out yet
		{do: up(6*sec, conn(C, 3, 30, 5))},      // nothing new: skipped
		{do: func(h *harness) {
			if n := h.store.ExportAll(t0.Add(7*sec), h.emit); n != 2 {
				h.t.Fatalf("ExportAll emitted %d records, want 2", n)
			}
		}, want: []rec{{A, 1, flow.EndForced, 5, 2, 7 * sec}, {B, 2, flow.EndOfFlow, 2, 1, 7 * sec}}}, // deltas since the 5s records
		{do: wantFound(conn(A, 1, 0, 0), false)},
		{do: wantFound(conn(C, 3, 0, 0), true)},
	} {
		h.got = nil
		st.do(h)
		if !slices.Equal(h.got, st.want) {
			t.Fatalf("step %d produced %+v, want %+v", i, h.got, st.want)
		}
	}
}

// The proxy SNAT address rides with the connection from its first report
// (a NEW event, no counters) through updates to every record, the final
// one included.
func TestRecordsCarryProxySnat(t *testing.T) {
	h := newHarness(t, 0)
	snat := netip.MustParseAddrPort("172.31.0.2:40123")
	c := with(conn(1, 9, 0, 0), func(c *flow.Conn) {
		c.ProxySnatIP, c.ProxySnatPort = snat.Addr().As16(), snat.Port()
	})
	h.store.Upsert(&c, t0)
	h.store.Upsert(ptr(with(c, func(c *flow.Conn) {
		c.Fwd, c.Rev = flow.Counters{Packets: 3, Bytes: 300}, flow.Counters{Packets: 2, Bytes: 200}
	})), t0.Add(sec))
	h.tick(5 * sec)
	h.store.Close(ptr(with(c, func(c *flow.Conn) {
		c.Fwd, c.Rev = flow.Counters{Packets: 5, Bytes: 500}, flow.Counters{Packets: 4, Bytes: 400}
	})), t0.Add(6*sec))
	h.tick(7 * sec)
	if len(h.full) != 2 {
		t.Fatalf("got %d records, want 2 (active, end-of-flow): %+v", len(h.full), h.got)
	}
	for i, r := range h.full {
		if got, ok := r.ProxySnat(); !ok || got != snat {
			t.Errorf("record %d (%s): ProxySnat = %v %v, want %v", i, r.EndReason, got, ok, snat)
		}
	}
	if h.full[1].EndReason != flow.EndOfFlow || h.full[1].FwdDelta.Bytes != 200 || h.full[1].RevDelta.Bytes != 200 {
		t.Errorf("final record %+v, want end-of-flow with 200/200 bytes of delta", h.full[1])
	}
}

// A NEW carries no counters; with eBPF counting the rest, a connection
// conntrack counts gets its counters with the resync or its end
// (flow.CountersConntrackLater until then). An idle record before that would
// be all zeros: it goes idle silently, and its counters, when they come,
// start a new period as any resumed activity. Otherwise zero counters are a
// fact (accounting off, a synthetic entry) and the idle record goes out.
func TestIdleWithoutAnyCounter(t *testing.T) {
	const A = 40001
	qcfg := expirequeue.Config{ActiveTimeout: 5 * sec, IdleTimeout: 15 * sec}
	for _, tc := range []struct {
		later    bool
		wantIdle []rec
	}{
		{true, nil},
		{false, []rec{{A, 1, flow.EndIdleTimeout, 0, 0, 15 * sec}}},
	} {
		h := newHarnessWith(t, Config{}, qcfg)
		born := conn(A, 1, 0, 0)
		if tc.later {
			born.Counters = flow.CountersConntrackLater
		}
		h.store.Upsert(&born, t0)
		h.tick(15 * sec)
		if !slices.Equal(h.got, tc.wantIdle) {
			t.Fatalf("counters later %v: idle tick produced %+v, want %+v", tc.later, h.got, tc.wantIdle)
		}
		h.got = nil
		h.store.Upsert(ptr(conn(A, 1, 10, 5)), t0.Add(20*sec))
		h.tick(25 * sec)
		if want := []rec{{A, 1, flow.EndActiveTimeout, 10, 5, 25 * sec}}; !slices.Equal(h.got, want) {
			t.Fatalf("counters later %v: after its counters came: %+v, want %+v", tc.later, h.got, want)
		}
	}
}
