// Package expirequeue decides when each tracked connection is exported and
// with which flowEndReason. It keeps one deadline per connection in a
// container/heap and asks a Source (the connection store) for the
// connection's timing only when a deadline comes up.
//
// # Semantics
//
// Every connection has a flow record period that starts when the connection
// is first seen (Track) and after each export. On every Expire(now) the due
// connections are handled; there is no per-call cap while the sink takes
// the records, so a backlog drains in one call (100k records take tens of
// milliseconds). Deadlines are only looked at in Expire, so records are late
// by at most the tick interval:
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
// # Spread deadlines (Config.SpreadActiveDeadlines)
//
// Without it, every connection first seen in one dump (at start-up, the
// whole conntrack table) comes due in the same tick, one ActiveTimeout
// later, and so again every ActiveTimeout: the exports come in bursts as
// large as the table. With it, each connection's active-timeout checks fall
// on its own grid, phase + k×ActiveTimeout, the phase picked by hashing its
// handle, so the connections of one dump come due spread evenly over one
// ActiveTimeout. A period starting at P ends at the first grid point at
// least ActiveTimeout/2 after P: a moving connection is still exported every
// ActiveTimeout (a record late by a tick keeps the grid, it does not drift),
// its first record comes between ActiveTimeout/2 and 1.5×ActiveTimeout after
// it was first seen (ActiveTimeout on average, as without spreading), and a
// record delayed by more than ActiveTimeout/2 (backpressure) is followed by
// the next one no sooner than ActiveTimeout/2 later. Idle timeouts and closes
// are not spread: they are individual events already.
//
// # Backpressure
//
// The emit function given to Expire may refuse a record (return false): the
// sink's buffer is full and it asks to be offered the record again later.
// The Source then changes nothing (the deltas stay in the store, an
// end-of-flow stays pending) and the queue keeps the connection due: its
// deadline moves one nanosecond past now, behind the records still due in
// this round, and the next Expire offers it again. After
// MaxRefusalsPerRound consecutive refusals the round stops: a full sink is
// not offered the whole backlog every tick (that would cost O(backlog) per
// tick for nothing), and the deadlines left due are handled by the next
// Expire. Refusals are counted (flowlens_expirequeue_records_refused_total);
// nothing is dropped here: what the sink drops it counts itself.
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
//
// # Memory
//
// A deadline is 16 bytes, in one array. An array of 1 MiB or more (65536
// deadlines) is mapped outside the Go heap (package offheap), so that the
// garbage collector's heap goal does not double it, and it is shrunk by
// half whenever a round leaves it less than a quarter full: at start-up
// every connection of the table has a deadline, but once they have gone
// idle none has, and the array's memory goes back to the kernel instead
// of staying with the process.
package expirequeue

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"time"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/offheap"
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
	// previous export and hands it to emit. When emit takes it (returns
	// true) the Source starts a new period: with reason idle-timeout it
	// marks h idle, with end-of-flow it forgets h. When emit refuses it
	// (false) the Source changes nothing, so the same deltas (and any added
	// since) are offered again later. Export reports whether emit took it.
	Export(h Handle, reason flow.EndReason, nowNanos int64, emit func(*flow.Record) bool) bool
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
	// SpreadActiveDeadlines puts each connection's active-timeout checks on
	// a grid of its own (see the package documentation), so that the
	// connections of one dump do not all come due in the same tick.
	SpreadActiveDeadlines bool
}

// MaxRefusalsPerRound is how many records in a row the emit function may
// refuse before Expire stops its round (see Backpressure in the package
// documentation). More than one, so that a sink made of several buffers
// (one per collector replica) with one of them full still gets the records
// the others take.
const MaxRefusalsPerRound = 64

// Defaults used for zero Config fields.
const (
	DefaultActiveTimeout = 5 * time.Second
	DefaultIdleTimeout   = 15 * time.Second
)

// Queue is the expire priority queue. It is not safe for concurrent use: the
// agent's run loop owns it together with the store.
type Queue struct {
	active, idle, closeDelay int64 // nanoseconds
	spread                   bool
	items                    itemHeap
	mem                      offheap.Mapping // behind items, when mapped
	maxSize                  int
	m                        metrics
}

type metrics struct {
	size, maxSize, memory prometheus.Gauge
	discarded             prometheus.Counter
	refused               prometheus.Counter
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
		spread:     cfg.SpreadActiveDeadlines,
		m: metrics{
			size: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "flowlens_expirequeue_size",
				Help: "Deadlines queued: one per connection that is not idle, one more per closed connection awaiting export, and superseded ones not popped yet.",
			}),
			maxSize: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "flowlens_expirequeue_max_size",
				Help: "Largest number of deadlines queued since start.",
			}),
			memory: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "flowlens_expirequeue_memory_bytes",
				Help: "Memory of the deadline array, most of it outside the Go heap once large (so not in go_memstats_*). It shrinks when the deadlines queued fall below a quarter of it.",
			}),
			discarded: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "flowlens_expirequeue_stale_deadlines_discarded_total",
				Help: "Deadlines dropped on pop because their connection was already exported and removed, evicted or replaced.",
			}),
			refused: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "flowlens_expirequeue_records_refused_total",
				Help: "Records the sink refused because its buffer was full (backpressure); they stay in the store and are offered again on a later tick. Not a loss.",
			}),
		},
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{q.m.size, q.m.maxSize, q.m.memory, q.m.discarded, q.m.refused} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("expirequeue: register metrics: %w", err)
			}
		}
	}
	return q, nil
}

