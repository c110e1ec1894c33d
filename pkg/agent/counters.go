package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/flow"
)

// Counters is a packet counter source that sees connections where they
// cross the pods' interfaces (*bpfcounters.Counters, through an adapter).
// With it, conntrack only tells the loop of births, NAT and deaths; the
// counters of a connection it saw from its first packet come from here,
// read only for the connections that had packets since the last read.
type Counters interface {
	// ReadChanged calls fn once per view (the 5-tuple as it was on the
	// wire at one interface) whose counters moved since the previous call;
	// fin reports a FIN or RST in that view.
	ReadChanged(fn func(view flow.Tuple, fin bool)) error
	// Fill sets c.Fwd and c.Rev from the views of c; it leaves c alone
	// when the source has not seen c.
	Fill(c *flow.Conn) (CounterFill, error)
	// Forget drops the views of c once it ended.
	Forget(c *flow.Conn) error
	// Sweep drops views that no live connection owns and that saw no
	// packet for olderThan. Its cost follows the source's size: rare.
	Sweep(olderThan time.Duration, live func(view flow.Tuple) bool) (int, error)
}

// batchForgetter is a Counters that deletes the views of many connections
// at once (*bpfcounters.Counters: one system call instead of one each).
type batchForgetter interface {
	ForgetAll(cs []flow.Conn) error
}

// counterBirth is a Counters that can tell, more cheaply than Fill, whether
// it counted a new connection's first packets (*bpfcounters.Counters
// looks up only the forward views).
type counterBirth interface {
	Born(c *flow.Conn) (CounterFill, error)
}

// CounterFill is what Counters.Fill found.
type CounterFill struct {
	Seen bool // the source has counters of c
	// Lossy: the source missed packets of c (its table was full); its
	// counters cannot be trusted for c.
	Lossy bool
	// Finished: a TCP RST, or a FIN in both directions.
	Finished bool
	// AttachedAt is when the source started watching the interfaces it
	// read c on (Unix ns): a connection that started earlier was seen
	// from the middle.
	AttachedAt int64
	// FirstNanos and LastNanos are when the source counted c's first and
	// last packet (Unix ns); zero when unknown.
	FirstNanos, LastNanos int64
	// FwdFlags are the TCP flags seen in c's forward direction (SYN 0x02,
	// FIN 0x01, RST 0x04); zero when unknown or not TCP.
	FwdFlags uint8
}

// TCP flag bits of CounterFill.FwdFlags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
)

// reuseWindow: a DESTROY whose views counted a packet less than this
// before the entry died shares them with the entry that replaced it on the
// same tuple (the packet that found the old entry expired made the new
// one, and the program counted it first). A connection ends by timing out,
// long after its last packet, or by a close the program saw.
const reuseWindow = time.Second

// staleAfter: a view whose first packet came this long before the NEW of
// the connection it would count belongs to an earlier connection on the
// tuple. A client port comes round after seconds at the fastest (28k
// ephemeral ports); a NEW is normally handled milliseconds after the
// packet (a connection whose NEW is handled later than this is counted
// by conntrack: right, if costlier).
const staleAfter = 2 * time.Second

// Bounds of the tuples whose next connection is left to conntrack
// (counterStage.reborn).
const (
	maxReborn = 4096
	rebornTTL = 10 * time.Second
)

// bornMargin is how long before its NEW event is handled a connection may
// have started (its first packet, then conntrack's confirmation and the
// event's delivery), beyond the source's batching (LoopConfig.EventDelay):
// an interface attached later than that may have missed its first
// packets.
const bornMargin = 50 * time.Millisecond

// CrossCheck compares, when a connection's kernel entry dies, the totals
// of the counter source with conntrack's (its DESTROY event carries them),
// for tests and for users who doubt either. Tolerances are absolute, per
// direction.
type CrossCheck struct {
	Enabled          bool
	TolerancePackets uint64
	ToleranceBytes   uint64
}

// viewSweepAge is how long a view no live connection owns is kept. A view
// outlives its connection's record by TIME_WAIT (two minutes), and its
// DESTROY still reads it then for the cross-check.
const viewSweepAge = 5 * time.Minute

