package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/wal"
)

// walStage connects the write-ahead log to the pipeline:
//
//   - send: every decoded record is appended (numbered) and queued for the
//     correlator under one lock, so the correlator sees records in log
//     order;
//   - the correlator names the numbers of its inputs in each row
//     (correlate.Record.Seqs);
//   - committingWriter: once a sink's destination took rows, their numbers
//     are committed for that sink; for a destination that can say whether
//     it stored a batch (batchFinder: ClickHouse), an intent naming the
//     batch and those numbers is logged before it is sent;
//   - replay: at start, the logged intents whose batch the destination
//     turns out to have are committed (the crash came between the insert
//     and its commit), then what some sink had not committed goes through
//     the correlator again, to those sinks only.
type walStage struct {
	log   *wal.Log
	sinks []string // Config.Sinks of the log: bit i of a replayed need
	pos   []int    // pos[i]: index of log sink i in the aggregator's Fanout
	// finders[i] are the destinations of log sink i that can be asked
	// which batches they stored (a ClickHouse cluster has one per shard,
	// at the shard's index: the destination its intents name).
	finders [][]batchFinder
	// lookupTimeout bounds the start-up lookup of those batches.
	lookupTimeout time.Duration

	mu  sync.Mutex // orders append + queue
	buf []byte

	appendErrors   prometheus.Counter
	commitErrors   prometheus.Counter
	intentErrors   prometheus.Counter
	lookupFailures prometheus.Counter
	alreadyStored  prometheus.Counter
}

// batchFinder is a destination that can tell which of a set of batch ids
// (sink.Batch.ID) it stored, and how many rows each had.
type batchFinder interface {
	StoredBatches(ctx context.Context, ids []uint64) (map[uint64]uint64, error)
}

// defaultLookupTimeout is how long the start-up lookup of in-flight
// batches waits for the destination before replaying them regardless.
const defaultLookupTimeout = 30 * time.Second

// walSinkNames are the names the enabled sinks get, in buildSinks' order.
func walSinkNames(c *aggregatorconfig.Config) []string {
	var names []string
	if c.Sinks.ClickHouse.Enabled {
		names = append(names, "clickhouse")
	}
	if c.Sinks.JSONL.Enabled {
		names = append(names, "jsonl")
	}
	if c.Sinks.IPFIX.Enabled {
		names = append(names, "ipfix")
	}
	return names
}

// newWALStage opens the log; nil when it is disabled.
func newWALStage(c *aggregatorconfig.Config, reg prometheus.Registerer) (*walStage, error) {
	if !c.WAL.Enabled {
		return nil, nil
	}
	names := walSinkNames(c)
	l, err := wal.Open(wal.Config{
		Dir: c.WAL.Dir, SegmentBytes: c.WAL.SegmentBytes, MaxBytes: c.WAL.MaxBytes,
		Sync: wal.SyncPolicy(c.WAL.Sync), SyncInterval: c.WAL.SyncInterval.D(), Sinks: names,
	}, reg)
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	w := &walStage{
		log: l, sinks: names, pos: make([]int, len(names)),
		finders: make([][]batchFinder, len(names)), lookupTimeout: defaultLookupTimeout,
		appendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_wal_append_failures_total",
			Help: "Records passed on without write-ahead log protection because appending them failed.",
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_wal_commit_failures_total",
			Help: "Sink commits the write-ahead log could not write; after a crash those rows may be written again.",
		}),
		intentErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_wal_intent_failures_total",
			Help: "Batches sent without their intent in the write-ahead log; a crash during their insert may store them twice.",
		}),
		lookupFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_replay_lookup_failures_total",
			Help: "Start-up lookups, per destination (a cluster's shard), of batches in flight at a crash that failed; the batches no other destination had were replayed regardless and may be stored twice.",
		}),
		alreadyStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_replay_rows_already_stored_total",
			Help: "Rows of batches in flight at a crash that the destination had stored; their records were committed instead of replayed.",
		}),
	}
	for _, m := range []prometheus.Collector{w.appendErrors, w.commitErrors, w.intentErrors, w.lookupFailures, w.alreadyStored} {
		if err := reg.Register(m); err != nil {
			_ = l.Close()
			return nil, fmt.Errorf("register wal metrics: %w", err)
		}
	}
	return w, nil
}

// send appends in to the log and queues it; a failed append is counted and
// the record goes on unprotected (Seq 0) rather than being lost now.
func (w *walStage) send(in correlate.Input, queue func(correlate.Input)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = wal.AppendInput(w.buf[:0], &in)
	seq, err := w.log.Append(w.buf)
	if err != nil {
		w.appendErrors.Inc()
		klog.ErrorS(err, "WAL append failed; record not protected against a crash")
	}
	in.Seq = seq
	queue(in)
}

