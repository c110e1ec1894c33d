package tcphealth

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// TestUnsureResetCountsOnceSettled: a reset the kernel left unsure (the
// socket could have aborted on data itself) is counted as received once
// its socket's close is resetSettle old, once; before that a record leaves
// it for a later one.
func TestUnsureResetCountsOnceSettled(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	cli := client(c)
	f.tab.add(cli, func(s *bpfSockStats) { s.Retrans = 1 })
	f.enrich(c, false)

	// The server's RST reaches the client in CLOSE_WAIT: unsure, and
	// tcp_reset() closes the socket.
	f.tab.add(cli, func(s *bpfSockStats) { s.Flags |= flagRstUnsure; s.ClosedNs = uint64(f.mono) })
	f.mono += int64(resetSettle / 2)
	if h := f.enrich(c, false); h.RevResets != 0 || h.FwdResets != 0 {
		t.Fatalf("record %v after the close: %+v, want the unsure reset left for later", resetSettle/2, h)
	}
	f.mono += int64(resetSettle)
	if h := f.enrich(c, false); h.RevResets != 1 || h.FwdResets != 0 {
		t.Fatalf("record after the settle time: %+v, want one reset by the destination", h)
	}
	f.mono += int64(time.Minute)
	if h := f.enrich(c, true); h.RevResets != 0 || h.FwdResets != 0 {
		t.Fatalf("last record: %+v, want the reset not counted again", h)
	}
}

// TestUnsureResetCancelled: the abort's own reset cleared the flag (the
// socket aborted on data: it sent a reset and received none).
func TestUnsureResetCancelled(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	srv := server(c)
	f.tab.add(srv, func(s *bpfSockStats) { s.Flags |= flagRstUnsure })
	f.enrich(c, false)
	f.tab.add(srv, func(s *bpfSockStats) { s.ClosedNs = uint64(f.mono); s.Flags &^= flagRstUnsure; s.RstSent = 1 })
	f.mono += int64(time.Minute)
	h := f.enrich(c, true)
	if h.RevResets != 1 || h.FwdResets != 0 {
		t.Fatalf("got %+v, want one reset by the destination (sent by the server, none received by it)", h)
	}
}

// TestUnsureResetAtLastRecord: the last record takes an unsure reset as
// received even within the settle time (its entry goes with it), and with
// the sender's half on this node it is still one reset.
func TestUnsureResetAtLastRecord(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	f.tab.add(server(c), func(s *bpfSockStats) { s.RstSent = 1; s.ClosedNs = uint64(f.mono) })
	f.tab.add(client(c), func(s *bpfSockStats) { s.Flags |= flagRstUnsure; s.ClosedNs = uint64(f.mono) })
	h := f.enrich(c, true)
	if h.RevResets != 1 || h.FwdResets != 0 {
		t.Fatalf("got %+v, want one reset by the destination", h)
	}
	// Client side alone (the sender is not on this node).
	c2 := c
	c2.Tuple.SrcPort, c2.ID = 40001, 8
	f.tab.add(client(c2), func(s *bpfSockStats) { s.Flags |= flagRstUnsure; s.ClosedNs = uint64(f.mono) })
	if h := f.enrich(c2, true); h.RevResets != 1 || h.FwdResets != 0 {
		t.Fatalf("client side alone: got %+v, want one reset by the destination", h)
	}
}

// TestUnsureResetOfNewEntryCounts: an entry recreated under the tuple has
// its own flag, counted although the previous entry's was.
func TestUnsureResetOfNewEntryCounts(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(false)
	cli := client(c)
	f.tab.add(cli, func(s *bpfSockStats) { s.Flags |= flagRstUnsure; s.ClosedNs = uint64(f.mono) })
	f.mono += int64(2 * resetSettle)
	if h := f.enrich(c, false); h.RevResets != 1 {
		t.Fatalf("first entry: %+v, want one reset", h)
	}
	delete(f.tab.socks, cli) // evicted
	f.tab.add(cli, func(s *bpfSockStats) { s.Flags |= flagRstUnsure; s.ClosedNs = uint64(f.mono) })
	f.mono += int64(2 * resetSettle)
	if h := f.enrich(c, false); h.RevResets != 1 {
		t.Fatalf("recreated entry: %+v, want its reset counted", h)
	}
}

// TestSweepDeletesUnchangedClosedEntry: the re-check keeps deleting what
// it should: a closed, untaken entry still the one the walk saw.
func TestSweepDeletesUnchangedClosedEntry(t *testing.T) {
	f := newFixture(t, Config{ClosedGrace: time.Minute})
	k := sockKey(flow.NewTuple(podA, podB, 41000, 8080, flow.ProtoTCP))
	f.tab.add(k, func(s *bpfSockStats) { s.ClosedNs = uint64(f.mono) })
	f.tab.minmax[k] = bpfRttMinmax{MinUs: 1, MaxUs: 2}
	f.mono += int64(2 * time.Minute)
	f.tr.sweep(nil)
	if _, ok := f.tab.socks[k]; ok {
		t.Fatal("closed untaken entry past its grace not swept")
	}
	if _, ok := f.tab.minmax[k]; ok {
		t.Fatal("swept entry's min/max left")
	}
	if v := value(t, f.tr.metrics.deleted.WithLabelValues(delSwept)); v != 1 {
		t.Fatalf("deleted_entries_total{reason=swept} %v, want 1", v)
	}
}