// counterStage is the loop's use of a Counters. It runs on the loop
// goroutine only.
type counterStage struct {
	src   Counters
	check CrossCheck
	// seen dedups one read round: a connection has up to four views.
	seen map[flow.Tuple]struct{}
	// finishing holds the connections whose FIN handshake or RST a round
	// saw; they are closed by the next round, so that the handshake's last
	// ACK is in their final counters, as it is in conntrack's.
	finishing, closing []flow.Tuple
	// reborn holds tuples whose views a DESTROY found shared with the
	// entry that replaced it (Unix ns of that DESTROY): the views are
	// gone with the old connection's packets and some of the new one's,
	// so the next NEW on the tuple is counted by conntrack.
	reborn map[flow.Tuple]int64
	// closeGets counts the GETs of a conntrack-counted connection whose
	// FIN or RST the program saw but whose entry had not finished yet (a
	// GET between the FINs and the last ACK): it is read again the next
	// rounds, at most closeGetRetries times, since no packet may come to
	// mark its views again.
	closeGets map[flow.Tuple]uint8
	// refresh holds the connections born counted by conntrack, in the
	// order of their next read (all are read refreshEvery apart, so
	// appending keeps the order); from head on. Without it their
	// counters would come only with the resync or their DESTROY: a
	// record of a pod's first connections (born as its interface was
	// attached) would wait 30 s for a UDP exchange, 2 min for TCP.
	refresh     []refreshAt
	refreshHead int
	// earlyEnds holds views whose FIN or RST a round read before the
	// loop knew their connection (its NEW not applied yet: a whole short
	// connection fits between two rounds), with when (Unix ns). No later
	// packet marks such views again, so without this the connection's
	// end would wait for its DESTROY, after TIME_WAIT.
	earlyEnds map[flow.Tuple]int64
	// forgotten holds the connections whose views go at the end of the
	// tick or batch of events that exported them (flushForgotten).
	forgotten []flow.Conn
	m         counterMetrics
}

// refreshAt is when to read a conntrack-counted connection next.
type refreshAt struct {
	t  flow.Tuple
	id uint32
	at int64 // Unix ns
}

// Bounds of counterStage.earlyEnds: a NEW is applied within a round or
// two of its connection's first packet, so older entries are views of
// connections that ended before (late packets) and are dropped.
const (
	maxEarlyEnds = 16384
	earlyEndTTL  = 2 * staleAfter
)

// closeGetRetries bounds the GETs of one closing conntrack-counted
// connection: a half-closed connection that stays open costs no more.
const closeGetRetries = 5

type counterMetrics struct {
	readErrors, fillErrors, forgetErrors prometheus.Counter
	unmatched, switched, incomplete      prometheus.Counter
	reused, rebornFull, staleViews       prometheus.Counter
	swept, earlyEndsFull                 prometheus.Counter
	agree, disagree                      prometheus.Counter
}