// wrap makes inner commit what the sink named name delivered; the sink
// will be at index pos of the aggregator's Fanout.
func (w *walStage) wrap(name string, inner sink.Writer, pos int) sink.Writer {
	return w.wrapDest(name, inner, pos, -1)
}

// wrapShard is wrap for shard shard of a sink that spreads its rows over
// several destinations (a ClickHouse cluster): its intents name the
// shard, so after a crash each batch is asked of its shard alone, and a
// shard that is down leaves only its own batches uncertain.
func (w *walStage) wrapShard(name string, inner sink.Writer, pos, shard int) sink.Writer {
	return w.wrapDest(name, inner, pos, shard)
}

func (w *walStage) wrapDest(name string, inner sink.Writer, pos, dest int) sink.Writer {
	if w == nil {
		return inner
	}
	for i, n := range w.sinks {
		if n == name {
			w.pos[i] = pos
			c := &committingWriter{Writer: inner, stage: w, sink: i, dest: -1}
			if f, ok := inner.(batchFinder); ok {
				c.finder = true
				if dest >= 0 {
					c.dest = dest
					for len(w.finders[i]) <= dest {
						w.finders[i] = append(w.finders[i], nil)
					}
					w.finders[i][dest] = f
				} else {
					w.finders[i] = append(w.finders[i], f)
				}
			}
			return c
		}
	}
	return inner
}

// committingWriter commits, for its sink, the input numbers of the rows
// its Writer delivered; rows of a batch that failed permanently are
// committed too, since the sink parks or drops them (counted there) and a
// replay would only be refused again.
type committingWriter struct {
	sink.Writer
	stage  *walStage
	sink   int
	finder bool     // Writer is a batchFinder: log intents
	dest   int      // the intents' destination (shard), or -1
	seqs   []uint64 // Write runs on the sink's goroutine only
}

func (c *committingWriter) Write(ctx context.Context, b *sink.Batch) (int, error) {
	if c.finder {
		// Logged before the send: a crash before the commit then leaves
		// a batch id the replay can look up instead of inserting again.
		c.seqs = c.seqs[:0]
		for _, r := range b.Records {
			c.seqs = append(c.seqs, r.Seqs...)
		}
		if len(c.seqs) > 0 {
			var err error
			if c.dest >= 0 {
				err = c.stage.log.IntendTo(c.sink, c.dest, b.ID, c.seqs)
			} else {
				err = c.stage.log.Intend(c.sink, b.ID, c.seqs)
			}
			if err != nil {
				c.stage.intentErrors.Inc()
				klog.ErrorS(err, "WAL intent failed; a crash during this insert may store its rows twice", "sink", c.stage.sinks[c.sink], "batchId", b.ID)
			}
		}
	}
	n, err := c.Writer.Write(ctx, b)
	n = max(0, min(n, len(b.Records)))
	done := b.Records[:n]
	if err != nil && sink.IsPermanent(err) {
		done = b.Records
	}
	c.seqs = c.seqs[:0]
	for _, r := range done {
		c.seqs = append(c.seqs, r.Seqs...)
	}
	if len(c.seqs) > 0 {
		if cerr := c.stage.log.Commit(c.sink, c.seqs); cerr != nil {
			c.stage.commitErrors.Inc()
			klog.ErrorS(cerr, "WAL commit failed", "sink", c.stage.sinks[c.sink], "records", len(c.seqs))
		}
	}
	return n, err
}

// replay feeds the records some sink had not committed through the
// correlator again. Those every sink still needs go through the main
// correlator (their connections carry on with later records); those only
// some sinks need go through a separate correlator per set of sinks,
// flushed into those sinks alone, so no sink gets a record twice. The sinks
// must be running: Put waits for room.
func (w *walStage) replay(main *correlate.Correlator, sinks sink.Fanout, cc correlate.Config) error {
	if w == nil {
		return nil
	}
	for i := range w.sinks {
		w.settleIntents(i)
	}
	all := uint8(1)<<len(w.sinks) - 1
	partial := map[uint8]*correlate.Correlator{}
	n := 0
	start := time.Now()
	err := w.log.Replay(func(seq uint64, need uint8, data []byte) error {
		var in correlate.Input
		if err := wal.DecodeInput(data, &in); err != nil {
			klog.ErrorS(err, "Skipping undecodable WAL record", "seq", seq)
			return nil
		}
		in.Seq = seq
		now := time.Now()
		n++
		if need&all == all {
			main.Add(&in, now, sinks.Put)
			main.Expire(now, sinks.Put)
			return nil
		}
		c := partial[need]
		if c == nil {
			var err error
			// Unregistered metrics: the main correlator's are the
			// aggregator's; these rows are counted by the sinks.
			if c, err = correlate.New(cc, nil); err != nil {
				return err
			}
			partial[need] = c
		}
		c.Add(&in, now, func(r *correlate.Record) { w.putTo(sinks, need, r) })
		return nil
	})
	for need, c := range partial {
		c.Flush(func(r *correlate.Record) { w.putTo(sinks, need, r) })
	}
	if n > 0 {
		klog.InfoS("Replayed the write-ahead log", "records", n, "partial", len(partial), "took", time.Since(start))
	}
	if err != nil {
		return fmt.Errorf("wal replay: %w", err)
	}
	return nil
}

