package packetdrops

import (
	"github.com/flowlens/flowlens/pkg/flow"
)

// reasonCount is how many drops of one tuple had one reason.
type reasonCount struct {
	reason uint32
	n      uint32
}

// inlineReasons is how many distinct reasons a span holds without
// allocating; a tuple rarely has more than one in a record period.
const inlineReasons = 3

// span is a run of drops of one tuple close together in time, with their
// reasons: the unit a record takes or leaves by the drops' time.
type span struct {
	first, last int64 // Unix ns of the span's oldest and newest drop
	n           uint32
	nr          uint8
	reasons     [inlineReasons]reasonCount
	more        []reasonCount // beyond inlineReasons
}

func (p *span) add(reason, n uint32) {
	p.n = satAdd(p.n, n)
	for i := range int(p.nr) {
		if p.reasons[i].reason == reason {
			p.reasons[i].n = satAdd(p.reasons[i].n, n)
			return
		}
	}
	if int(p.nr) < inlineReasons {
		p.reasons[p.nr] = reasonCount{reason: reason, n: n}
		p.nr++
		return
	}
	for i := range p.more {
		if p.more[i].reason == reason {
			p.more[i].n = satAdd(p.more[i].n, n)
			return
		}
	}
	p.more = append(p.more, reasonCount{reason: reason, n: n})
}

// merge adds o's drops to p.
func (p *span) merge(o *span) {
	p.first, p.last = min(p.first, o.first), max(p.last, o.last)
	o.each(p.add)
}

// each calls fn for every reason of the entry.
func (p *span) each(fn func(reason, n uint32)) {
	for i := range int(p.nr) {
		fn(p.reasons[i].reason, p.reasons[i].n)
	}
	for _, rc := range p.more {
		fn(rc.reason, rc.n)
	}
}

func satAdd(a, b uint32) uint32 {
	if s := a + b; s >= a {
		return s
	}
	return ^uint32(0)
}

// Spans of a tuple: a drop more than spanGap after the tuple's newest
// drop starts a new span, and a tuple keeps at most maxSpans, merging the
// two closest in time beyond it. A record takes the spans that end at or
// after its connection's start, so the late drops of a connection that
// ended stay out of the next connection on the same tuple as long as a
// gap separates them (the closest spans merge first: a connection
// boundary is rarely the smallest gap).
const (
	spanGap  = startSlack
	maxSpans = 4
)

// pending is what was dropped of one packet tuple and not yet taken by a
// record, in spans, oldest first. spans[0] is inline: most tuples have
// one.
type pending struct {
	n     uint32 // drops in all spans
	span0 span
	rest  []span
}

// each calls fn for every reason of every span.
func (p *pending) each(fn func(reason, n uint32)) {
	for i := range p.count() {
		p.at(i).each(fn)
	}
}

// first is the Unix ns of the entry's oldest drop.
func (p *pending) first() int64 {
	f := p.span0.first
	for i := range p.rest {
		f = min(f, p.rest[i].first)
	}
	return f
}

func (p *pending) count() int { return 1 + len(p.rest) }

func (p *pending) at(i int) *span {
	if i == 0 {
		return &p.span0
	}
	return &p.rest[i-1]
}

// add files one drop at Unix ns at.
func (p *pending) add(reason uint32, at int64) {
	p.n = satAdd(p.n, 1)
	if p.n == 1 {
		p.span0 = span{first: at, last: at}
		p.span0.add(reason, 1)
		return
	}
	cur := p.at(p.count() - 1)
	// Events of different CPUs reach the ring slightly out of order: a
	// drop older than the newest span's end joins that span.
	if at <= cur.last+int64(spanGap) {
		cur.first, cur.last = min(cur.first, at), max(cur.last, at)
		cur.add(reason, 1)
		return
	}
	s := span{first: at, last: at}
	s.add(reason, 1)
	p.rest = append(p.rest, s)
	if p.count() > maxSpans {
		p.mergeClosest()
	}
}