func newCounterStage(src Counters, check CrossCheck, reg prometheus.Registerer) (*counterStage, error) {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	crossCheck := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_agent_counter_crosscheck_total",
		Help: "Connections whose eBPF totals were compared with conntrack's at their end (counters.crossCheck), by result.",
	}, []string{"result"})
	s := &counterStage{
		src:       src,
		check:     check,
		seen:      make(map[flow.Tuple]struct{}),
		reborn:    make(map[flow.Tuple]int64),
		closeGets: make(map[flow.Tuple]uint8),
		earlyEnds: make(map[flow.Tuple]int64),
		m: counterMetrics{
			readErrors:    c("flowlens_agent_counter_read_errors_total", "Rounds of reading changed eBPF counters that failed (retried next round)."),
			fillErrors:    c("flowlens_agent_counter_lookup_errors_total", "Connections whose eBPF counters could not be read."),
			forgetErrors:  c("flowlens_agent_counter_forget_errors_total", "Ended connections whose eBPF views could not be deleted (the sweep removes them later)."),
			unmatched:     c("flowlens_agent_counter_views_unmatched_total", "Changed eBPF views that named no live connection (traffic conntrack does not track, packets after a connection ended)."),
			switched:      c("flowlens_agent_counter_source_switches_total", "Connections counted by conntrack although their first packet crossed a pod interface: the program was attached too late, lost packets to a full table, or a previous connection on the tuple had just died."),
			incomplete:    c("flowlens_agent_counter_incomplete_total", "eBPF-counted connections whose packets the program lost (full table) after their birth; their final totals come from conntrack when those are not lower."),
			reused:        c("flowlens_agent_counter_views_reused_total", "Connections whose views counted packets of the connection that replaced them on the same tuple; their final totals come from conntrack."),
			staleViews:    c("flowlens_agent_counter_views_stale_total", "New connections born onto views a previous connection on the same tuple left (or made in its middle); they are counted by conntrack."),
			rebornFull:    c("flowlens_agent_counter_reborn_full_total", "Reused tuples not remembered because the set was full; the next connection on such a tuple may count the packet that created it twice."),
			swept:         c("flowlens_agent_counter_views_swept_total", "eBPF views deleted by the sweep because no connection owned them."),
			earlyEndsFull: c("flowlens_agent_counter_early_ends_full_total", "FINs or RSTs read before their connection's NEW event that could not be remembered (the set was full); such a connection is closed by its DESTROY, after TIME_WAIT."),
			agree:         crossCheck.WithLabelValues("agree"),
			disagree:      crossCheck.WithLabelValues("disagree"),
		},
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{s.m.readErrors, s.m.fillErrors, s.m.forgetErrors, s.m.unmatched, s.m.switched, s.m.incomplete, s.m.reused, s.m.rebornFull, s.m.staleViews, s.m.swept, s.m.earlyEndsFull, crossCheck} {
			if err := reg.Register(col); err != nil {
				return nil, fmt.Errorf("register counter metrics: %w", err)
			}
		}
	}
	return s, nil
}

// readCounters brings the counters of every connection that had packets
// since the last round into the store, and closes the connections whose end
// the previous round saw (final: this round's too, the agent is stopping).
func (l *Loop) readCounters(now time.Time, final bool) {
	cs := l.counters
	clear(cs.seen)
	cs.closing, cs.finishing = cs.finishing, cs.closing[:0]
	if err := cs.src.ReadChanged(func(view flow.Tuple, fin bool) { l.counterView(view, fin, now) }); err != nil {
		cs.m.readErrors.Inc()
		klog.ErrorS(err, "Read changed eBPF counters")
	}
	if final {
		cs.closing = append(cs.closing, cs.finishing...)
		cs.finishing = cs.finishing[:0]
	}
	for _, t := range cs.closing {
		c, ok := l.store.LookupConn(t)
		if !ok || c.Tuple != t {
			continue
		}
		if c.Counters != flow.CountersBPF {
			l.closeCounted(&c, now)
			continue
		}
		stored := c
		_, _, lossy := l.fillBPF(&c)
		if lossy || cs.check.Enabled {
			// One GET: conntrack's totals, to fill what the program lost
			// or to compare. The entry lingers in TIME_WAIT, so it is
			// there to read.
			kernel := c
			if err := l.cfg.Source.Get(&kernel); err == nil {
				switch {
				case lossy && !backwards(&kernel, &c):
					c.Fwd, c.Rev = kernel.Fwd, kernel.Rev
				case !lossy:
					cs.crossCheck(&kernel, &c)
				}
			} else if !errors.Is(err, conntrack.ErrNotFound) {
				l.m.getErrors.Inc()
			}
		}
		if backwards(&c, &stored) {
			c.Fwd, c.Rev = stored.Fwd, stored.Rev
		}
		if c.Tuple.Proto == flow.ProtoTCP {
			// The FIN handshake or RST ended it, as conntrack's TIME_WAIT
			// or CLOSE would say (UPDATE events are off in this mode).
			c.TCPState = flow.TCPStateTimeWait
		}
		// Its views go when its end-of-flow record is taken (viewsDone).
		l.report(&c, now)
	}
	if !final {
		l.refreshCounted(now)
	}
}

