package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/connstore"
	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/l7"
)

// Source is where the loop learns about connections. *conntrack.Source
// implements it; a second kind of source (eBPF) only has to report the same
// three things.
type Source interface {
	// Dump reports every connection the source holds now. The Conn is
	// valid during the call only. An error means the dump is incomplete.
	Dump(fn func(*flow.Conn)) error
	// Listen reports NEW, UPDATE and DESTROY events, and EventOverrun when
	// some were lost, until ctx ends. The event's Conn is valid during the
	// call only.
	Listen(ctx context.Context, fn func(conntrack.Event)) error
	// Get refreshes c's counters and start time from the source; it returns
	// conntrack.ErrNotFound when the source no longer holds c.
	Get(c *flow.Conn) error
}

// Sink takes the records the loop emits; *ipfixexport.Exporter implements
// it. The record is only valid during the call. Export reports true when it
// took the record (queued it, or dropped and counted it) and false when it
// refused it, its buffer being full (backpressure): nothing was kept or
// counted, and the loop offers the record again later (see offer). A Sink
// may also implement Accepts (acceptingSink).
type Sink interface {
	Export(r *flow.Record) bool
}

// Enricher fills context into a record right before it goes to the Sink.
type Enricher interface {
	Enrich(r *flow.Record)
}

// L7 is the L7 stage (*l7.Enricher) as the loop drives it. The loop calls
// every method from its own goroutine, which is what lets the stage look
// connections up in the store without a lock.
type L7 interface {
	Enricher
	// Ingest matches one EVE event to a connection (or keeps it pending).
	Ingest(ev eve.Event, now time.Time)
	// Tick retries pending events and expires old state.
	Tick(now time.Time)
}

// EventStream is the source's events as the loop reads them at its ticks
// (*conntrack.EventStream).
type EventStream interface {
	// Drain calls fn for each event queued now, without waiting; it reads
	// at most max datagrams when max > 0.
	Drain(max int, fn func(conntrack.Event)) error
	Close() error
}

// LoopConfig configures a Loop.
type LoopConfig struct {
	Source Source // required
	// Events makes the loop listen to the source's events; without them
	// closes are found by the next dump.
	Events bool
	// EventQueue is the capacity of the channel between the event listener
	// and the loop. When it is full the listener waits and the kernel's
	// socket buffer absorbs the burst; if that overflows too the source
	// reports an overrun and the loop resyncs with a dump. Zero is an
	// unbuffered channel (tests use it to make the order of events exact).
	EventQueue int
	// EventDelay is how much later than the kernel sent them the source
	// may report events, beyond the usual microseconds (its batching
	// delay): a NEW is then handled up to that much after its
	// connection's first packet. A positive EventDelay also says the
	// source ends each batch with conntrack.EventBatchEnd: the loop then
	// takes events from the listener a batch at a time (one wake-up per
	// batch, not per event).
	EventDelay time.Duration
	// OpenEvents, used with Counters and a positive EventDelay, opens the
	// source's events for the loop to read itself at each tick, right
	// after the read round, instead of through a listener goroutine: the
	// agent then wakes for its ticks only, not also for each batch of
	// events. The kernel holds the events in the socket's buffer until
	// then, so EventDelay must cover a tick. Where it fails, the loop
	// listens as it would without it.
	OpenEvents func() (EventStream, error)
	// PollInterval is how often the source is dumped; TickInterval how
	// often due records are exported. Both required. With Counters the
	// dump is only a resync (births and deaths come from events), so
	// PollInterval is long.
	PollInterval, TickInterval time.Duration

	// Counters, when set, counts the connections it sees from their first
	// packet; it is read every tick, for what changed only. Requires
	// Events: births come from NEW events. Conntrack's counters stay the
	// source for the connections Counters cannot see.
	Counters Counters
	// CrossCheck compares Counters' totals with conntrack's at each end.
	CrossCheck CrossCheck

	// MaxConnections bounds the store (connstore.Config.MaxConnections).
	MaxConnections int
	// Queue sets the export cadence (expirequeue.Config).
	Queue expirequeue.Config

	Sink Sink // required
	// Enrichers run in order on every record before the L7 stage.
	Enrichers []Enricher
	// NewL7 builds the L7 stage on the loop's connection store; nil means no
	// L7 stage. The stage may only use conns from inside the L7 methods the
	// loop calls.
	NewL7 func(conns l7.Connections) (L7, error)
	// L7Events carries EVE events from their reader to the loop, which
	// hands them to the L7 stage. Bounded by its creator: a full channel
	// makes the reader wait (see Handoff).
	L7Events <-chan eve.Event

	// Health is told about every complete dump; optional.
	Health *Health
	// Clock is the time source; nil means the system clock.
	Clock Clock
}

