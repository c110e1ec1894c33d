package packetdrops

import (
	"github.com/flowlens/flowlens/pkg/flow"
)

// reasonCount is how many drops of one tuple had one reason.
type reasonCount struct {
	reason uint32
	n      uint32
}

// inlineReasons is how many distinct reasons an entry holds without
// allocating; a tuple rarely has more than one in a record period.
const inlineReasons = 3

// pending is what was dropped of one packet tuple and not yet taken by a
// record: the drops since the first one no record took.
type pending struct {
	first   int64 // Unix ns of the oldest drop in the entry: the TTL runs from it
	n       uint32
	nr      uint8
	reasons [inlineReasons]reasonCount
	more    []reasonCount // beyond inlineReasons
}

func (p *pending) add(reason uint32) {
	p.n = satAdd(p.n, 1)
	for i := range int(p.nr) {
		if p.reasons[i].reason == reason {
			p.reasons[i].n = satAdd(p.reasons[i].n, 1)
			return
		}
	}
	if int(p.nr) < inlineReasons {
		p.reasons[p.nr] = reasonCount{reason: reason, n: 1}
		p.nr++
		return
	}
	for i := range p.more {
		if p.more[i].reason == reason {
			p.more[i].n = satAdd(p.more[i].n, 1)
			return
		}
	}
	p.more = append(p.more, reasonCount{reason: reason, n: 1})
}

// each calls fn for every reason of the entry.
func (p *pending) each(fn func(reason, n uint32)) {
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

// add records one drop; false when the table is full and t is new.
func (t *table) add(k flow.Tuple, reason uint32, now int64) bool {
	p, ok := t.entries[k]
	if !ok {
		if len(t.entries) >= t.max {
			return false
		}
		p.first = now
	}
	p.add(reason)
	t.entries[k] = p
	return true
}

// take removes and returns k's entry.
func (t *table) take(k flow.Tuple) (pending, bool) {
	p, ok := t.entries[k]
	if ok {
		delete(t.entries, k)
	}
	return p, ok
}

// expire removes the entries whose oldest drop is before cutoff and calls
// fn with each of their reasons: no record took them in time.
func (t *table) expire(cutoff int64, fn func(reason, n uint32)) int {
	removed := 0
	for k, p := range t.entries {
		if p.first < cutoff {
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
