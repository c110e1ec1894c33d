package bpfcounters

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/flow"
)

// FillResult says what Fill found for a connection.
type FillResult struct {
	// Seen: a view of each direction that had packets was found (for a
	// one-way UDP flow, Fwd only). A reply direction counts as having had
	// packets when the connection's conntrack Rev counters say so.
	Seen bool
	// Lossy: a view of this connection was lost to a full map or ring, or
	// counted packets conntrack accounts differently (IP fragments, IPv6
	// routing/destination-options/AH headers); the caller must use
	// conntrack's counters.
	Lossy bool
	// Finished (TCP): RST seen in either direction, or FIN in both.
	Finished bool
	// AttachedAt is the latest attach time (Unix ns) among the interfaces
	// whose entries were used: packets before it were not counted.
	AttachedAt int64
	// FirstNanos and LastNanos are the Unix ns of the first and the last
	// packet counted.
	FirstNanos, LastNanos int64
	// FwdFlags is the OR of the TCP flags (FIN 0x01, SYN 0x02, RST 0x04,
	// ACK 0x10...) counted in the forward view, 0 when none was found: at
	// a connection's birth, a view that already carries FIN or RST, or
	// lacks SYN, predates the connection.
	FwdFlags uint8
}

// Fill looks up the views of conn, sets conn.Fwd and conn.Rev from them
// and says what it found. conn is unchanged when res.Seen is false.
func (c *Counters) Fill(conn *flow.Conn) (res FillResult, err error) {
	return c.fill(conn, true)
}

// Born says whether the program counted conn's forward direction (Seen),
// with the same Lossy, AttachedAt, FirstNanos and FwdFlags as Fill
// (from the forward views only), without reading
// the reply direction or setting any counter: what a connection's NEW
// event needs to know (the program counts a packet before conntrack
// creates the entry), in one or two lookups instead of up to four, and in
// none when a recent round read the view (a NEW is applied tens of
// milliseconds after its first packet).
func (c *Counters) Born(conn *flow.Conn) (FillResult, error) {
	return c.fill(conn, false)
}

func (c *Counters) fill(conn *flow.Conn, reply bool) (res FillResult, err error) {
	// The views and results live in c: handed to the table interface,
	// locals would escape and cost allocations per call.
	c.fillMu.Lock()
	defer c.fillMu.Unlock()
	v, fwd, rev := &c.fillViews, &c.fillPicks[0], &c.fillPicks[1]
	*v = viewsOf(conn)
	if err := pick(c.cache, &v.fwd, fwd); err != nil {
		return res, fmt.Errorf("fill %s: %w", conn.Tuple, err)
	}
	*rev = pickResult{}
	if reply {
		if err := pick(c.cache, &v.rev, rev); err != nil {
			return res, fmt.Errorf("fill %s: %w", conn.Tuple, err)
		}
	}

	res.Lossy = fwd.found && fwd.val.TcpFlags&valIncomplete != 0 || rev.found && rev.val.TcpFlags&valIncomplete != 0
	c.mu.Lock()
	lossAll := c.lossAll
	if !res.Lossy && len(c.lossy) > 0 {
		for _, ks := range [2]*[2]bpfFlowKey{&v.fwd, &v.rev} {
			for i := range ks {
				if _, ok := c.lossy[ks[i]]; ok {
					res.Lossy = true
				}
			}
		}
	}
	for _, p := range [2]*pickResult{fwd, rev} {
		if p.found {
			res.AttachedAt = max(res.AttachedAt, c.attachedAt[p.val.Ifindex])
			res.LastNanos = max(res.LastNanos, int64(p.val.LastNs))
			if res.FirstNanos == 0 || int64(p.val.FirstNs) < res.FirstNanos {
				res.FirstNanos = int64(p.val.FirstNs)
			}
		}
	}
	c.mu.Unlock()
	res.LastNanos = c.unixOf(uint64(res.LastNanos))
	res.FirstNanos = c.unixOf(uint64(res.FirstNanos))
	if lossAll != 0 && !res.Lossy {
		// A loss no record named hit the connections counted before it.
		// Without a start time (a NEW event has none) the first packet
		// counted in the views dates the connection; with no view found
		// it is unknown, and taken as before the loss.
		start := conn.StartNanos
		if start == 0 {
			start = res.FirstNanos
		}
		res.Lossy = start <= lossAll
	}
	if fwd.found {
		res.FwdFlags = uint8(fwd.val.TcpFlags) // the TCP bits; valIncomplete is above them
	}

	if conn.Tuple.Proto == flow.ProtoTCP {
		ff, rf := fwd.val.TcpFlags, rev.val.TcpFlags
		if !fwd.found {
			ff = 0
		}
		if !rev.found {
			rf = 0
		}
		res.Finished = (ff|rf)&tcpRST != 0 || (ff&tcpFIN != 0 && rf&tcpFIN != 0)
	}
	if !reply {
		res.Seen = fwd.found
		return res, nil
	}
	res.Seen = fwd.found && (rev.found || conn.Rev.Packets == 0)
	if !res.Seen {
		return res, nil
	}
	conn.Fwd = flow.Counters{Packets: fwd.val.Packets, Bytes: fwd.val.Bytes}
	conn.Rev = flow.Counters{}
	if rev.found {
		conn.Rev = flow.Counters{Packets: rev.val.Packets, Bytes: rev.val.Bytes}
	}
	return res, nil
}