// Loop is the agent's core: one goroutine that owns the connection store
// and the expire queue, feeds them the source's dumps and events and the
// L7 stage its EVE events, and exports due records. Nothing else touches
// the store, so it needs no lock.
//
// What the loop decides (the rest is the store's and the queue's job):
//   - a dump reports every connection; only a complete dump lets the store
//     close connections it did not name (a failed dump closes nothing);
//   - an UPDATE saying a connection finished (conntrack.Finished) carries
//     no counters, so the loop reads the final ones with Source.Get;
//   - a DESTROY closes the connection with its final counters, or ends the
//     tombstone of one already exported;
//   - an overrun (events lost) is repaired with a dump at once;
//   - at shutdown, what is not exported yet is exported exactly once.
type Loop struct {
	cfg   LoopConfig
	clock Clock
	store *connstore.Store
	queue *expirequeue.Queue
	l7    L7
	emit  func(*flow.Record)
	m     loopMetrics
	// wait counts the records exportWaiting gave up on (backpressure.go).
	wait     exportWait
	fromDump func(*flow.Conn) // reused: no closure per dump
	dumpNow  time.Time
	counters *counterStage // nil: counters come from conntrack dumps
	// eventsAfterRound: the source batches its events and counters are
	// read in rounds; the loop takes the events at each tick, right
	// after the read round. A NEW then finds its views among the values
	// the round just read (no system call), and the loop wakes for
	// ticks, not for events.
	eventsAfterRound bool
	runSince         int64 // Unix ns: when Run began, before it listened
	// stream: the events are read from it at the ticks (OpenEvents).
	stream EventStream
	// pulled is the reused batch of events read from stream; held are
	// those read during a dump (up to EventQueue), applied at the next
	// tick; dumped counts a dump's entries.
	pulled, held []ctEvent
	dumped       int
}

// holdEvery is how many entries of a dump go between two reads of the
// event stream: a dump of a large table takes seconds, and the events of
// a busy node would overflow the socket's buffer meanwhile.
const holdEvery = 4096

type loopMetrics struct {
	getErrors       prometheus.Counter
	eventsDiscarded prometheus.Counter
}

// ctEvent is a conntrack event copied out of the listener's reused Conn so
// that it can cross to the loop goroutine.
type ctEvent struct {
	typ  conntrack.EventType
	conn flow.Conn
}

// maxEventBatch bounds the events the listener hands the loop at once;
// LoopConfig.EventQueue (in events) is that many per queued batch.
const maxEventBatch = 256

// eventBatches carries batches of events from the listener to the loop,
// and the loop's emptied batches back for reuse (a batch is tens of
// kilobytes: allocating one per batch would feed the garbage collector).
type eventBatches struct {
	full chan []ctEvent
	free chan []ctEvent
}

func newEventBatches(queue int) eventBatches {
	n := (queue + maxEventBatch - 1) / maxEventBatch
	return eventBatches{full: make(chan []ctEvent, n), free: make(chan []ctEvent, n+2)}
}

// recycle gives an applied batch back to the listener.
func (b eventBatches) recycle(evs []ctEvent) {
	select {
	case b.free <- evs[:0]:
	default:
	}
}

func (b eventBatches) empty() []ctEvent {
	select {
	case evs := <-b.free:
		return evs
	default:
		return make([]ctEvent, 0, maxEventBatch)
	}
}

