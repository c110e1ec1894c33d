// Package expirequeue decides when each tracked connection is exported and
// with which flowEndReason. It keeps one deadline per connection in a
// container/heap and asks a Source (the connection store) for the
// connection's timing only when a deadline comes up.
//
// # Semantics
//
// Every connection has a flow record period that starts when the connection
// is first seen (Track) and after each export. On every Expire(now) all due
// connections are handled; there is no per-call cap, so a backlog drains in
// one call (100k records take tens of milliseconds). Deadlines are only
// looked at in Expire, so records are late by at most the tick interval:
//
//   - Closed (DESTROY event, or missing from a complete dump): exported on the
//     first Expire after the close with reason end-of-flow (3); the Source
//     then forgets it.
//   - Active timeout: every ActiveTimeout after the start of its period a
//     connection is checked; if its counters moved since the previous export
//     it is exported with reason active-timeout (2) and the deltas since that
//     export. A connection whose counters did not move is not exported (the
//     record would carry nothing new); it is checked again one ActiveTimeout
//     later.
//   - Idle timeout: when the counters have not moved for IdleTimeout the
//     connection is exported once with reason idle-timeout (1), carrying any
//     deltas not exported yet, and the Source marks it idle. When a late
//     tick finds both timeouts passed, idle wins. An idle connection has no deadline at all: it costs no
//     queue work and is not exported again until either its counters move
//     (the Source calls Track again: a new flow record period whose first
//     record carries the deltas since the idle record) or it closes.
//
// # Laziness
//
// Counter updates never touch the heap. A deadline is computed when the
// connection is scheduled and re-checked when it is popped: if activity moved
// the idle deadline later, the item is simply pushed back (in place, one
// sift-down). A closed connection gets a second, already-due item rather
// than a heap.Fix of its existing one; the leftover item is dropped when it
// pops because the Source no longer knows the handle (handles carry a
// generation, so a reused slot does not match).
package expirequeue

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// Handle names one connection in a Source. It is opaque to the queue; the
// Source must be able to tell a handle of an entry it already forgot.
type Handle uint64

// Timing is what the queue needs to know about a connection to decide.
// Times are Unix nanoseconds.
type Timing struct {
	// LastActive is when the connection's counters last moved (or when it
	// was first seen).
	LastActive int64
	// PeriodStart is the previous export, or the start of the current flow
	// record period when there was none.
	PeriodStart int64
	// Moved is set when the counters differ from those of the previous
	// export: an export now would carry a non-zero delta.
	Moved bool
	// Closed is set once the connection ended; Idle once it was exported
	// with reason idle-timeout and has not moved since.
	Closed, Idle bool
	// ClosedAt is when the connection closed (Unix ns), set with Closed.
	ClosedAt int64
}

// Source is the connection store as seen by the queue.
type Source interface {
	// Timing reports the state of h; ok is false when h names no live
	// connection any more.
	Timing(h Handle) (t Timing, ok bool)
	// Export builds the record of h at nowNanos with the deltas since its
	// previous export, hands it to emit, and starts a new period. With
	// reason idle-timeout the Source marks h idle; with end-of-flow it
	// forgets h.
	Export(h Handle, reason flow.EndReason, nowNanos int64, emit func(*flow.Record))
}

// Config configures a Queue. Zero durations take the defaults.
type Config struct {
	// ActiveTimeout is the export cadence of a connection that keeps
	// moving. Default 5s.
	ActiveTimeout time.Duration
	// IdleTimeout is how long a connection's counters must stay still before
	// it is exported as idle. Default 15s.
	IdleTimeout time.Duration
	// CloseDelay holds a closed connection's final record back this long
	// after the close, so that late enrichment (Suricata logs a
	// transaction when it sees the connection end, after conntrack does)
	// still reaches it. Zero exports on the first tick after the close.
	CloseDelay time.Duration
}

// Defaults used for zero Config fields.
const (
	DefaultActiveTimeout = 5 * time.Second
	DefaultIdleTimeout   = 15 * time.Second
)

// Queue is the expire priority queue. It is not safe for concurrent use: the
// agent's run loop owns it together with the store.
type Queue struct {
	active, idle, closeDelay int64 // nanoseconds
	items                    itemHeap
	maxSize                  int
	m                        metrics
}

type metrics struct {
	size, maxSize prometheus.Gauge
	discarded     prometheus.Counter
}