// settleIntents commits, for log sink i, the records of the batches that
// were in flight at the crash and that its destination stored after all:
// replaying them would store their rows twice. A replay correlates
// afresh and forms other rows and batches, so this must be settled by
// the original batch ids, before the replay.
//
// A batch whose intent names its shard is asked of that shard alone; one
// without (an older log, a shard index beyond today's list) of every
// shard. The shards are asked in parallel, each retried until
// lookupTimeout: a batch any shard has is stored (a batch id is unique,
// so that is conclusive whatever another shard answers); one that every
// shard it was asked of answered without is not; one not found while a
// shard it was asked of kept failing is uncertain and replayed (counted):
// a row stored twice is preferred to one lost. So a shard that is down
// makes only its own batches uncertain.
func (w *walStage) settleIntents(i int) {
	// Taken for every sink, so the log lets go of them: a sink that has
	// no finder now (the configuration changed) replays them.
	intents := w.log.Intents(i)
	finders := w.finders[i]
	if len(intents) == 0 || len(finders) == 0 {
		return
	}
	ask := make([][]uint64, len(finders))
	for _, in := range intents {
		if in.HasDest && in.Dest < len(finders) && finders[in.Dest] != nil {
			ask[in.Dest] = append(ask[in.Dest], in.Batch)
			continue
		}
		for d, f := range finders {
			if f != nil {
				ask[d] = append(ask[d], in.Batch)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.lookupTimeout)
	defer cancel()
	answers := make([]map[uint64]uint64, len(finders))
	failed := make([]error, len(finders))
	var wg sync.WaitGroup
	for d, ids := range ask {
		if len(ids) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[d], failed[d] = w.lookup(ctx, i, d, finders[d], ids)
		}()
	}
	wg.Wait()
	stored := map[uint64]uint64{}
	for d, err := range failed {
		if err != nil {
			w.lookupFailures.Inc()
			klog.ErrorS(err, "Could not ask a destination which in-flight batches it stored; replaying those not found elsewhere, some rows may be stored twice",
				"sink", w.sinks[i], "destination", d, "batches", len(ask[d]))
		}
		for id, n := range answers[d] {
			stored[id] += n
		}
	}
	uncertain := map[uint64]bool{}
	for d, err := range failed {
		if err != nil {
			for _, id := range ask[d] {
				uncertain[id] = true
			}
		}
	}
	var seqs []uint64
	var rows uint64
	batches, unsure := 0, 0
	for _, in := range intents {
		switch {
		case stored[in.Batch] > 0:
			rows += stored[in.Batch]
			batches++
			seqs = append(seqs, in.Seqs...)
		case uncertain[in.Batch]:
			unsure++
		}
	}
	klog.InfoS("Looked up the batches in flight at the last stop", "sink", w.sinks[i], "batches", len(intents), "stored", batches, "rows", rows, "uncertain", unsure)
	if len(seqs) == 0 {
		return
	}
	w.alreadyStored.Add(float64(rows))
	if err := w.log.Commit(i, seqs); err != nil {
		// In memory the records are committed all the same, so this
		// replay skips them; only a crash before the next commit frame
		// could replay them once more.
		w.commitErrors.Inc()
		klog.ErrorS(err, "WAL commit of already stored batches failed", "sink", w.sinks[i], "records", len(seqs))
	}
}

// lookup asks f, destination d of log sink i, which of ids it stored,
// retrying until ctx ends.
func (w *walStage) lookup(ctx context.Context, i, d int, f batchFinder, ids []uint64) (map[uint64]uint64, error) {
	for {
		m, err := f.StoredBatches(ctx, ids)
		if err == nil {
			return m, nil
		}
		klog.ErrorS(err, "Looking up in-flight batches failed; retrying", "sink", w.sinks[i], "destination", d)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("look up %d in-flight batches on destination %d: %w", len(ids), d, err)
		case <-time.After(time.Second):
		}
	}
}

// putTo queues r on the sinks whose bits are set in need.
func (w *walStage) putTo(sinks sink.Fanout, need uint8, r *correlate.Record) {
	for i, p := range w.pos {
		if need&(1<<i) != 0 && p < len(sinks) {
			sinks[p].Put(r)
		}
	}
}

func (w *walStage) close() error {
	if w == nil {
		return nil
	}
	return w.log.Close()
}