// NewLoop validates cfg, builds the store, the queue and the L7 stage, and
// registers the loop's metrics and theirs on reg (nil: not registered).
func NewLoop(cfg LoopConfig, reg prometheus.Registerer) (*Loop, error) {
	switch {
	case cfg.Source == nil:
		return nil, errors.New("agent loop: Source is required")
	case cfg.Sink == nil:
		return nil, errors.New("agent loop: Sink is required")
	case cfg.PollInterval <= 0 || cfg.TickInterval <= 0:
		return nil, fmt.Errorf("agent loop: PollInterval %s and TickInterval %s must be positive", cfg.PollInterval, cfg.TickInterval)
	case cfg.EventQueue < 0 || cfg.EventDelay < 0:
		return nil, fmt.Errorf("agent loop: EventQueue %d and EventDelay %s must not be negative", cfg.EventQueue, cfg.EventDelay)
	case cfg.L7Events != nil && cfg.NewL7 == nil:
		return nil, errors.New("agent loop: L7Events given without NewL7")
	case cfg.Counters != nil && !cfg.Events:
		return nil, errors.New("agent loop: Counters needs Events (connections are born from NEW events)")
	}
	l := &Loop{cfg: cfg, clock: cfg.Clock}
	if l.clock == nil {
		l.clock = SystemClock{}
	}
	l.m = loopMetrics{
		getErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_final_counter_reads_failed_total",
			Help: "Finished connections whose final counters could not be read from the source (the record carries the last counters seen).",
		}),
		eventsDiscarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_conntrack_events_discarded_total",
			Help: "Conntrack events received while the agent was stopping and not applied (their connections are exported with reason forced).",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{l.m.getErrors, l.m.eventsDiscarded} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register agent loop metrics: %w", err)
			}
		}
	}
	var err error
	if l.wait, err = newExportWait(reg); err != nil {
		return nil, err
	}
	if cfg.Counters != nil {
		if l.counters, err = newCounterStage(cfg.Counters, cfg.CrossCheck, reg); err != nil {
			return nil, err
		}
		l.eventsAfterRound = cfg.EventDelay > 0
	}
	if l.queue, err = expirequeue.New(cfg.Queue, reg); err != nil {
		return nil, fmt.Errorf("expire queue: %w", err)
	}
	l.store, err = connstore.New(connstore.Config{
		MaxConnections: cfg.MaxConnections,
		Scheduler:      l.queue,
		Emit:           l.export,
		// With events, a tombstone waits for its connection's DESTROY.
		AwaitDestroy: cfg.Events,
	}, reg)
	if err != nil {
		return nil, fmt.Errorf("connection store: %w", err)
	}
	if cfg.NewL7 != nil {
		if l.l7, err = cfg.NewL7(l.store); err != nil {
			return nil, fmt.Errorf("l7 stage: %w", err)
		}
	}
	l.emit = l.export
	l.fromDump = func(c *flow.Conn) {
		if l.dumped++; l.dumped%holdEvery == 0 {
			l.holdEvents()
		}
		if l.counters != nil {
			l.counterDumped(c)
		}
		l.report(c, l.dumpNow)
	}
	return l, nil
}

// export enriches r and hands it to the sink.
func (l *Loop) export(r *flow.Record) {
	l.enrich(r)
	// The store cannot keep this record (an evicted or replaced
	// connection, or the shutdown export): wait for the sink to take it.
	l.exportWaiting(r)
}

// Run dumps the source, then applies its events and dumps and exports due
// records until ctx ends; then it exports everything not exported yet and
// returns once the event listener stopped. A failing listener is logged and
// the loop goes on with dumps only: nothing the loop meets stops it.
func (l *Loop) Run(ctx context.Context) {
	l.runSince = l.clock.Now().UnixNano()
	events := newEventBatches(l.cfg.EventQueue)
	if l.cfg.Events && l.eventsAfterRound && l.cfg.OpenEvents != nil {
		var err error
		if l.stream, err = l.cfg.OpenEvents(); err != nil {
			klog.ErrorS(err, "Could not open conntrack events for reading at ticks; listening for them instead")
			l.stream = nil
		}
	}
	defer l.closeStream()
	var listenerDone chan error
	if l.cfg.Events && l.stream == nil {
		listenerDone = make(chan error, 1)
		go func() { listenerDone <- l.listen(ctx, events) }()
	}

	l.poll()
	pollTicker := l.clock.NewTicker(l.cfg.PollInterval)
	defer pollTicker.Stop()
	tickTicker := l.clock.NewTicker(l.cfg.TickInterval)
	defer tickTicker.Stop()

	l7Events := l.cfg.L7Events
	eventsNow := events.full
	if l.eventsAfterRound {
		eventsNow = nil // taken at the tick
	}
	for {
		select {
		case <-ctx.Done():
			// What the kernel sent until now, as a listener would have
			// read it before it stopped.
			l.pullEvents()
			l.closeStream()
			l.shutdown(events, listenerDone, l7Events)
			return
		case evs := <-eventsNow:
			l.applyAll(evs)
			events.recycle(evs)
		case ev, ok := <-l7Events:
			if !ok {
				l7Events = nil
				continue
			}
			l.l7.Ingest(ev, l.clock.Now())
		case err := <-listenerDone:
			listenerStopped(err)
			listenerDone = nil
		case <-pollTicker.C():
			l.poll()
		case now := <-tickTicker.C():
			if l.counters != nil {
				l.readCounters(now, false)
			}
			switch {
			case l.stream != nil:
				l.pullEvents()
			case l.eventsAfterRound:
				l.takeEvents(events)
			}
			l.tick(now)
		}
	}
}

