// Package sink delivers aggregated records to their destinations
// (ClickHouse, JSON lines, IPFIX) without silent loss: each destination has
// its own bounded queue, batches by size and commit interval, and retries a
// failed batch with exponential backoff. A full queue makes Put wait, which
// slows the correlator and through it the collectors and (TCP) the agents;
// only after MaxBlock of waiting are records dropped, and counted. A batch
// its destination can never take (a permanent error, such as a table
// column of another type) is parked in a bounded JSON lines spool file
// instead of blocking everything behind it. Destinations implement Writer
// in subpackages; the output columns are defined once, in Columns.
package sink

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
// retried, unless the error is Permanent: then the rest is parked.
// A Writer must only report as written what it delivered.
type Writer interface {
	Write(ctx context.Context, b *Batch) (n int, err error)
	Close() error
}

// PermanentError marks a write error that retrying the same records cannot
// fix (the destination rejects them as they are).
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err as a PermanentError (nil stays nil).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err, or an error it wraps, is permanent.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// Defaults for Config fields left zero.
const (
	DefaultQueueRecords   = 200_000
	DefaultMaxBatch       = 20_000
	DefaultCommitInterval = time.Second
	DefaultRetryMin       = 500 * time.Millisecond
	DefaultRetryMax       = 30 * time.Second
	DefaultFlushTimeout   = 30 * time.Second
	DefaultMaxBlock       = 10 * time.Second
	DefaultUnhealthyAfter = time.Minute
)

// Config configures one Sink.
type Config struct {
	// Name labels the metrics and logs ("clickhouse", "jsonl", ...).
	Name   string
	Writer Writer
	// QueueRecords bounds the records held, including the batch being
	// retried; a Put on a full queue waits for room.
	QueueRecords int
	// MaxBatch is the most records in one Write; CommitInterval is the
	// longest a record waits for its batch to fill.
	MaxBatch       int
	CommitInterval time.Duration
	// RetryMin and RetryMax bound the exponential backoff after a failure.
	RetryMin, RetryMax time.Duration
	// FlushTimeout bounds how long Run keeps delivering after its context
	// ends; what is left then is parked in the spool, or dropped and
	// counted without one.
	FlushTimeout time.Duration
	// MaxBlock is how long the queue may stay full while Put waits for
	// room; past it Put drops (and counts) until the queue has room again.
	MaxBlock time.Duration
	// UnhealthyAfter is how long writes may keep failing (retryable
	// errors) before Healthy reports it; a permanent error is reported at
	// once.
	UnhealthyAfter time.Duration
	// Spool, when its Path is set, keeps the records of batches that
	// failed permanently (and those left at shutdown).
	Spool SpoolConfig
	// LeaveForReplay is set when a write-ahead log replays, at the next
	// start, whatever this sink did not write: records left at shutdown
	// are then neither parked nor dropped (parking them too would store
	// them twice), only counted as left_for_replay.
	LeaveForReplay bool
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
	def(&c.MaxBlock, DefaultMaxBlock)
	def(&c.UnhealthyAfter, DefaultUnhealthyAfter)
	if c.Spool.MaxBytes == 0 {
		c.Spool.MaxBytes = DefaultSpoolMaxBytes
	}
	if c.Spool.FileMode == 0 {
		c.Spool.FileMode = DefaultFileMode
	}
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
	case c.MaxBlock < 0:
		return fmt.Errorf("maxBlock: must be positive, got %s", c.MaxBlock)
	case c.UnhealthyAfter < 0:
		return fmt.Errorf("unhealthyAfter: must be positive, got %s", c.UnhealthyAfter)
	}
	if err := c.Spool.validate(); err != nil {
		return fmt.Errorf("spool.%w", err)
	}
	return nil
}

// Sink queues records for one Writer. Put may be called from any
// goroutine; Run owns delivery.
type Sink struct {
	cfg   Config
	m     *metrics
	spool *spool

	mu      sync.Mutex
	ring    []*correlate.Record
	head, n int
	wake    chan struct{}
	// space is closed (and replaced) when records leave a full queue, to
	// wake the Puts waiting for room; waiters counts them.
	space   chan struct{}
	waiters int
	// fullSince is when a Put first found the queue full; it is reset
	// when room is made, so a sink that keeps draining never drops.
	fullSince time.Time
	closed    bool

	lastDropLog time.Time

	hmu          sync.Mutex
	failingSince time.Time
	lastErr      error
	permSince    time.Time
	permErr      error

	batchBase uint64
	batchSeq  uint64
	// cur is the batch being delivered; it survives an interrupted
	// deliver so its retry keeps its id.
	cur *Batch
	buf []*correlate.Record
}

