// Package sink delivers aggregated records to their destinations
// (ClickHouse, JSON lines, IPFIX) without silent loss: each destination has
// its own bounded queue, batches by size and commit interval, retries a
// failed batch with exponential backoff, and counts and logs whatever the
// bound forces it to drop. Destinations implement Writer in subpackages.
package sink

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/correlate"
)

// Batch is one unit of delivery. ID is unique per aggregator process and
// stays the same across retries, so a Writer whose destination may have
// committed a batch before failing (ClickHouse) can check before writing it
// again. Attempt counts earlier failed tries of the same batch.
type Batch struct {
	ID      uint64
	Attempt int
	Records []*correlate.Record
}

// Writer is one destination. Write delivers a prefix of b.Records and
// reports its length; an error with n < len(b.Records) makes the rest be
// retried, so a Writer must only report as written what it delivered.
type Writer interface {
	Write(ctx context.Context, b *Batch) (n int, err error)
	Close() error
}

// Defaults for Config fields left zero.
const (
	DefaultQueueRecords   = 200_000
	DefaultMaxBatch       = 20_000
	DefaultCommitInterval = time.Second
	DefaultRetryMin       = 500 * time.Millisecond
	DefaultRetryMax       = 30 * time.Second
	DefaultFlushTimeout   = 30 * time.Second
)

// Config configures one Sink.
type Config struct {
	// Name labels the metrics and logs ("clickhouse", "jsonl", ...).
	Name   string
	Writer Writer
	// QueueRecords bounds the records held, including the batch being
	// retried; past it new records are dropped and counted.
	QueueRecords int
	// MaxBatch is the most records in one Write; CommitInterval is the
	// longest a record waits for its batch to fill.
	MaxBatch       int
	CommitInterval time.Duration
	// RetryMin and RetryMax bound the exponential backoff after a failure.
	RetryMin, RetryMax time.Duration
	// FlushTimeout bounds how long Run keeps delivering after its context
	// ends; what is left then is counted as dropped.
	FlushTimeout time.Duration
	Metrics      *Metrics
}

func (c *Config) setDefaults() {
	if c.QueueRecords == 0 {
		c.QueueRecords = DefaultQueueRecords
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.CommitInterval, DefaultCommitInterval)
	def(&c.RetryMin, DefaultRetryMin)
	def(&c.RetryMax, DefaultRetryMax)
	def(&c.FlushTimeout, DefaultFlushTimeout)
}

// Validate reports the first invalid field after defaults are applied.
func (c Config) Validate() error {
	c.setDefaults()
	switch {
	case c.Name == "":
		return errors.New("name: must be set")
	case c.Writer == nil:
		return errors.New("writer: must be set")
	case c.QueueRecords < 0:
		return fmt.Errorf("queueRecords: must be positive, got %d", c.QueueRecords)
	case c.MaxBatch < 0:
		return fmt.Errorf("maxBatch: must be positive, got %d", c.MaxBatch)
	case c.MaxBatch > c.QueueRecords:
		return fmt.Errorf("maxBatch: %d exceeds queueRecords %d", c.MaxBatch, c.QueueRecords)
	case c.CommitInterval < 0:
		return fmt.Errorf("commitInterval: must be positive, got %s", c.CommitInterval)
	case c.RetryMin < 0 || c.RetryMax < c.RetryMin:
		return fmt.Errorf("retryMin/retryMax: need 0 < retryMin <= retryMax, got %s/%s", c.RetryMin, c.RetryMax)
	case c.FlushTimeout < 0:
		return fmt.Errorf("flushTimeout: must be positive, got %s", c.FlushTimeout)
	}
	return nil
}

// Sink queues records for one Writer. Put may be called from any
// goroutine; Run owns delivery.
type Sink struct {
	cfg Config
	m   sinkMetrics

	mu      sync.Mutex
	ring    []*correlate.Record
	head, n int
	wake    chan struct{}

	lastDropLog time.Time
	batchBase   uint64
	batchSeq    uint64
	// cur is the batch being delivered; it survives an interrupted
	// deliver so its retry keeps its id.
	cur *Batch
	buf []*correlate.Record
}

// New validates cfg and returns a Sink; call Run to deliver.
func New(cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sink config: %w", err)
	}
	cfg.setDefaults()
	if cfg.Metrics == nil {
		m, err := NewMetrics(nil)
		if err != nil {
			return nil, err
		}
		cfg.Metrics = m
	}
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("seed batch ids: %w", err)
	}
	return &Sink{
		cfg:  cfg,
		m:    cfg.Metrics.forSink(cfg.Name),
		ring: make([]*correlate.Record, cfg.QueueRecords),
		wake: make(chan struct{}, 1),
		// The high bits are random so batch ids of a restarted aggregator
		// do not repeat those of its previous run.
		batchBase: binary.LittleEndian.Uint64(seed[:]) &^ 0xffffffff,
	}, nil
}