// takeEvents applies every batch of events queued now.
func (l *Loop) takeEvents(events eventBatches) {
	for {
		select {
		case evs := <-events.full:
			l.applyAll(evs)
			events.recycle(evs)
		default:
			return
		}
	}
}

// pullEvents applies the events held during a dump, then every event the
// stream holds now, in batches of maxEventBatch. A stream that fails is
// closed: as when a listener fails, closes are found by the dumps.
func (l *Loop) pullEvents() {
	if len(l.held) > 0 {
		l.applyAll(l.held)
		l.held = l.held[:0]
	}
	if l.stream == nil {
		return
	}
	batch := l.pulled[:0]
	err := l.stream.Drain(0, func(ev conntrack.Event) {
		batch = appendEvent(batch, ev)
		if len(batch) >= maxEventBatch {
			l.applyAll(batch)
			batch = batch[:0]
		}
	})
	if len(batch) > 0 {
		l.applyAll(batch)
	}
	l.pulled = batch[:0]
	if err != nil {
		listenerStopped(err)
		l.closeStream()
	}
}

// holdEvents reads the stream's events during a dump, up to about
// EventQueue of them; the rest waits in the socket's buffer.
func (l *Loop) holdEvents() {
	room := l.cfg.EventQueue - len(l.held)
	if l.stream == nil || room <= 0 {
		return
	}
	err := l.stream.Drain(room, func(ev conntrack.Event) {
		l.held = appendEvent(l.held, ev)
	})
	if err != nil {
		listenerStopped(err)
		l.closeStream()
	}
}

func appendEvent(evs []ctEvent, ev conntrack.Event) []ctEvent {
	msg := ctEvent{typ: ev.Type}
	if ev.Conn != nil {
		msg.conn = *ev.Conn
	}
	return append(evs, msg)
}

func (l *Loop) closeStream() {
	if l.stream != nil {
		l.stream.Close()
		l.stream = nil
	}
}

// listenerStopped logs why the event listener stopped before ctx ended.
// Without events closes are noticed by the next dump instead: degraded, not
// broken.
func listenerStopped(err error) {
	klog.ErrorS(err, "Conntrack event listener stopped; closed connections are found by polling only")
}

// listen copies the events into batches for the loop: a batch goes when
// the source ends one (EventBatchEnd), when it is full, at an overrun,
// and after every event when the source does not batch.
func (l *Loop) listen(ctx context.Context, events eventBatches) error {
	batch := events.empty()
	send := func() {
		if len(batch) == 0 {
			return
		}
		// Blocking here lets the kernel socket buffer absorb a burst; if
		// that overflows too the source reports an overrun and the loop
		// resyncs with a dump.
		select {
		case events.full <- batch:
			batch = events.empty()
		case <-ctx.Done():
			l.m.eventsDiscarded.Add(float64(len(batch)))
			batch = batch[:0]
		}
	}
	err := l.cfg.Source.Listen(ctx, func(ev conntrack.Event) {
		if ev.Type == conntrack.EventBatchEnd {
			send()
			return
		}
		msg := ctEvent{typ: ev.Type}
		if ev.Conn != nil {
			msg.conn = *ev.Conn
		}
		batch = append(batch, msg)
		if l.cfg.EventDelay == 0 || len(batch) >= maxEventBatch || ev.Type == conntrack.EventOverrun {
			send()
		}
	})
	send()
	return err
}

// applyAll applies a batch of events in order.
func (l *Loop) applyAll(evs []ctEvent) {
	l.flushForgotten() // exported since (a resync): before a NEW finds them
	for i := range evs {
		l.apply(&evs[i])
	}
	l.flushForgotten()
}