// New validates cfg and returns a Sink; call Run to deliver. Its metrics
// carry the label sink=cfg.Name and are registered on reg (nil: counted
// only).
func New(cfg Config, reg prometheus.Registerer) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sink config: %w", err)
	}
	cfg.setDefaults()
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("seed batch ids: %w", err)
	}
	s := &Sink{
		cfg:   cfg,
		ring:  make([]*correlate.Record, cfg.QueueRecords),
		wake:  make(chan struct{}, 1),
		space: make(chan struct{}),
		// The high bits are random so batch ids of a restarted aggregator
		// do not repeat those of its previous run.
		batchBase: binary.LittleEndian.Uint64(seed[:]) &^ 0xffffffff,
	}
	if cfg.Spool.Path != "" {
		s.spool = &spool{cfg: cfg.Spool}
	}
	m, err := newMetrics(cfg.Name, reg, s.healthy)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

// Put queues r. On a full queue it waits for room; once the queue has been
// full for MaxBlock it drops r (and every record after, until room is
// made), counts and logs it at most once per 10 s. A closed sink drops
// at once.
func (s *Sink) Put(r *correlate.Record) {
	var (
		timer        *time.Timer
		blockedSince time.Time
	)
	s.mu.Lock()
	for s.n == len(s.ring) && !s.closed {
		now := time.Now()
		if s.fullSince.IsZero() {
			s.fullSince = now
		}
		wait := s.cfg.MaxBlock - now.Sub(s.fullSince)
		if wait <= 0 {
			break
		}
		if blockedSince.IsZero() {
			blockedSince = now
		}
		space := s.space
		s.waiters++
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-space:
			timer.Stop()
		case <-timer.C:
		}
		s.mu.Lock()
		s.waiters--
	}
	if !blockedSince.IsZero() {
		s.m.blocked.Add(time.Since(blockedSince).Seconds())
	}
	if s.closed || s.n == len(s.ring) {
		s.dropLocked()
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

// dropLocked counts a record Put could not queue; it unlocks s.mu.
func (s *Sink) dropLocked() {
	closed := s.closed
	now := time.Now()
	logIt := now.Sub(s.lastDropLog) > 10*time.Second
	if logIt {
		s.lastDropLog = now
	}
	s.mu.Unlock()
	if closed {
		s.m.dropped[dropShutdown].Inc()
		if logIt {
			klog.ErrorS(nil, "Sink already stopped; dropping records", "sink", s.cfg.Name)
		}
		return
	}
	s.m.dropped[dropBlocked].Inc()
	if logIt {
		klog.ErrorS(nil, "Sink queue full for longer than maxBlock; dropping records", "sink", s.cfg.Name,
			"queueRecords", len(s.ring), "maxBlock", s.cfg.MaxBlock)
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
	if k > 0 {
		s.fullSince = time.Time{}
		if s.waiters > 0 {
			close(s.space)
			s.space = make(chan struct{})
		}
	}
}

// Run delivers until ctx ends, then keeps delivering what is queued for up
// to FlushTimeout, parks (or drops, counted) the rest and closes the
// Writer.
func (s *Sink) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.CommitInterval)
	defer t.Stop()
	// A write in flight when ctx ends is not cut off: the server may still
	// store a cancelled insert after the retry has looked the batch up and
	// found nothing, and the batch would be stored twice. It may run until
	// the flush deadline, as the shutdown's own writes do.
	writeCtx, cancelWrites := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWrites()
	stopAfter := context.AfterFunc(ctx, func() { time.AfterFunc(s.cfg.FlushTimeout, cancelWrites) })
	defer stopAfter()
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
			if !s.deliver(ctx, writeCtx) || s.Len() < s.cfg.MaxBatch {
				break
			}
		}
	}
}

func (s *Sink) shutdown() error {
	fctx, cancel := context.WithTimeout(context.Background(), s.cfg.FlushTimeout)
	defer cancel()
	for s.Len() > 0 && fctx.Err() == nil {
		s.deliver(fctx, fctx)
	}
	if left := s.Len(); left > 0 {
		klog.ErrorS(nil, "Sink stopped with undelivered records", "sink", s.cfg.Name, "records", left,
			"flushTimeout", s.cfg.FlushTimeout, "spool", s.cfg.Spool.Path)
		id := s.batchBase | ((s.batchSeq + 1) & 0xffffffff)
		if s.cur != nil {
			id = s.cur.ID
		}
		if s.cfg.LeaveForReplay {
			s.m.leftForReplay.Add(float64(left))
		} else {
			s.park(s.peek(nil, left), id, dropShutdown)
		}
		s.release(left)
		s.cur = nil
	}
	s.mu.Lock()
	s.closed = true
	if s.waiters > 0 {
		close(s.space)
		s.space = make(chan struct{})
	}
	s.mu.Unlock()
	s.m.queueLen.Set(0)
	var errs []error
	if s.spool != nil {
		if err := s.spool.close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s sink spool: %w", s.cfg.Name, err))
		}
	}
	if err := s.cfg.Writer.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close %s sink: %w", s.cfg.Name, err))
	}
	return errors.Join(errs...)
}

