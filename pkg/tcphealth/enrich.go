package tcphealth

import (
	"container/list"
	"math"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// sock_stats.flags (FLAG_* in bpf/tcphealth.c).
const (
	// flagReplaced: the entry replaced a closed one, i.e. a new
	// connection reused the tuple.
	flagReplaced = 1
	// flagRstUnsure: tcp_receive_reset fired where the stack may have
	// called tcp_reset() itself to abort on data; the abort's own reset
	// clears it right after (same call chain, same socket lock).
	flagRstUnsure = 2
)

// resetSettle is how long after an unsure reset's socket closed its flag
// is taken as final: the abort's reset that would clear it comes within
// microseconds of the close (tcp_reset() closes the socket, returns, and
// the caller sends it), so a flag still set by then was an RST received.
const resetSettle = time.Second

// connState is what Enrich keeps of one connection between its records.
type connState struct {
	tuple flow.Tuple
	socks []sockState
	// Resets per direction (0: sent by the source, 1: by the
	// destination), cumulative over the connection's records: sent by
	// that direction's sockets, received by the other direction's, and
	// the total reported so far (the running maximum of the two).
	rstSent, rstRecv, rstReported [2]uint64
	elem                          *list.Element
	lastUsed                      int64 // monotonic ns of its latest Enrich
}

// sockState is one of the connection's sockets as last read.
type sockState struct {
	key bpfSockKey
	fwd bool // the socket is the source's: its tuple is a form
	// born is the entry's birth time at the last read; 0 when the entry
	// was found gone (its successor then counts from zero).
	born uint64
	last bpfSockStats
	// id is the record's conntrack id at the last read; foreign the birth
	// time of an entry a new connection took over, skipped while the
	// records still carry that id.
	id      uint32
	foreign uint64
	estDone bool // the establish time was reported
	// rstUnsureDone: the entry's unsure reset (flagRstUnsure) was
	// counted as received.
	rstUnsureDone bool
}

func (st *connState) sock(k *bpfSockKey) *sockState {
	for i := range st.socks {
		if st.socks[i].key == *k {
			return &st.socks[i]
		}
	}
	return nil
}

// period gathers what one record reports.
type period struct {
	samples, sum uint64
	min, max     uint32
	// noExtremes: a socket had samples but no min/max entry, so its
	// average stands in for its extremes.
	noExtremes bool
	retrans    [2]uint64
	zeroWin    uint64
	establish  uint32
}

func (p *period) extremes(lo, hi uint32) {
	if p.min == 0 || lo < p.min {
		p.min = lo
	}
	if hi > p.max {
		p.max = hi
	}
}

func sockKey(t flow.Tuple) bpfSockKey {
	return bpfSockKey{Saddr: t.SrcIP, Daddr: t.DstIP, Sport: t.SrcPort, Dport: t.DstPort, Proto: flow.ProtoTCP}
}

func keyTuple(k *bpfSockKey) flow.Tuple {
	return flow.Tuple{SrcIP: k.Saddr, DstIP: k.Daddr, SrcPort: k.Sport, DstPort: k.Dport, Proto: flow.ProtoTCP}
}

// Enrich fills r.Health's RTT, retransmit, reset, establish and
// zero-window fields with what the connection's sockets on this node saw
// since its previous record, and forgets the connection at its last one.
// Records of other protocols are left alone; a TCP connection without a
// socket on this node gets those fields zero. A few map lookups per
// record; it never waits on I/O.
func (t *Tracker) Enrich(r *flow.Record) {
	if r.Tuple.Proto != flow.ProtoTCP {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.metrics.enriched.Inc()
	now := t.now()
	st, fresh := t.state(r.Tuple, now)
	final := r.EndReason == flow.EndOfFlow

	// The client's socket is named by a form, the server's by its
	// Reverse; with both ends on this node both exist.
	forms, n := r.Conn.Forms()
	keys := &t.keys
	nk := 0
	for i := range n {
	next:
		for _, tu := range [2]flow.Tuple{forms[i], forms[i].Reverse()} {
			k := sockKey(tu)
			for j := range nk {
				if keys[j] == k {
					continue next
				}
			}
			keys[nk] = k
			nk++
		}
	}
	var p period
	for i := range nk {
		fwd, ok := r.Conn.DirectionOf(keyTuple(&keys[i]))
		if !ok {
			continue // cannot happen: every key comes from a form
		}
		t.readSocket(st, &keys[i], fwd, r.ID, now, final, &p)
	}
	if p.noExtremes {
		t.metrics.minmaxMissing.Inc() // once per record period, as its help says
	}
	t.fill(&r.Health, st, &p)
	switch {
	case final:
		t.forget(st, delEndOfFlow, true)
	case fresh && len(st.socks) == 0:
		// No socket of it on this node (yet): nothing to keep, and
		// such connections (traffic this node only forwards) must not
		// push out the state of those that have one.
		t.forget(st, delForgotten, true)
	case fresh:
		for len(t.conns) > t.cfg.MaxConnections {
			t.forget(t.order.Front().Value.(*connState), delForgotten, false)
			t.metrics.forgotten.WithLabelValues(forgetCapacity).Inc()
		}
	}
}

// state returns the connection's state, creating it (fresh) as the most
// recently enriched; Enrich enforces MaxConnections once it knows whether
// the new state is kept at all.
func (t *Tracker) state(tu flow.Tuple, now int64) (st *connState, fresh bool) {
	st = t.conns[tu]
	if st != nil {
		t.order.MoveToBack(st.elem)
		st.lastUsed = now
		return st, false
	}
	st = &connState{tuple: tu, lastUsed: now}
	st.elem = t.order.PushBack(st)
	t.conns[tu] = st
	t.metrics.conns.Set(float64(len(t.conns)))
	return st, true
}

// readSocket adds the socket's changes since the connection's previous
// read of it to p and to the connection's reset totals. final says the
// record is the connection's last (its entries go with it).
func (t *Tracker) readSocket(st *connState, k *bpfSockKey, fwd bool, id uint32, now int64, final bool, p *period) {
	cur := &t.cur
	ok, err := t.table.lookup(k, cur)
	if err != nil {
		t.metrics.mapErrors.Inc()
		return
	}
	ss := st.sock(k)
	if !ok {
		if ss != nil && ss.born != 0 {
			// Evicted or swept while the connection still reports:
			// events since its previous read are lost.
			t.metrics.vanished.Inc()
			ss.born, ss.last = 0, bpfSockStats{}
		}
		return
	}
	var base bpfSockStats // a new entry: all it counted is new
	if ss == nil {
		st.socks = append(st.socks, sockState{key: *k, fwd: fwd})
		ss = &st.socks[len(st.socks)-1]
		t.owned[*k]++
	} else {
		switch {
		case ss.foreign != 0 && ss.foreign == cur.BornNs && ss.id == id:
			return
		case cur.BornNs == ss.born:
			base = ss.last
		case ss.born != 0 && cur.Flags&flagReplaced != 0 && ss.id == id:
			// A new socket on the tuple replaced this connection's
			// closed one while the connection still reports: the
			// new entry is the next connection's.
			ss.foreign = cur.BornNs
			ss.born, ss.last = 0, bpfSockStats{}
			t.metrics.foreign.Inc()
			return
		case ss.born != 0:
			// Recreated (evicted or deleted, then a new event):
			// counts from zero, those in between are lost.
			t.metrics.vanished.Inc()
		}
	}
	ss.fwd = fwd
	ss.id = id
	ss.foreign = 0

	if cur.RttSamples > base.RttSamples && cur.RttSumUs >= base.RttSumUs {
		n := cur.RttSamples - base.RttSamples
		sum := cur.RttSumUs - base.RttSumUs
		mm := &t.mm
		found, err := t.table.takeMinMax(k, mm)
		if err != nil {
			t.metrics.mapErrors.Inc()
		}
		if found {
			p.extremes(mm.MinUs, mm.MaxUs)
		} else {
			avg := clamp32(sum / n)
			p.extremes(avg, avg)
			p.noExtremes = true
		}
		p.samples += n
		p.sum += sum
	}
	dir, other := 0, 1
	if !fwd {
		dir, other = 1, 0
	}
	// uint32 differences stay right across a wrap of the kernel's counter.
	p.retrans[dir] += uint64(cur.Retrans - base.Retrans)
	st.rstSent[dir] += uint64(cur.RstSent - base.RstSent)
	st.rstRecv[other] += uint64(cur.RstRecv - base.RstRecv)
	if cur.BornNs != ss.born {
		ss.rstUnsureDone = false // a new entry: its own flag
	}
	if cur.Flags&flagRstUnsure != 0 && !ss.rstUnsureDone && (final || closedLongAgo(cur.ClosedNs, now)) {
		// The abort's reset did not cancel it: an RST received. Left
		// for a later record while it may still come; the last record
		// takes it as it is, as its entry goes.
		st.rstRecv[other]++
		ss.rstUnsureDone = true
	}
	p.zeroWin += uint64(cur.ZeroWin - base.ZeroWin)
	if cur.EstablishUs != 0 && !ss.estDone {
		if p.establish == 0 {
			p.establish = cur.EstablishUs
		}
		ss.estDone = true
	}
	ss.born = cur.BornNs
	ss.last = *cur
}

// fill writes the period into h (only the fields this package owns).
func (t *Tracker) fill(h *flow.Health, st *connState, p *period) {
	h.RTTMinMicros, h.RTTAvgMicros, h.RTTMaxMicros, h.RTTSamples = 0, 0, 0, 0
	if p.samples > 0 {
		avg := clamp32(p.sum / p.samples)
		// A sample racing the read may sit in the extremes of one
		// period and the average of the next: keep min <= avg <= max.
		h.RTTMinMicros = min(p.min, avg)
		h.RTTMaxMicros = max(p.max, avg)
		h.RTTAvgMicros = avg
		h.RTTSamples = clamp32(p.samples)
	}
	h.FwdRetransmits = clamp32(p.retrans[0])
	h.RevRetransmits = clamp32(p.retrans[1])
	var rst [2]uint32
	for d := range 2 {
		total := max(st.rstSent[d], st.rstRecv[d])
		rst[d] = clamp32(total - st.rstReported[d])
		st.rstReported[d] = total
	}
	h.FwdResets, h.RevResets = rst[0], rst[1]
	h.EstablishMicros = p.establish
	h.ZeroWindows = clamp32(p.zeroWin)
}

// forget drops the connection's state and deletes its sockets' entries.
// current says Enrich has just read them, so every entry with a recorded
// birth is the connection's own; otherwise each is looked up first and an
// entry a new connection took over is left alone.
func (t *Tracker) forget(st *connState, reason string, current bool) {
	for i := range st.socks {
		ss := &st.socks[i]
		if !current {
			cur := &t.cur
			ok, err := t.table.lookup(&ss.key, cur)
			if err != nil {
				t.metrics.mapErrors.Inc()
			}
			switch {
			case !ok:
				ss.born = 0
			case cur.BornNs == ss.born:
			case cur.Flags&flagReplaced != 0:
				ss.born = 0 // a new connection's
			default:
				ss.born = cur.BornNs // recreated for this socket
			}
		}
		if ss.born != 0 {
			existed, err := t.table.delete(&ss.key)
			if err != nil {
				t.metrics.mapErrors.Inc()
			}
			if existed {
				t.deleted++
				t.metrics.deleted.WithLabelValues(reason).Inc()
			}
		}
		if t.owned[ss.key]--; t.owned[ss.key] <= 0 {
			delete(t.owned, ss.key)
		}
	}
	t.order.Remove(st.elem)
	delete(t.conns, st.tuple)
	t.metrics.conns.Set(float64(len(t.conns)))
}

// closedLongAgo says a socket closed at closedNs (0: not closed yet) did
// so at least resetSettle before now.
func closedLongAgo(closedNs uint64, now int64) bool {
	return closedNs != 0 && now > 0 && uint64(now) > closedNs && uint64(now)-closedNs >= uint64(resetSettle.Nanoseconds())
}

func clamp32(v uint64) uint32 {
	if v > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(v)
}