// viewsDone deletes the views of a connection whose last record goes to
// the sink: its final counters are read. Not when its TIME_WAIT ends (two
// minutes later: at 5k connections/s that would be 600k connections'
// views kept for nothing, and a new connection on the tuple would be born
// onto them). A late packet makes a view no connection owns, which the
// sweep removes.
func (l *Loop) viewsDone(c *flow.Conn, reason flow.EndReason) {
	if l.counters == nil || c.Counters != flow.CountersBPF ||
		(reason != flow.EndOfFlow && reason != flow.EndLackResources) {
		return
	}
	if cur, ok := l.store.Peek(c.Tuple); ok && cur.ID != c.ID {
		// A new kernel entry took the tuple (and the store slot) before
		// this record went out: the views are already the new one's.
		return
	}
	if _, ok := l.counters.src.(batchForgetter); ok {
		// Deleted with the others of this tick, before the loop applies
		// another event (a NEW on the tuple must not find them).
		l.counters.forgotten = append(l.counters.forgotten, *c)
		return
	}
	l.forgetViews(c)
}

// flushForgotten deletes the views viewsDone queued.
func (l *Loop) flushForgotten() {
	cs := l.counters
	if cs == nil || len(cs.forgotten) == 0 {
		return
	}
	if err := cs.src.(batchForgetter).ForgetAll(cs.forgotten); err != nil {
		cs.m.forgetErrors.Add(float64(len(cs.forgotten)))
		klog.V(2).InfoS("Could not delete eBPF views", "connections", len(cs.forgotten), "err", err)
	}
	clear(cs.forgotten) // no stale Conns kept past their use
	cs.forgotten = cs.forgotten[:0]
}

// closeCounted reads a conntrack-counted connection whose FIN or RST the
// program saw and closes it if conntrack agrees it ended.
func (l *Loop) closeCounted(c *flow.Conn, now time.Time) {
	start := c.StartNanos
	if err := l.cfg.Source.Get(c); err != nil {
		delete(l.counters.closeGets, c.Tuple)
		if !errors.Is(err, conntrack.ErrNotFound) {
			l.m.getErrors.Inc()
		}
		return // gone: its DESTROY closes it
	}
	if start != 0 {
		c.StartNanos = start
	}
	c.Counters = flow.CountersConntrack // read now
	cs := l.counters
	if conntrack.Finished(c) {
		delete(cs.closeGets, c.Tuple)
		l.report(c, now)
		return
	}
	if n := cs.closeGets[c.Tuple]; n < closeGetRetries {
		cs.closeGets[c.Tuple] = n + 1
		cs.finishing = append(cs.finishing, c.Tuple)
		return
	}
	// Still open: its DESTROY, or the next FIN or RST the program
	// sees, closes it.
	delete(cs.closeGets, c.Tuple)
}

// forgetViews deletes c's views from the source.
func (l *Loop) forgetViews(c *flow.Conn) {
	if err := l.counters.src.Forget(c); err != nil {
		l.counters.m.forgetErrors.Inc()
		klog.V(2).InfoS("Could not delete eBPF views", "conn", c.Tuple, "err", err)
	}
}

// counterView applies one changed view.
func (l *Loop) counterView(view flow.Tuple, fin bool, now time.Time) {
	cs := l.counters
	c, ok := l.store.LookupConn(view)
	if !ok {
		cs.m.unmatched.Inc()
		if fin && view.Proto == flow.ProtoTCP && !l.eventsAfterRound {
			// (With events taken after the round, the NEW reads the
			// views whole from the round's values: it sees the end.)
			cs.rememberEarlyEnd(view, now)
		}
		return
	}
	if _, dup := cs.seen[c.Tuple]; dup {
		return
	}
	cs.seen[c.Tuple] = struct{}{}
	if c.Counters != flow.CountersBPF {
		// Counted by conntrack, but its packets cross a pod interface
		// (it predates the program, or the program lost some of it): a
		// FIN or RST the program saw is worth one GET next round, rather
		// than waiting two minutes for the DESTROY (no UPDATE events in
		// this mode).
		if fin && c.Tuple.Proto == flow.ProtoTCP {
			cs.finishing = append(cs.finishing, c.Tuple)
		}
		return
	}
	stored := c
	if _, finished, _ := l.fillBPF(&c); finished {
		cs.finishing = append(cs.finishing, c.Tuple)
	}
	if backwards(&c, &stored) {
		// Views deleted and made again (a sweep racing a quiet
		// connection): what was counted stays counted.
		c.Fwd, c.Rev = stored.Fwd, stored.Rev
	}
	l.store.Upsert(&c, now)
}

