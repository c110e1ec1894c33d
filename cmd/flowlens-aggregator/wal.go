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
//     are committed for that sink;
//   - replay: at start, what some sink had not committed goes through the
//     correlator again, to those sinks only.
type walStage struct {
	log   *wal.Log
	sinks []string // Config.Sinks of the log: bit i of a replayed need
	pos   []int    // pos[i]: index of log sink i in the aggregator's Fanout

	mu  sync.Mutex // orders append + queue
	buf []byte

	appendErrors prometheus.Counter
	commitErrors prometheus.Counter
}

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
		appendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_wal_append_failures_total",
			Help: "Records passed on without write-ahead log protection because appending them failed.",
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_wal_commit_failures_total",
			Help: "Sink commits the write-ahead log could not write; after a crash those rows may be written again.",
		}),
	}
	for _, m := range []prometheus.Collector{w.appendErrors, w.commitErrors} {
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
	if w == nil {
		return inner
	}
	for i, n := range w.sinks {
		if n == name {
			w.pos[i] = pos
			return &committingWriter{Writer: inner, stage: w, sink: i}
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
	stage *walStage
	sink  int
	seqs  []uint64 // Write runs on the sink's goroutine only
}

func (c *committingWriter) Write(ctx context.Context, b *sink.Batch) (int, error) {
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