// mergeClosest merges the two adjacent spans with the smallest gap.
func (p *pending) mergeClosest() {
	best, bestGap := 0, int64(0)
	for i := 0; i+1 < p.count(); i++ {
		if g := p.at(i+1).first - p.at(i).last; i == 0 || g < bestGap {
			best, bestGap = i, g
		}
	}
	p.at(best).merge(p.at(best + 1))
	p.rest = append(p.rest[:best], p.rest[best+1:]...)
}

// table holds the drops not yet taken, keyed by the packet's tuple as the
// drop point saw it. It is bounded: a drop of a new tuple that does not fit
// is refused (the caller counts it unattributed). Not safe for concurrent
// use: Drops guards it.
type table struct {
	max     int
	entries map[flow.Tuple]pending
}

func newTable(max int) *table {
	return &table{max: max, entries: make(map[flow.Tuple]pending)}
}

// add records one drop at Unix ns at; false when the table is full and k
// is new.
func (t *table) add(k flow.Tuple, reason uint32, at int64) bool {
	p, ok := t.entries[k]
	if !ok && len(t.entries) >= t.max {
		return false
	}
	p.add(reason, at)
	t.entries[k] = p
	return true
}

// take removes k's drops of spans that end at or after since (Unix ns;
// math.MinInt64 takes all), calls fn with each of their reasons and
// returns how many they were. Older spans stay, for the TTL to count them
// unattributed. A span that straddles since is taken whole: it is a run
// of drops without a gap across the connection's start, the connection's
// own first packets most likely.
func (t *table) take(k flow.Tuple, since int64, fn func(reason, n uint32)) uint32 {
	p, ok := t.entries[k]
	if !ok {
		return 0
	}
	keep := 0 // spans [0, keep) stay
	for keep < p.count() && p.at(keep).last < since {
		keep++
	}
	var n uint32
	for i := keep; i < p.count(); i++ {
		s := p.at(i)
		n = satAdd(n, s.n)
		s.each(fn)
	}
	switch {
	case keep == 0:
		delete(t.entries, k)
	case keep < p.count():
		p.rest = p.rest[:keep-1]
		p.n -= n
		t.entries[k] = p
	}
	return n
}

// expire removes the entries whose oldest drop is before cutoff and calls
// fn with each of their reasons: no record took them in time. The TTL
// runs from a tuple's oldest pending drop, whichever span it is in.
func (t *table) expire(cutoff int64, fn func(reason, n uint32)) int {
	removed := 0
	for k, p := range t.entries {
		if p.first() < cutoff {
			p.each(fn)
			delete(t.entries, k)
			removed++
		}
	}
	return removed
}

func (t *table) len() int { return len(t.entries) }

// tally merges the reasons of the entries a record took, to name the most
// frequent one. It lives on the caller's stack: a record's forms give at
// most six entries, and their distinct reasons fit the inline array in
// practice; beyond it they go to more.
type tally struct {
	nr      int
	reasons [8]reasonCount
	more    []reasonCount
}

func (t *tally) add(reason, n uint32) {
	for i := range t.nr {
		if t.reasons[i].reason == reason {
			t.reasons[i].n = satAdd(t.reasons[i].n, n)
			return
		}
	}
	if t.nr < len(t.reasons) {
		t.reasons[t.nr] = reasonCount{reason: reason, n: n}
		t.nr++
		return
	}
	for i := range t.more {
		if t.more[i].reason == reason {
			t.more[i].n = satAdd(t.more[i].n, n)
			return
		}
	}
	t.more = append(t.more, reasonCount{reason: reason, n: n})
}

// top is the most frequent reason; a tie goes to the smaller enum value,
// so the choice does not depend on arrival order.
func (t *tally) top() (uint32, bool) {
	var best reasonCount
	found := false
	consider := func(rc reasonCount) {
		if !found || rc.n > best.n || (rc.n == best.n && rc.reason < best.reason) {
			best, found = rc, true
		}
	}
	for i := range t.nr {
		consider(t.reasons[i])
	}
	for _, rc := range t.more {
		consider(rc)
	}
	return best.reason, found
}

func (t *tally) each(fn func(reason, n uint32)) {
	for i := range t.nr {
		fn(t.reasons[i].reason, t.reasons[i].n)
	}
	for _, rc := range t.more {
		fn(rc.reason, rc.n)
	}
}