// counterBorn decides at a NEW event which source counts the connection:
// the program, when it already counted the first packet (it runs where the
// packet leaves or enters a pod, before conntrack creates the entry),
// else conntrack (traffic that crosses no pod interface).
//
// NEW events carry no start time: the connection takes the time of the
// first packet the program counted, and keeps it (reports of the same
// kernel entry are given it, see counterDumped), so its records start when
// it did.
func (l *Loop) counterBorn(c *flow.Conn, now time.Time) {
	if stored, same := l.sameEntry(c); same {
		// A dump got there first (the NEW was queued while the loop
		// dumped): the connection keeps the source it was given then.
		c.Counters = stored.Counters
		return
	}
	if _, ok := l.counters.reborn[c.Tuple]; ok {
		delete(l.counters.reborn, c.Tuple)
		l.counters.m.switched.Inc()
		c.Counters = flow.CountersConntrackLater
		return
	}
	c.Counters = flow.CountersBPF
	var res CounterFill
	var err error
	full := true
	if b, ok := l.counters.src.(counterBirth); ok && !l.eventsAfterRound {
		// Its counters come with the next round that reads its views.
		res, err = b.Born(c)
		full = false
	} else {
		// Applied after the round that read its views (eventsAfterRound),
		// the whole Fill costs nothing, and the connection has its
		// counters from its birth: that round will not report the views
		// again, and an idle connection would wait for its next packet.
		res, err = l.counters.src.Fill(c)
	}
	l.decideBirth(c, res, full, err, now)
}

// decideBirth applies what the source found of a new connection: counted
// by the program from its first packet, or by conntrack when the program
// may have missed some of it:
//   - it lost packets of it (full table);
//   - an interface it was counted on was attached after the connection
//     began, or just before the first packet counted (the packets before
//     may have been the connection's: the NEW is handled later than it
//     was made, a resync dump can hold the loop for seconds); the loop
//     subscribed to NEW events after the interfaces present at its start
//     were attached, so those do not count;
//   - its views predate it: a previous connection on the same tuple left
//     them (its end not seen, or counted by conntrack), recognisable by a
//     first packet well before the NEW (staleAfter), or a TCP view that
//     never saw a SYN (made in the middle of a connection).
func (l *Loop) decideBirth(c *flow.Conn, res CounterFill, full bool, err error, now time.Time) {
	cs := l.counters
	margin := bornMargin + l.cfg.EventDelay
	bornBy := max(now.Add(-margin).UnixNano(), l.runSince)
	attachedLate := res.AttachedAt > bornBy ||
		(res.FirstNanos != 0 && res.AttachedAt > l.runSince && res.FirstNanos < res.AttachedAt+margin.Nanoseconds())
	// A whole short connection, FIN included, is often counted before its
	// NEW is handled: FIN/RST flags say nothing, the time of the first
	// packet does.
	stale := (c.Tuple.Proto == flow.ProtoTCP && res.FwdFlags != 0 && res.FwdFlags&tcpSYN == 0) ||
		(res.FirstNanos != 0 && res.FirstNanos < now.Add(-staleAfter).UnixNano())
	switch {
	case err != nil:
		cs.m.fillErrors.Inc()
		c.Counters = flow.CountersConntrackLater
	case !res.Seen:
		c.Counters = flow.CountersConntrackLater
	case stale:
		// The views stay: they mix the two connections, and a FIN or RST
		// the program sees in them still gets this one read and closed
		// (closeCounted); the sweep removes them once it ended.
		cs.m.switched.Inc()
		cs.m.staleViews.Inc()
		c.Counters = flow.CountersConntrackLater
	case res.Lossy || attachedLate:
		cs.m.switched.Inc()
		c.Counters = flow.CountersConntrackLater
	default:
		if c.StartNanos == 0 {
			c.StartNanos = res.FirstNanos
		}
		switch {
		case full && res.Finished:
			// Over before its NEW was applied (a whole short connection
			// between two rounds): no packet will mark its views again.
			cs.finishing = append(cs.finishing, c.Tuple)
		case !full && cs.endedEarly(c):
			// Its FIN or RST was read before this NEW: with its views
			// read whole (Born reads only the forward ones), close it
			// next round if it ended.
			if res, err = cs.src.Fill(c); err == nil && res.Finished {
				cs.finishing = append(cs.finishing, c.Tuple)
			} else if err != nil {
				cs.m.fillErrors.Inc()
			}
		}
		return
	}
	// Counted by conntrack: whatever the source put in c goes.
	c.Fwd, c.Rev = flow.Counters{}, flow.Counters{}
	cs.refresh = append(cs.refresh, refreshAt{t: c.Tuple, id: c.ID, at: now.Add(l.refreshEvery()).UnixNano()})
	if c.Tuple.Proto == flow.ProtoTCP && res.FwdFlags&(tcpFIN|tcpRST) != 0 {
		// Under load a NEW is handled seconds after the connection
		// began (stale): a short one has ended by then, so no packet
		// will mark its views again and only the DESTROY, after
		// TIME_WAIT, would close it. The views say it ended: one GET
		// next round.
		cs.finishing = append(cs.finishing, c.Tuple)
	}
}