// apply handles one conntrack event.
func (l *Loop) apply(ev *ctEvent) {
	now := l.clock.Now()
	switch ev.typ {
	case conntrack.EventNew:
		if l.counters != nil {
			l.counterBorn(&ev.conn, now)
		}
		l.report(&ev.conn, now)
	case conntrack.EventUpdate:
		if l.counters != nil {
			l.counterDumped(&ev.conn)
		}
		if ev.conn.Counters != flow.CountersBPF && conntrack.Finished(&ev.conn) {
			// UPDATE events carry no counters or start time; the kernel
			// entry still holds them while it lingers in TIME_WAIT.
			if err := l.cfg.Source.Get(&ev.conn); err != nil && !errors.Is(err, conntrack.ErrNotFound) {
				l.m.getErrors.Inc()
				klog.V(2).InfoS("Could not read final counters of a finished connection", "conn", ev.conn.Tuple, "err", err)
			}
		}
		l.report(&ev.conn, now)
	case conntrack.EventDestroy:
		if l.counters != nil {
			l.counterDestroyed(&ev.conn, now)
		}
		// Not Close: the DESTROY of a connection already exported as
		// finished (TIME_WAIT) must end its tombstone, not export it again.
		l.store.Destroyed(&ev.conn, now)
	case conntrack.EventOverrun:
		klog.InfoS("Conntrack events were lost; resynchronising with a dump")
		l.poll()
	}
}

// report hands the store one observation of a connection.
func (l *Loop) report(c *flow.Conn, now time.Time) {
	if conntrack.Finished(c) {
		l.store.Close(c, now)
		return
	}
	l.store.Upsert(c, now)
}

// poll dumps the source; only a complete dump closes what it did not name.
func (l *Loop) poll() {
	started := l.clock.Now()
	l.dumpNow = started
	if err := l.cfg.Source.Dump(l.fromDump); err != nil {
		// A partial dump must not be taken as complete, or every
		// connection it missed would be closed as stale.
		klog.ErrorS(err, "Conntrack dump failed")
		return
	}
	l.store.EndDump(started)
	if l.counters != nil {
		l.flushForgotten()
		l.sweepViews()
	}
	if l.cfg.Health != nil {
		l.cfg.Health.DumpSucceeded(l.clock.Now())
	}
}

// tick lets the L7 stage match pending events first, so that they reach
// the records this tick exports, then exports what is due.
func (l *Loop) tick(now time.Time) {
	if l.l7 != nil {
		l.l7.Tick(now)
	}
	// offer, not emit: a due record the sink refuses stays in the store
	// and the queue offers it again on a later tick.
	if _, err := l.queue.Expire(now, l.store, l.offer); err != nil {
		klog.ErrorS(err, "Expire connections")
	}
	l.flushForgotten()
}

// shutdown applies what is already queued for the loop, then exports what
// the store holds that was not exported yet: closed connections with
// end-of-flow, the others with flowEndReason forced, so a restart loses no
// delta.
func (l *Loop) shutdown(events eventBatches, listenerDone chan error, l7Events <-chan eve.Event) {
	if listenerDone != nil {
		// The listener returns promptly once ctx ended; after that nothing
		// writes to events and it can be drained completely. It may also
		// have failed just before.
		if err := <-listenerDone; err != nil && !errors.Is(err, context.Canceled) {
			listenerStopped(err)
		}
	}
	for drained := false; !drained; {
		select {
		case evs := <-events.full:
			l.applyAll(evs)
		default:
			drained = true
		}
	}
	// The EVE reader may still be writing; take what is there now (the
	// rest is counted by Handoff when it closes).
	for drained := l7Events == nil; !drained; {
		select {
		case ev, ok := <-l7Events:
			if !ok {
				drained = true
				continue
			}
			l.l7.Ingest(ev, l.clock.Now())
		default:
			drained = true
		}
	}
	now := l.clock.Now()
	if l.counters != nil {
		l.readCounters(now, true)
		// The connections conntrack counts in this mode were last read by
		// the resync, minutes ago: one more dump, so their forced records
		// carry what they moved since.
		l.poll()
		now = l.clock.Now()
	}
	l.tick(now)
	if n := l.store.ExportAll(now, l.emit); n > 0 {
		klog.InfoS("Exported open connections at shutdown", "records", n)
	}
	l.flushForgotten()
}