// Put queues r. It never blocks: when the queue is full r is dropped,
// counted, and logged at most once per 10 s.
func (s *Sink) Put(r *correlate.Record) {
	s.mu.Lock()
	if s.n == len(s.ring) {
		now := time.Now()
		logIt := now.Sub(s.lastDropLog) > 10*time.Second
		if logIt {
			s.lastDropLog = now
		}
		s.mu.Unlock()
		s.m.dropFull.Inc()
		if logIt {
			klog.InfoS("Sink queue full; dropping records", "sink", s.cfg.Name, "queueRecords", len(s.ring))
		}
		return
	}
	s.ring[(s.head+s.n)%len(s.ring)] = r
	s.n++
	full := s.n >= s.cfg.MaxBatch
	s.mu.Unlock()
	s.m.queued.Inc()
	if full {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Len is the number of records held.
func (s *Sink) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// peek copies up to max records from the front without removing them:
// they count against the bound until delivered.
func (s *Sink) peek(dst []*correlate.Record, limit int) []*correlate.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := min(s.n, limit)
	for i := 0; i < k; i++ {
		dst = append(dst, s.ring[(s.head+i)%len(s.ring)])
	}
	return dst
}

func (s *Sink) release(k int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < k; i++ {
		s.ring[(s.head+i)%len(s.ring)] = nil
	}
	s.head = (s.head + k) % len(s.ring)
	s.n -= k
}

// Run delivers until ctx ends, then keeps delivering what is queued for up
// to FlushTimeout, drops (and counts) the rest and closes the Writer.
func (s *Sink) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return s.shutdown()
		case <-t.C:
		case <-s.wake:
		}
		s.m.queueLen.Set(float64(s.Len()))
		for {
			// Deliver full batches back to back; a partial one waits for
			// the next tick so inserts stay large.
			if !s.deliver(ctx) || s.Len() < s.cfg.MaxBatch {
				break
			}
		}
	}
}

func (s *Sink) shutdown() error {
	fctx, cancel := context.WithTimeout(context.Background(), s.cfg.FlushTimeout)
	defer cancel()
	for s.Len() > 0 && fctx.Err() == nil {
		s.deliver(fctx)
	}
	if left := s.Len(); left > 0 {
		s.m.dropShutdown.Add(float64(left))
		klog.ErrorS(nil, "Sink stopped with undelivered records", "sink", s.cfg.Name, "dropped", left, "flushTimeout", s.cfg.FlushTimeout)
		s.release(left)
	}
	s.m.queueLen.Set(0)
	if err := s.cfg.Writer.Close(); err != nil {
		return fmt.Errorf("close %s sink: %w", s.cfg.Name, err)
	}
	return nil
}

// deliver writes one batch from the front of the queue, retrying with
// backoff until it is delivered or ctx ends. It reports whether the batch
// was fully delivered.
func (s *Sink) deliver(ctx context.Context) bool {
	b := s.cur
	if b == nil {
		s.buf = s.peek(s.buf[:0], s.cfg.MaxBatch)
		if len(s.buf) == 0 {
			return false
		}
		s.batchSeq++
		b = &Batch{ID: s.batchBase | (s.batchSeq & 0xffffffff), Records: s.buf}
		s.cur = b
	}
	backoff := s.cfg.RetryMin
	for {
		start := time.Now()
		n, err := s.cfg.Writer.Write(ctx, b)
		s.m.latency.Observe(time.Since(start).Seconds())
		n = max(0, min(n, len(b.Records)))
		if n > 0 {
			s.release(n)
			s.m.written.Add(float64(n))
			b.Records = b.Records[n:]
		}
		s.m.queueLen.Set(float64(s.Len()))
		if err == nil && len(b.Records) == 0 {
			s.cur = nil
			return true
		}
		if err == nil {
			err = fmt.Errorf("writer delivered %d of %d records without an error", n, n+len(b.Records))
		}
		s.m.errors.Inc()
		if b.Attempt == 0 || b.Attempt%10 == 0 {
			klog.ErrorS(err, "Sink write failed; will retry", "sink", s.cfg.Name, "records", len(b.Records), "attempt", b.Attempt+1, "backoff", backoff)
		}
		b.Attempt++
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		s.m.retries.Inc()
		backoff = min(backoff*2, s.cfg.RetryMax)
	}
}

// Fanout hands each record to several sinks.
type Fanout []*Sink

// Put queues r on every sink; r is shared and must not be modified after.
func (f Fanout) Put(r *correlate.Record) {
	for _, s := range f {
		s.Put(r)
	}
}