// rememberEarlyEnd notes a FIN or RST in a view no connection owns yet.
func (cs *counterStage) rememberEarlyEnd(view flow.Tuple, now time.Time) {
	if len(cs.earlyEnds) >= maxEarlyEnds {
		cutoff := now.Add(-earlyEndTTL).UnixNano()
		for k, at := range cs.earlyEnds {
			if at < cutoff {
				delete(cs.earlyEnds, k)
			}
		}
	}
	if len(cs.earlyEnds) >= maxEarlyEnds {
		cs.m.earlyEndsFull.Inc()
		return
	}
	cs.earlyEnds[view] = now.UnixNano()
}

// endedEarly reports (and forgets) whether a round saw an end in a view of
// c before c was born.
func (cs *counterStage) endedEarly(c *flow.Conn) bool {
	if len(cs.earlyEnds) == 0 || c.Tuple.Proto != flow.ProtoTCP {
		return false
	}
	forms, n := c.Forms()
	found := false
	for _, f := range forms[:n] {
		for _, t := range [2]flow.Tuple{f, f.Reverse()} {
			if _, ok := cs.earlyEnds[t]; ok {
				delete(cs.earlyEnds, t)
				found = true
			}
		}
	}
	return found
}

// refreshEvery is how often a conntrack-counted connection is read: the
// export cadence, so its records carry what conntrack counted.
func (l *Loop) refreshEvery() time.Duration {
	if d := l.cfg.Queue.ActiveTimeout; d > 0 {
		return d
	}
	return l.cfg.PollInterval
}

// refreshCounted reads the conntrack-counted connections whose turn came
// (one GET each) into the store, and closes those conntrack says ended.
func (l *Loop) refreshCounted(now time.Time) {
	cs := l.counters
	nowNs := now.UnixNano()
	for cs.refreshHead < len(cs.refresh) && cs.refresh[cs.refreshHead].at <= nowNs {
		r := cs.refresh[cs.refreshHead]
		cs.refreshHead++
		c, ok := l.store.LookupConn(r.t)
		if !ok || c.Tuple != r.t || c.ID != r.id || c.Counters == flow.CountersBPF {
			continue // ended, replaced, or not conntrack's
		}
		start := c.StartNanos
		if err := l.cfg.Source.Get(&c); err != nil {
			if !errors.Is(err, conntrack.ErrNotFound) {
				l.m.getErrors.Inc()
				cs.refresh = append(cs.refresh, refreshAt{t: r.t, id: r.id, at: now.Add(l.refreshEvery()).UnixNano()})
			}
			continue // gone: its DESTROY closes it
		}
		if start != 0 {
			c.StartNanos = start
		}
		c.Counters = flow.CountersConntrack
		l.report(&c, now)
		if !conntrack.Finished(&c) {
			cs.refresh = append(cs.refresh, refreshAt{t: r.t, id: r.id, at: now.Add(l.refreshEvery()).UnixNano()})
		}
	}
	// Compact once the consumed head is the larger part.
	if cs.refreshHead > len(cs.refresh)/2 {
		n := copy(cs.refresh, cs.refresh[cs.refreshHead:])
		cs.refresh = cs.refresh[:n]
		cs.refreshHead = 0
	}
}