// deliver writes one batch from the front of the queue, retrying with
// backoff until it is delivered, fails permanently (then the rest is
// parked) or ctx ends. Writes run under writeCtx, which may outlive ctx.
// It reports whether the batch is done with.
func (s *Sink) deliver(ctx, writeCtx context.Context) bool {
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
		n, err := s.cfg.Writer.Write(writeCtx, b)
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
			s.setHealth(nil)
			return true
		}
		if err == nil {
			err = fmt.Errorf("writer delivered %d of %d records without an error", n, n+len(b.Records))
		}
		s.m.errors.Inc()
		if IsPermanent(err) {
			s.m.permanent.Inc()
			s.setHealth(err)
			klog.ErrorS(err, "Sink write failed permanently; parking the batch", "sink", s.cfg.Name,
				"records", len(b.Records), "batchId", b.ID, "spool", s.cfg.Spool.Path)
			s.park(b.Records, b.ID, dropPermanent)
			s.release(len(b.Records))
			s.cur = nil
			s.m.queueLen.Set(float64(s.Len()))
			return true
		}
		s.setHealth(err)
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

// park keeps records the destination did not take in the spool; without
// one, or when it is full or fails, they are dropped and counted under
// reason.
func (s *Sink) park(rs []*correlate.Record, batchID uint64, reason dropReason) {
	if len(rs) == 0 {
		return
	}
	if s.spool == nil {
		s.m.dropped[reason].Add(float64(len(rs)))
		klog.ErrorS(nil, "No spool configured; dropping undeliverable records", "sink", s.cfg.Name, "records", len(rs), "reason", reason)
		return
	}
	n, err := s.spool.write(rs, batchID)
	s.m.parked.Add(float64(n))
	lost := len(rs) - n
	if lost > 0 {
		r := dropSpoolFull
		if !errors.Is(err, errSpoolFull) {
			r = dropSpoolError
		}
		s.m.dropped[r].Add(float64(lost))
	}
	if err != nil {
		klog.ErrorS(err, "Spool cannot take every undeliverable record", "sink", s.cfg.Name,
			"spool", s.cfg.Spool.Path, "parked", n, "dropped", lost)
	}
}

// setHealth records the outcome of a write: nil for delivered.
func (s *Sink) setHealth(err error) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	now := time.Now()
	switch {
	case err == nil:
		s.failingSince, s.lastErr, s.permSince, s.permErr = time.Time{}, nil, time.Time{}, nil
	case IsPermanent(err):
		if s.permErr == nil {
			s.permSince = now
		}
		s.permErr = err
		if s.failingSince.IsZero() {
			s.failingSince = now
		}
		s.lastErr = err
	default:
		if s.failingSince.IsZero() {
			s.failingSince = now
		}
		s.lastErr = err
	}
}

// FailingSince is when writes started failing without a success since
// (zero while they succeed).
func (s *Sink) FailingSince() time.Time {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	return s.failingSince
}

// Healthy reports why the sink is not delivering: a permanent write error
// since the last successful write, writes failing for UnhealthyAfter, or
// a queue full for MaxBlock (records being dropped). Nil while it
// delivers. For readiness and alerting: a restart would not help with
// any of these and loses the queue.
func (s *Sink) Healthy() error {
	now := time.Now()
	s.hmu.Lock()
	permErr, permSince := s.permErr, s.permSince
	lastErr, failingSince := s.lastErr, s.failingSince
	s.hmu.Unlock()
	if permErr != nil {
		where := "dropping them (no spool)"
		if s.spool != nil {
			where = fmt.Sprintf("parking them in %q", s.cfg.Spool.Path)
		}
		return fmt.Errorf("sink %s: destination rejects records since %s, %s: %w",
			s.cfg.Name, permSince.UTC().Format(time.RFC3339), where, permErr)
	}
	if !failingSince.IsZero() && now.Sub(failingSince) >= s.cfg.UnhealthyAfter {
		return fmt.Errorf("sink %s: writes failing since %s: %w", s.cfg.Name, failingSince.UTC().Format(time.RFC3339), lastErr)
	}
	s.mu.Lock()
	fullSince, closed := s.fullSince, s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("sink %s: stopped", s.cfg.Name)
	}
	if !fullSince.IsZero() && now.Sub(fullSince) >= s.cfg.MaxBlock {
		return fmt.Errorf("sink %s: queue full since %s, dropping records", s.cfg.Name, fullSince.UTC().Format(time.RFC3339))
	}
	return nil
}

func (s *Sink) healthy() float64 {
	if s.Healthy() != nil {
		return 0
	}
	return 1
}

// Destination is one member of a Fanout: a Sink, or several sinks that
// share the records between them (each to one, such as the shards of a
// ClickHouse cluster).
type Destination interface {
	Put(r *correlate.Record)
	Run(ctx context.Context) error
	Healthy() error
}

var _ Destination = (*Sink)(nil)

// Fanout hands each record to several destinations.
type Fanout []Destination

// Put queues r on every sink; r is shared and must not be modified after.
func (f Fanout) Put(r *correlate.Record) {
	for _, s := range f {
		s.Put(r)
	}
}

// Healthy joins the sinks' Healthy errors.
func (f Fanout) Healthy() error {
	var errs []error
	for _, s := range f {
		if err := s.Healthy(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DefaultFileMode is the mode of files the sinks create: rows hold URLs,
// hosts and pod names, readable by their owner only.
const DefaultFileMode os.FileMode = 0o600