// Len is the number of queued deadlines.
func (q *Queue) Len() int { return len(q.items) }

// Release gives back the queue's memory outside the Go heap (see Memory);
// the queue must not be used afterwards. A queue never released keeps it
// until the process exits, which is what the agent's one queue does.
func (q *Queue) Release() error {
	err := q.mem.Free()
	q.items = nil
	q.m.memory.Set(0)
	q.m.size.Set(0)
	if err != nil {
		return fmt.Errorf("expirequeue: release: %w", err)
	}
	return nil
}

// Sizes of the deadline array: it starts at minItems; from
// mappedItemsBytes on it is mapped outside the Go heap.
const (
	minItems         = 256
	mappedItemsBytes = 1 << 20
)

// resize moves the deadlines into an array of n (at least Len()).
func (q *Queue) resize(n int) {
	var items []item
	var mem offheap.Mapping
	if n*int(unsafe.Sizeof(item{})) >= mappedItemsBytes {
		items, mem = offheap.Make[item](n)
	} else {
		items = make([]item, n)
	}
	items = items[:copy(items, q.items)]
	old := q.mem
	q.items, q.mem = items, mem
	// Unmapping cannot fail for a mapping Make returned; if it did, the
	// old array would only stay mapped.
	_ = old.Free()
	q.m.memory.Set(float64(cap(q.items) * int(unsafe.Sizeof(item{}))))
}

// shrink halves the array while it is less than a quarter full: the
// hysteresis keeps a queue that hovers around one size from resizing
// back and forth.
func (q *Queue) shrink() {
	c := cap(q.items)
	if c <= minItems || len(q.items) >= c/4 {
		return
	}
	n := c / 2
	for n > minItems && len(q.items) < n/4 {
		n /= 2
	}
	q.resize(max(n, minItems))
}

// Track starts a flow record period for h at nowNanos: a new connection, or
// an idle one whose counters moved again. Call it once per period; the
// queue keeps h scheduled until it goes idle or closes.
func (q *Queue) Track(h Handle, nowNanos int64) {
	q.push(item{at: min(q.activeDeadline(h, nowNanos), nowNanos+q.idle), h: h})
}

// activeDeadline is when the period of h that started at periodStart
// reaches its active timeout: ActiveTimeout later, or with spreading the
// first point of h's grid at least ActiveTimeout/2 after periodStart.
func (q *Queue) activeDeadline(h Handle, periodStart int64) int64 {
	if !q.spread {
		return periodStart + q.active
	}
	phase := int64(mix(uint64(h)) % uint64(q.active))
	from := periodStart + q.active/2
	// Distance from the previous grid point to from, in [0, active).
	off := ((from-phase)%q.active + q.active) % q.active
	if off == 0 {
		return from
	}
	return from + q.active - off
}

// mix is the splitmix64 finalizer: handles of one dump are consecutive slot
// numbers, and their phases must still be spread evenly.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Due schedules h for the next Expire: used when its connection closed.
func (q *Queue) Due(h Handle) {
	q.push(item{at: math.MinInt64, h: h})
}

func (q *Queue) push(it item) {
	if len(q.items) == cap(q.items) {
		// Grow by half: doubling would leave up to half of a large
		// array unused.
		q.resize(max(cap(q.items)+cap(q.items)/2, minItems))
	}
	// Append (within capacity: the array is the queue's own) and sift up
	// through heap.Fix instead of heap.Push: Push takes an interface
	// value, which would allocate for every deadline.
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
// records emit took. The *flow.Record given to emit is only valid during
// the call; emit returns false to refuse it (see Backpressure in the
// package documentation).
func (q *Queue) Expire(now time.Time, src Source, emit func(*flow.Record) bool) (int, error) {
	if src == nil || emit == nil {
		return 0, ErrNilSource
	}
	nowNs := now.UnixNano()
	emitted, refusals := 0, 0
	// export offers h's record; a refused one stays due for the next round.
	export := func(h Handle, reason flow.EndReason) bool {
		if src.Export(h, reason, nowNs, emit) {
			emitted++
			refusals = 0
			return true
		}
		q.m.refused.Inc()
		refusals++
		q.reschedTop(nowNs+1, nowNs)
		return false
	}
	for len(q.items) > 0 && q.items[0].at <= nowNs && refusals < MaxRefusalsPerRound {
		h := q.items[0].h
		t, ok := src.Timing(h)
		switch {
		case !ok:
			q.m.discarded.Inc()
			q.popTop()
		case t.Closed && nowNs < t.ClosedAt+q.closeDelay:
			q.reschedTop(t.ClosedAt+q.closeDelay, nowNs)
		case t.Closed:
			if export(h, flow.EndOfFlow) {
				q.popTop()
			}
		case t.Idle:
			// Its deadline was consumed by the idle export; a pending item
			// can only be a leftover.
			q.m.discarded.Inc()
			q.popTop()
		case nowNs-t.LastActive >= q.idle:
			if export(h, flow.EndIdleTimeout) {
				q.popTop()
			}
		case nowNs >= q.activeDeadline(h, t.PeriodStart):
			if t.Moved && !export(h, flow.EndActiveTimeout) {
				continue
			}
			// Exported or not, the next check is one period from now.
			q.reschedTop(min(q.activeDeadline(h, nowNs), t.LastActive+q.idle), nowNs)
		default:
			// Popped early: activity moved the idle deadline past the one
			// this item was computed from.
			q.reschedTop(min(q.activeDeadline(h, t.PeriodStart), t.LastActive+q.idle), nowNs)
		}
	}
	q.shrink()
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