// Forget deletes every view of conn (after its end) and forgets that any
// was lost. Missing entries are not an error.
func (c *Counters) Forget(conn *flow.Conn) error {
	if err := c.ForgetAll(unsafe.Slice(conn, 1)); err != nil {
		return fmt.Errorf("%s: %w", conn.Tuple, err)
	}
	return nil
}

// ForgetAll is Forget for every connection of conns, in one system call
// when every view exists (the kernel stops a batch at a missing key; the
// rest goes in another).
func (c *Counters) ForgetAll(conns []flow.Conn) error {
	if len(conns) == 0 {
		return nil
	}
	c.fillMu.Lock()
	defer c.fillMu.Unlock()
	c.forgetKeys = c.forgetKeys[:0]
	c.mu.Lock()
	for i := range conns {
		v := &c.fillViews
		*v = viewsOf(&conns[i])
		if len(c.lossy) > 0 {
			for _, ks := range [2]*[2]bpfFlowKey{&v.fwd, &v.rev} {
				for j := range ks {
					delete(c.lossy, ks[j])
				}
			}
		}
		c.forgetKeys = append(append(c.forgetKeys, v.fwd[:]...), v.rev[:]...)
	}
	c.metrics.lossyKeys.Set(float64(len(c.lossy)))
	c.mu.Unlock()
	if err := c.cache.deleteKeys(c.forgetKeys); err != nil {
		return fmt.Errorf("forget the views of %d connections: %w", len(conns), err)
	}
	return nil
}

// Sweep deletes the entries whose last packet is older than olderThan and
// that no live connection owns (live(view) false): packets after a
// connection's end, untracked traffic. It also drops lost-key marks as
// old and unowned, and the attach times of interfaces detached more than
// olderThan ago that no entry names any more. It walks the whole map, so
// it is for rare calls (the agent's resync interval). It returns how many
// entries it deleted.
func (c *Counters) Sweep(olderThan time.Duration, live func(view flow.Tuple) bool) (int, error) {
	if c.objs.Flows == nil {
		return 0, fmt.Errorf("sweep flow map: closed")
	}
	cutoff := uint64(max(monoNow()-olderThan.Nanoseconds(), 0))
	var stale []bpfFlowKey
	named := make(map[uint32]struct{}) // interfaces the kept entries were counted on
	var k bpfFlowKey
	var v bpfFlowVal
	it := c.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		if v.LastNs < cutoff && !live(viewOf(&k)) {
			stale = append(stale, k)
		} else {
			named[v.Ifindex] = struct{}{}
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("sweep flow map: %w", err)
	}
	n := 0
	c.fillMu.Lock() // through the cache: Born must not find them there
	for i := range stale {
		if err := c.cache.delete(&stale[i]); err != nil {
			c.fillMu.Unlock()
			c.metrics.swept.Add(float64(n))
			return n, fmt.Errorf("sweep flow %s: %w", viewOf(&stale[i]), err)
		}
		n++
	}
	c.fillMu.Unlock()
	c.metrics.swept.Add(float64(n))

	wallCutoff := time.Now().Add(-olderThan).UnixNano()
	c.mu.Lock()
	for k, at := range c.lossy {
		if at < wallCutoff && !live(viewOf(&k)) {
			delete(c.lossy, k)
		}
	}
	c.metrics.lossyKeys.Set(float64(len(c.lossy)))
	c.mu.Unlock()
	c.pruneAttachTimes(named, wallCutoff)
	return n, nil
}

// pruneAttachTimes drops the attach time of each interface that is not
// attached, was detached before cutoff and is named by no entry in named.
// The grace period covers an entry the walk missed because it was
// inserted during it: its interface was attached then, so after cutoff.
func (c *Counters) pruneAttachTimes(named map[uint32]struct{}, cutoff int64) {
	// attachMu before mu, as Attach takes them: an interface attached
	// while this runs is either in c.attached or not yet in attachedAt.
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	attached := make(map[uint32]struct{}, len(c.attached))
	for k := range c.attached {
		attached[uint32(k.ifindex)] = struct{}{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for idx := range c.attachedAt {
		if _, ok := attached[idx]; ok {
			continue
		}
		if _, ok := named[idx]; ok {
			continue
		}
		if at, ok := c.detachedAt[idx]; ok && at >= cutoff {
			continue
		}
		delete(c.attachedAt, idx)
		delete(c.detachedAt, idx)
	}
}