// fillBPF reads c's eBPF counters into c, for a connection counted by the
// program since its birth (decideBirth). It never changes c's source: a
// conntrack total can be lower than what the program counted (packets
// conntrack finds invalid), and a total that steps back makes the store
// take it for a new connection. lossy says the program missed packets of
// it since (a full table): its final totals come from conntrack where not
// lower. It reports whether the source has counters of c, and whether it
// saw c end.
func (l *Loop) fillBPF(c *flow.Conn) (seen, finished, lossy bool) {
	cs := l.counters
	res, err := cs.src.Fill(c)
	if err != nil {
		cs.m.fillErrors.Inc()
		klog.V(2).InfoS("Could not read eBPF counters", "conn", c.Tuple, "err", err)
		return false, false, false
	}
	if !res.Seen {
		return false, false, false
	}
	if res.Lossy || (c.StartNanos != 0 && res.AttachedAt > c.StartNanos) {
		cs.m.incomplete.Inc()
		lossy = true
	}
	if c.StartNanos == 0 {
		c.StartNanos = res.FirstNanos
	}
	if c.Tuple.Proto == flow.ProtoTCP && c.TCPState < flow.TCPStateEstablished && c.Rev.Packets > 0 && c.Fwd.Packets > 1 {
		// Conntrack's NEW said SYN_SENT and no UPDATE follows in this
		// mode; a reply and the client's ACK mean the handshake is done.
		c.TCPState = flow.TCPStateEstablished
	}
	return true, res.Finished, lossy
}

// counterDestroyed gives a DESTROY the counters and start time the store
// knows the connection by, cross-checks the two sources' totals when
// asked, and forgets the views of a live eBPF-counted connection. Totals
// never step back.
//
//   - Counted by conntrack: the kernel's final totals. Its views (if any)
//     are left to the sweep: they may already hold the first packet of the
//     connection that replaces it on the tuple.
//   - Already exported (its close was seen; a tombstone): nothing to read,
//     its views went with its last record.
//   - Live: the program's final totals, unless its views counted a packet
//     just before the entry died: that packet made the entry that replaces
//     it on the same tuple (a UDP flow with fixed ports), so conntrack's
//     totals are this one's, the views are dropped and the next
//     connection on the tuple is counted by conntrack.
func (l *Loop) counterDestroyed(c *flow.Conn, now time.Time) {
	cs := l.counters
	kernel := *c
	stored, same := l.sameEntry(c)
	if !same || stored.Counters != flow.CountersBPF {
		c.Counters = flow.CountersConntrack
		return
	}
	c.Counters = flow.CountersBPF
	live, ok := l.store.LookupConn(c.Tuple)
	if !ok || live.Tuple != c.Tuple || live.ID != c.ID {
		c.Fwd, c.Rev = stored.Fwd, stored.Rev
		return
	}
	res, err := cs.src.Fill(c)
	if err != nil {
		cs.m.fillErrors.Inc()
	}
	good := err == nil && res.Seen && !res.Lossy
	stop := kernel.StopNanos
	if stop == 0 {
		// No conntrack timestamps: the entry died at most this long ago.
		stop = now.UnixNano()
	}
	reused := good && res.LastNanos > stop-reuseWindow.Nanoseconds()
	switch {
	case reused:
		cs.m.reused.Inc()
		l.remember(c.Tuple, now)
		c.Fwd, c.Rev = kernel.Fwd, kernel.Rev
	case good:
		if cs.check.Enabled {
			cs.crossCheck(&kernel, c)
		}
	default:
		c.Fwd, c.Rev = kernel.Fwd, kernel.Rev
	}
	if backwards(c, &stored) {
		c.Fwd, c.Rev = stored.Fwd, stored.Rev
	}
	l.forgetViews(c)
}

