package agent

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
)

// acceptingSink is a Sink that can tell, without side effects, whether
// Export would take a record now. *ipfixexport.Exporter and *ShardedSink
// implement it.
type acceptingSink interface {
	Accepts(r *flow.Record) bool
}

// How the loop deals with a Sink that refuses (issue 12: no loss at
// start-up or under backlog).
//
//   - A due record (the queue's Expire) is offered: when the sink would
//     refuse it, the loop declines it before enriching it, the store keeps
//     its deltas (and a pending end-of-flow) and the queue offers it again
//     on the next tick. The L7 stage's Enrich consumes the connection's
//     transactions, so it must only run for a record the sink takes.
//   - A record the store cannot keep (the final record of an evicted or
//     replaced connection, the shutdown export), or a due record the sink
//     refused after Accepts said yes (another producer, such as a
//     failover moving records, filled the buffer in between; it is
//     enriched already), is waited for: the loop retries every
//     exportRetry until the sink takes it. Meanwhile conntrack events wait
//     in the kernel socket buffer, which is the backpressure the loop has.
//   - The wait is bounded twice. The exporter refuses only while records
//     leave its buffer, or for less than its BackpressureTimeout since
//     they stopped (or since its collector became unreachable); then it
//     drops and counts (buffer_full), whatever its connection does: a
//     hung collector whose kernel accepts every reconnect is dropped
//     too. It tells its bound (RefusalBound: BackpressureTimeout plus
//     WriteTimeout); the loop, so that a sink that breaks that promise
//     cannot stop it (no events applied, no counters read, a shutdown
//     that never ends), waits at most that bound plus exportWaitMargin
//     (defaultRefusalBound for a sink that does not tell), then drops
//     the record itself, counts it in
//     flowlens_agent_records_dropped_total{reason="sink_refused"} and
//     logs it (the first, then at most once a minute).
const exportRetry = time.Millisecond

// refusalBounder is a Sink that tells the longest it refuses one record
// its producer offers again and again. *ipfixexport.Exporter and
// *ShardedSink implement it.
type refusalBounder interface {
	RefusalBound() time.Duration
}

const (
	// defaultRefusalBound is the wait for a sink that does not tell its
	// bound: ipfixexport's default BackpressureTimeout (30s) plus its
	// default WriteTimeout (10s).
	defaultRefusalBound = 40 * time.Second
	// exportWaitMargin is what the loop adds to the sink's bound, so that
	// the sink's own drop (counted where its buffer is) comes first.
	exportWaitMargin = time.Second
	// exportWaitLogInterval spaces the logs of records the loop dropped.
	exportWaitLogInterval = time.Minute
)

// Reasons of flowlens_agent_records_dropped_total.
const dropSinkRefused = "sink_refused" // refused for longer than the sink's bound

// exportWait is what exportWaiting keeps: the count of records it dropped,
// and when it last logged one. Owned by the loop goroutine.
type exportWait struct {
	dropped   *prometheus.CounterVec
	sinceLog  int // dropped since the last log
	lastLogAt time.Time
}

func newExportWait(reg prometheus.Registerer) (exportWait, error) {
	w := exportWait{dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_agent_records_dropped_total",
		Help: "Records the agent loop dropped, by reason: sink_refused (the sink refused one the store cannot keep, an evicted, replaced or final record, for longer than the sink's backpressure bound).",
	}, []string{"reason"})}
	w.dropped.WithLabelValues(dropSinkRefused)
	if reg != nil {
		if err := reg.Register(w.dropped); err != nil {
			return exportWait{}, fmt.Errorf("register agent export metrics: %w", err)
		}
	}
	return w, nil
}

// refusalBound is how long the loop waits for s to take one record.
func refusalBound(s Sink) time.Duration {
	if h, ok := s.(*antreaHalves); ok {
		// It only skips records or passes them on: its sink's bound holds.
		s = h.next
	}
	if b, ok := s.(refusalBounder); ok {
		if d := b.RefusalBound(); d > 0 {
			return d + exportWaitMargin
		}
	}
	return defaultRefusalBound + exportWaitMargin
}

// offer is the emit function of the queue's Expire: it reports whether the
// sink took r.
func (l *Loop) offer(r *flow.Record) bool {
	if a, ok := l.cfg.Sink.(acceptingSink); ok && !a.Accepts(r) {
		return false
	}
	l.enrich(r)
	l.exportWaiting(r)
	return true
}

// enrich runs the enrichers, then the L7 stage, on r.
func (l *Loop) enrich(r *flow.Record) {
	for _, e := range l.cfg.Enrichers {
		e.Enrich(r)
	}
	if l.l7 != nil {
		l.l7.Enrich(r)
	}
}

// exportWaiting hands r to the sink, waiting while the sink refuses it, at
// most the sink's refusal bound: then r is dropped and counted. Real time,
// not the loop's clock: the wait is real sleeps.
func (l *Loop) exportWaiting(r *flow.Record) {
	// Read before the sink has it: a sink may change the record.
	end := r.Conn
	end.Counters, end.Tuple = r.Counters, r.Tuple
	defer l.viewsDone(&end, r.EndReason)
	if l.cfg.Sink.Export(r) {
		return
	}
	start := time.Now()
	deadline := start.Add(refusalBound(l.cfg.Sink))
	logged := false
	for !l.cfg.Sink.Export(r) {
		now := time.Now()
		if !now.Before(deadline) {
			l.dropRefused(r, now.Sub(start))
			return
		}
		if !logged && now.Sub(start) > time.Second {
			logged = true
			klog.InfoS("Export waits for the sink to take a record the store cannot keep (its buffer is full)",
				"conn", r.Tuple, "reason", r.EndReason, "dropAfter", deadline.Sub(start))
		}
		time.Sleep(exportRetry)
	}
}

// dropRefused counts r, which the sink refused for longer than its bound,
// as dropped, and logs it unless another was logged less than
// exportWaitLogInterval ago.
func (l *Loop) dropRefused(r *flow.Record, waited time.Duration) {
	w := &l.wait
	w.dropped.WithLabelValues(dropSinkRefused).Inc()
	w.sinceLog++
	now := time.Now()
	if !w.lastLogAt.IsZero() && now.Sub(w.lastLogAt) < exportWaitLogInterval {
		return
	}
	klog.ErrorS(nil, "The sink refused a record the store cannot keep for longer than its backpressure bound; record dropped "+
		"(counted in flowlens_agent_records_dropped_total{reason=\"sink_refused\"})",
		"conn", r.Tuple, "reason", r.EndReason, "waited", waited.Round(time.Millisecond), "droppedSinceLastLog", w.sinceLog)
	w.lastLogAt, w.sinceLog = now, 0
}