// New validates cfg and registers the queue's metrics on reg (nil: not
// registered).
func New(cfg Config, reg prometheus.Registerer) (*Queue, error) {
	if cfg.ActiveTimeout < 0 {
		return nil, fmt.Errorf("expirequeue: ActiveTimeout must not be negative, got %s", cfg.ActiveTimeout)
	}
	if cfg.IdleTimeout < 0 {
		return nil, fmt.Errorf("expirequeue: IdleTimeout must not be negative, got %s", cfg.IdleTimeout)
	}
	if cfg.CloseDelay < 0 {
		return nil, fmt.Errorf("expirequeue: CloseDelay must not be negative, got %s", cfg.CloseDelay)
	}
	if cfg.ActiveTimeout == 0 {
		cfg.ActiveTimeout = DefaultActiveTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	q := &Queue{
		active:     int64(cfg.ActiveTimeout),
		idle:       int64(cfg.IdleTimeout),
		closeDelay: int64(cfg.CloseDelay),
		m: metrics{
			size: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "flowlens_expirequeue_size",
				Help: "Deadlines queued: one per connection that is not idle, one more per closed connection awaiting export, and superseded ones not popped yet.",
			}),
			maxSize: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "flowlens_expirequeue_max_size",
				Help: "Largest number of deadlines queued since start.",
			}),
			discarded: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "flowlens_expirequeue_stale_deadlines_discarded_total",
				Help: "Deadlines dropped on pop because their connection was already exported and removed, evicted or replaced.",
			}),
		},
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{q.m.size, q.m.maxSize, q.m.discarded} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("expirequeue: register metrics: %w", err)
			}
		}
	}
	return q, nil
}

// Len is the number of queued deadlines.
func (q *Queue) Len() int { return len(q.items) }

// Track starts a flow record period for h at nowNanos: a new connection, or
// an idle one whose counters moved again. Call it once per period; the
// queue keeps h scheduled until it goes idle or closes.
func (q *Queue) Track(h Handle, nowNanos int64) {
	q.push(item{at: nowNanos + min(q.active, q.idle), h: h})
}

// Due schedules h for the next Expire: used when its connection closed.
func (q *Queue) Due(h Handle) {
	q.push(item{at: math.MinInt64, h: h})
}

func (q *Queue) push(it item) {
	// Append and sift up through heap.Fix instead of heap.Push: Push takes
	// an interface value, which would allocate for every deadline.
	q.items = append(q.items, it)
	heap.Fix(&q.items, len(q.items)-1)
	if n := len(q.items); n > q.maxSize {
		q.maxSize = n
		q.m.maxSize.Set(float64(n))
	}
	q.m.size.Set(float64(len(q.items)))
}

// ErrNilSource is returned by Expire when called without a Source or emit.
var ErrNilSource = errors.New("expirequeue: Expire needs a Source and an emit function")

// Expire handles every deadline at or before now and returns how many
// records were emitted. The *flow.Record given to emit is only valid during
// the call.
func (q *Queue) Expire(now time.Time, src Source, emit func(*flow.Record)) (int, error) {
	if src == nil || emit == nil {
		return 0, ErrNilSource
	}
	nowNs := now.UnixNano()
	emitted := 0
	for len(q.items) > 0 && q.items[0].at <= nowNs {
		h := q.items[0].h
		t, ok := src.Timing(h)
		switch {
		case !ok:
			q.m.discarded.Inc()
			q.popTop()
		case t.Closed && nowNs < t.ClosedAt+q.closeDelay:
			q.reschedTop(t.ClosedAt+q.closeDelay, nowNs)
		case t.Closed:
			src.Export(h, flow.EndOfFlow, nowNs, emit)
			emitted++
			q.popTop()
		case t.Idle:
			// Its deadline was consumed by the idle export; a pending item
			// can only be a leftover.
			q.m.discarded.Inc()
			q.popTop()
		case nowNs-t.LastActive >= q.idle:
			src.Export(h, flow.EndIdleTimeout, nowNs, emit)
			emitted++
			q.popTop()
		case nowNs-t.PeriodStart >= q.active:
			next := nowNs + q.active
			if t.Moved {
				src.Export(h, flow.EndActiveTimeout, nowNs, emit)
				emitted++
			}
			q.reschedTop(min(next, t.LastActive+q.idle), nowNs)
		default:
			// Popped early: activity moved the idle deadline past the one
			// this item was computed from.
			q.reschedTop(min(t.PeriodStart+q.active, t.LastActive+q.idle), nowNs)
		}
	}
	q.m.size.Set(float64(len(q.items)))
	return emitted, nil
}

// reschedTop moves the top item to at with a single sift-down rather than a
// pop and a push.
func (q *Queue) reschedTop(at, nowNs int64) {
	if at <= nowNs {
		// A deadline that is already due would make Expire spin on it.
		at = nowNs + 1
	}
	q.items[0].at = at
	heap.Fix(&q.items, 0)
}

func (q *Queue) popTop() { heap.Pop(&q.items) }

type item struct {
	at int64 // Unix nanoseconds
	h  Handle
}

// itemHeap is a min-heap on at. Items are plain values so the garbage
// collector never scans the heap's backing array.
type itemHeap []item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h itemHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }

// Push satisfies heap.Interface; Queue.push appends directly instead to
// avoid boxing the item.
func (h *itemHeap) Push(x any) {
	if it, ok := x.(item); ok {
		*h = append(*h, it)
	}
}

// Pop removes the last element; the caller already read the top, so nothing
// is returned and no interface value is allocated.
func (h *itemHeap) Pop() any {
	*h = (*h)[:len(*h)-1]
	return nil
}