// remember marks t's next connection for conntrack (counterStage.reborn).
func (l *Loop) remember(t flow.Tuple, now time.Time) {
	cs := l.counters
	if len(cs.reborn) >= maxReborn {
		for k, at := range cs.reborn {
			if now.UnixNano()-at > rebornTTL.Nanoseconds() {
				delete(cs.reborn, k)
			}
		}
	}
	if len(cs.reborn) >= maxReborn {
		cs.m.rebornFull.Inc()
		return
	}
	cs.reborn[t] = now.UnixNano()
}

// sameEntry returns what the store holds (live or exported) of the kernel
// entry c reports, and gives c the start time the store knows it by: for
// a connection born in this mode that is the program's first packet, a
// few microseconds off conntrack's own stamp, and a different start would
// make the store take the report for a new entry on the same tuple.
func (l *Loop) sameEntry(c *flow.Conn) (flow.Conn, bool) {
	stored, ok := l.store.Peek(c.Tuple)
	if !ok || stored.ID != c.ID {
		return flow.Conn{}, false
	}
	if stored.StartNanos != 0 {
		c.StartNanos = stored.StartNanos
	}
	return stored, true
}

func backwards(c, than *flow.Conn) bool {
	return c.Fwd.Packets < than.Fwd.Packets || c.Fwd.Bytes < than.Fwd.Bytes ||
		c.Rev.Packets < than.Rev.Packets || c.Rev.Bytes < than.Rev.Bytes
}

// crossCheck compares conntrack's final totals with the source's.
func (cs *counterStage) crossCheck(kernel, bpf *flow.Conn) {
	off := func(a, b, tol uint64) bool { return max(a, b)-min(a, b) > tol }
	t := cs.check
	if off(kernel.Fwd.Packets, bpf.Fwd.Packets, t.TolerancePackets) || off(kernel.Rev.Packets, bpf.Rev.Packets, t.TolerancePackets) ||
		off(kernel.Fwd.Bytes, bpf.Fwd.Bytes, t.ToleranceBytes) || off(kernel.Rev.Bytes, bpf.Rev.Bytes, t.ToleranceBytes) {
		cs.m.disagree.Inc()
		klog.InfoS("eBPF and conntrack counters disagree", "conn", kernel.Tuple,
			"conntrackFwd", kernel.Fwd, "ebpfFwd", bpf.Fwd, "conntrackRev", kernel.Rev, "ebpfRev", bpf.Rev)
		return
	}
	cs.m.agree.Inc()
}

// counterDumped gives a report of a known kernel entry (a resync dump
// row, an UPDATE event) the start time the store knows it by and, for an
// eBPF-counted connection, the source's counters: conntrack's would mix
// two sources, and a counter that steps back would look like a new entry.
// That holds for an exported one too, whose entry lingers in TIME_WAIT.
func (l *Loop) counterDumped(c *flow.Conn) {
	stored, same := l.sameEntry(c)
	if !same || stored.Counters != flow.CountersBPF {
		return
	}
	c.Counters = flow.CountersBPF
	c.Fwd, c.Rev = stored.Fwd, stored.Rev
	if conntrack.Finished(c) {
		stored := *c
		l.fillBPF(c)
		if backwards(c, &stored) {
			c.Fwd, c.Rev = stored.Fwd, stored.Rev
		}
	}
}

// sweepViews drops the views no connection owns; it runs with the resync.
func (l *Loop) sweepViews() {
	cs := l.counters
	n, err := cs.src.Sweep(viewSweepAge, func(view flow.Tuple) bool {
		_, ok := l.store.LookupConn(view)
		return ok
	})
	if err != nil {
		klog.ErrorS(err, "Sweep eBPF views")
	}
	cs.m.swept.Add(float64(n))
	klog.V(3).InfoS("Swept eBPF views", "deleted", n)
}
