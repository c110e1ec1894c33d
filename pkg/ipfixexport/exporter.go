// Package ipfixexport sends flow records to an IPFIX collector (RFC 7011)
// over TCP, UDP or TLS, with the templates Antrea's Flow Aggregator reads
// (plus, when Config.L7DetailElements is set, the DNS/TLS detail and
// workload IEs, and when Config.HealthElements is, the health and
// destination-name IEs).
//
// Export copies a record into a bounded buffer and returns at once; Run owns
// the connection, batches records into messages up to the size limit, and
// reconnects with backoff when the collector goes away, keeping records in
// the buffer meanwhile. The buffer holds no pointers, so the garbage
// collector never scans it: each record's fixed part (208 bytes today) in
// a slot, its strings in a byte arena of 128 bytes per slot that doubles
// as long strings (L7 fields) need, up to 1 KiB per slot (see
// recordBuffer). BenchmarkBufferCost: 344 bytes per buffered Kubernetes
// record, against 608 for the flow.Record ring it replaced, and a full
// collection with 100k records buffered no slower than without them.
//
// What is guaranteed when the collector goes away (TCP and TLS, Linux):
//   - The exporter notices at once when the collector closes or resets the
//     connection (a reader goroutine sees EOF/RST), within WriteTimeout
//     when it stops reading, and within WriteTimeout of unacknowledged data
//     when its host vanished (packets dropped, no RST): the socket carries
//     TCP_USER_TIMEOUT = WriteTimeout, without which writes would go on
//     filling the send buffer for minutes. Records exported meanwhile wait in the buffer
//     (BufferRecords) and are sent after reconnecting, templates first.
//     A full buffer refuses further records (Export returns false: see
//     below) until the collector has been unreachable, or no record has
//     left the buffer, for BackpressureTimeout; from then on records
//     beyond the bound are dropped and counted (buffer_full).
//   - Messages already written to the failed connection are kept until the
//     collector's kernel acknowledges them (TCP_INFO bytes_acked); whatever
//     it had not acknowledged is sent again on the next connection, so the
//     kernel-buffer window does not lose data, and nothing acknowledged is
//     sent twice.
//   - A collector that closes its side first and reads until the exporter's
//     EOF (ipfixcollect does, on shutdown) receives everything.
//   - Not covered: data a collector acknowledged but had not read when it
//     crashed is lost; a collector that stops acknowledging for DrainTimeout
//     and then reads segments already on the wire before the abort reaches
//     it may see those records twice. Elsewhere than Linux, delivery of what
//     was written before a failure is at most once.
//   - Records still buffered when Run returns are dropped and counted
//     (shutdown).
//
// # Backpressure
//
// Export answers one of two things. Taken (true): the exporter owns the
// record from then on; it sends it, or it dropped it and counted the drop
// (buffer_full: the buffer is full and either the collector has been
// unreachable for at least BackpressureTimeout, or since the exporter was
// created without ever connecting, or no record has left the buffer for
// BackpressureTimeout since it first refused one; shutdown: Run
// returned). Refused (false): the buffer is full and the exporter is
// making progress (records leave the buffer: a connected collector slower
// than the producer) or has been unable to for less than
// BackpressureTimeout; nothing was kept and nothing counted as lost, and
// the caller, which still owns the record, offers it again later.
//
// The invariant: a record is refused only while records leave the buffer,
// or for less than BackpressureTimeout since they stopped (or since the
// collector became unreachable). Being connected is not progress: a
// collector whose process hangs while its kernel completes every
// reconnect (listen backlog) looks connected between write timeouts but
// takes nothing, and is dropped after the timeout like one that is gone.
// A producer offering one record again and again is thus refused for at
// most BackpressureTimeout; RefusalBound adds WriteTimeout for producers
// that compete for the slots freed. The agent's connection store already holds
// every connection, so refusing delays records instead of dropping them;
// the timeout bounds how long the producer is held back by a collector that
// is gone, after which the buffer behaves as the bounded buffer above.
// Accepts tells, without side effects, whether Export would take a record
// now, so that a caller can skip work (enrichment) that a refusal would
// waste.
//
// Over UDP delivery is best effort: datagrams sent before the exporter
// learns (ICMP) that the collector is down are lost. Templates are resent
// every TemplateRefreshMessages data messages or TemplateRefreshInterval,
// whichever comes first, so a collector that restarts decodes again soon.
package ipfixexport

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixie"
)

// Template ids of the flow-record templates.
const (
	TemplateIDv4 uint16 = 256
	TemplateIDv6 uint16 = 257
)

const (
	ipfixVersion   = 10
	templateSetID  = 2
	setHeaderLen   = 4
	bufferSlack    = 4096 // room for the record that overflows a message before it is rolled back
	maxFreeBuffers = 64
)

// Exporter sends flow records to one collector.
type Exporter struct {
	cfg     Config
	maxMsg  int
	tmpl    [2]*ipfixie.Template // IPv4, IPv6
	tmplMsg [][]byte             // template sets, one message body each
	tlsConf *tls.Config
	m       *metrics
	running atomic.Bool
	// downSince is when the exporter last lost, or began trying to get, its
	// connection (UnixNano); 0 while connected. See DownSince.
	downSince atomic.Int64
	// unsentAtStop is what dropRemaining dropped. See UnsentAtStop.
	unsentAtStop atomic.Int64

	mu  sync.Mutex
	buf recordBuffer
	// stalledSince is when Export or Accepts first found the buffer full
	// since a record last left it (UnixNano); 0 when none did. A full
	// buffer refuses only while this is younger than BackpressureTimeout:
	// the clock the connection state cannot reset (a hung collector
	// accepts every reconnect, so downSince alone never ages).
	stalledSince int64
	// stallLoggedAt is when a stall was last logged (UnixNano), so that a
	// collector that trickles never floods the log.
	stallLoggedAt int64
	// scratch is the record being encoded, its strings in buf's arena.
	scratch flow.Record
	wakeAt  int
	wake    chan struct{}
	flush   chan struct{}
	// stopped is set when Run returned: nothing would send later records.
	stopped bool

	// Owned by the Run goroutine.
	pending []*message  // written to a failed connection, not acknowledged: sent first
	open    [2]*message // data messages being filled, per address family
	ready   []*message  // filled messages about to be written
	free    []*message
}

// message is one encoded IPFIX message. end is the connection's byte count
// once it was written, so the kernel's acknowledged count says whether the
// collector received it.
type message struct {
	b    []byte
	nrec int
	end  uint64
}

// New validates cfg and builds an exporter; Run starts sending. Metrics are
// registered on reg when it is not nil.
func New(cfg Config, reg prometheus.Registerer) (*Exporter, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("ipfixexport config: %w", err)
	}
	cfg = cfg.withDefaults()
	maxMsg, err := cfg.messageLimit()
	if err != nil {
		return nil, fmt.Errorf("ipfixexport config: %w", err)
	}
	v4, v6, err := ipfixie.NewFlowTemplates(ipfixie.TemplateOptions{
		IDv4: TemplateIDv4, IDv6: TemplateIDv6, L7Details: cfg.L7DetailElements, Health: cfg.HealthElements,
	})
	if err != nil {
		return nil, fmt.Errorf("ipfixexport templates: %w", err)
	}
	lay, err := newRecordLayout()
	if err != nil {
		return nil, fmt.Errorf("ipfixexport buffer: %w", err)
	}
	e := &Exporter{
		cfg:    cfg,
		maxMsg: maxMsg,
		tmpl:   [2]*ipfixie.Template{v4, v6},
		buf:    newRecordBuffer(lay, cfg.BufferRecords),
		wake:   make(chan struct{}, 1),
		flush:  make(chan struct{}, 1),
	}
	e.downSince.Store(time.Now().UnixNano())
	if e.tmplMsg, err = templateMessages(maxMsg, v4, v6); err != nil {
		return nil, fmt.Errorf("ipfixexport config: %w", err)
	}
	// Wake the sender once about a message's worth of the smallest records
	// waits, so full messages go out without waiting for the flush tick.
	e.wakeAt = max(1, min(cfg.BufferRecords/2, (maxMsg-ipfixHeaderLen)/len(v4.AppendData(nil, &flow.Record{}))))
	if cfg.Transport == TLS {
		if e.tlsConf, err = clientTLS(cfg); err != nil {
			return nil, fmt.Errorf("ipfixexport tls: %w", err)
		}
	}
	if e.m, err = newMetrics(reg, e.buffered); err != nil {
		return nil, err
	}
	return e, nil
}

// templateMessages builds one message body per template: go-ipfix's
// collector, and so Antrea's Flow Aggregator, reads one set per message and
// one record per template set.
func templateMessages(maxMsg int, ts ...*ipfixie.Template) ([][]byte, error) {
	var msgs [][]byte
	for _, t := range ts {
		rec := t.AppendTemplateRecord(nil)
		if ipfixHeaderLen+setHeaderLen+len(rec) > maxMsg {
			return nil, fmt.Errorf("MaxMessageSize %d: smaller than template %d (%d bytes)", maxMsg, t.ID, ipfixHeaderLen+setHeaderLen+len(rec))
		}
		b := binary.BigEndian.AppendUint16(nil, templateSetID)
		b = binary.BigEndian.AppendUint16(b, uint16(setHeaderLen+len(rec)))
		msgs = append(msgs, append(b, rec...))
	}
	return msgs, nil
}

// MaxMessageSize is the largest message this exporter sends.
func (e *Exporter) MaxMessageSize() int { return e.maxMsg }

// Export queues a copy of r and returns without waiting for the network; r
// may be reused once it returns. It may be called before Run starts. It
// reports whether it took the record (queued it, or dropped and counted it)
// or refused it, the buffer being full: see Backpressure in the package
// documentation.
func (e *Exporter) Export(r *flow.Record) bool {
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		e.m.dropShutdown.Inc()
		return true
	}
	need := e.buf.stringBytes(r)
	if need > e.maxMsg {
		// Its strings alone exceed a message: it can never be sent.
		e.mu.Unlock()
		e.m.dropTooLarge.Inc()
		klog.V(2).InfoS("IPFIX record larger than the message size limit, dropped", "tuple", r.Tuple.String(), "limit", e.maxMsg)
		return true
	}
	if !e.buf.fits(need) {
		drop := e.droppingLocked(time.Now().UnixNano())
		e.mu.Unlock()
		if !drop {
			e.m.refused.Inc()
			return false
		}
		e.m.dropBufferFull.Inc()
		return true
	}
	e.buf.push(r)
	full := e.buf.n == e.wakeAt
	e.mu.Unlock()
	if full {
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// Accepts reports whether Export would take a record now (queue it, or
// drop and count it) rather than refuse it. Only Export adds records, so an
// exporter fed by one goroutine that saw Accepts true takes that goroutine's
// next Export. It takes nothing, but a full buffer it sees starts the
// stall clock as a refusal does: a producer that only asks (the agent
// declines a due record Accepts refuses) must see the drop after
// BackpressureTimeout too.
func (e *Exporter) Accepts(r *flow.Record) bool {
	need := e.buf.stringBytes(r) // reads the layout only: no lock needed
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped || need > e.maxMsg || e.buf.fits(need) {
		return true
	}
	return e.droppingLocked(time.Now().UnixNano())
}

// droppingLocked reports, the buffer being full, whether it drops records
// instead of refusing them: the collector has been unreachable for
// BackpressureTimeout, or, connected or not, no record has left the buffer
// for BackpressureTimeout since it first refused one. The second makes
// the bound hold for a collector whose kernel accepts every connection
// but whose process reads nothing (hung, stopped): each reconnect would
// reset the first. A collector that is only slow keeps taking records
// (one leaves the buffer at least every WriteTimeout, or the connection
// fails), so with BackpressureTimeout above WriteTimeout it is refused,
// never dropped. e.mu held.
func (e *Exporter) droppingLocked(now int64) bool {
	if e.stalledSince == 0 {
		e.stalledSince = now
	}
	bound := int64(e.cfg.BackpressureTimeout)
	if stalled := now - e.stalledSince; stalled >= bound {
		if now-e.stallLoggedAt >= int64(outageLogInterval) {
			e.stallLoggedAt = now
			klog.InfoS("IPFIX buffer full and no record sent for the backpressure timeout; records beyond the buffer are dropped "+
				"(counted in flowlens_ipfix_exporter_records_dropped_total{reason=\"buffer_full\"}) until the collector takes records again",
				"address", e.cfg.Address, "stalledFor", time.Duration(stalled).Round(time.Millisecond),
				"connected", e.downSince.Load() == 0, "backpressureTimeout", e.cfg.BackpressureTimeout)
		}
		return true
	}
	down := e.downSince.Load()
	return down != 0 && now-down >= bound
}

// RefusalBound is the longest Export refuses one record that its producer
// offers again and again: the stall clock drops after BackpressureTimeout,
// plus WriteTimeout for another producer (a sharded sink moving records)
// taking the slots freed meanwhile. The agent stops waiting for a refused
// record after it.
func (e *Exporter) RefusalBound() time.Duration {
	return e.cfg.BackpressureTimeout + e.cfg.WriteTimeout
}

// Flush asks Run to send everything buffered now rather than at the next
// flush tick. It does not wait.
func (e *Exporter) Flush() {
	select {
	case e.flush <- struct{}{}:
	default:
	}
}

func (e *Exporter) buffered() float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return float64(e.buf.n)
}

// Run connects to the collector and sends records until ctx ends, then
// sends what is buffered (when connected), closes the connection and
// returns. It returns an error only when called twice.
func (e *Exporter) Run(ctx context.Context) error {
	if !e.running.CompareAndSwap(false, true) {
		return errors.New("ipfixexport: Run called twice")
	}
	defer e.dropRemaining()
	flushTick := time.NewTicker(e.cfg.FlushInterval)
	defer flushTick.Stop()
	backoff := e.cfg.ReconnectMin
	var reach reachability
	everConnected := false
	for {
		c, err := e.dial(ctx)
		if err == nil {
			switch failures, downFor, logIt := reach.connected(time.Now()); {
			case logIt:
				klog.InfoS("Connected to IPFIX collector again", "address", e.cfg.Address, "transport", e.cfg.Transport,
					"failedAttempts", failures, "unreachableFor", downFor.Round(time.Millisecond))
			case !everConnected:
				klog.InfoS("Connected to IPFIX collector", "address", e.cfg.Address, "transport", e.cfg.Transport)
			default:
				klog.V(2).InfoS("Connected to IPFIX collector", "address", e.cfg.Address, "transport", e.cfg.Transport)
			}
			everConnected = true
			e.m.connected.Set(1)
			e.downSince.Store(0)
			start := time.Now()
			e.serve(ctx, c, flushTick.C)
			e.m.connected.Set(0)
			e.downSince.Store(time.Now().UnixNano())
			// A connection that lasted restarts the backoff; one the
			// collector drops at once keeps it growing.
			if time.Since(start) >= backoff {
				backoff = e.cfg.ReconnectMin
			}
		} else if ctx.Err() == nil {
			e.m.errDial.Inc()
			if reach.failed(time.Now()) {
				klog.ErrorS(err, "Cannot connect to IPFIX collector; records are buffered and the connection retried "+
					"(attempts counted in flowlens_ipfix_exporter_connection_errors_total{stage=\"dial\"}, logged with -v=2)",
					"address", e.cfg.Address, "transport", e.cfg.Transport, "retryIn", backoff)
			} else {
				klog.V(2).InfoS("Cannot connect to IPFIX collector", "address", e.cfg.Address, "err", err, "retryIn", backoff)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, e.cfg.ReconnectMax)
	}
}

// dropRemaining accounts for what could not be sent before Run returned.
func (e *Exporter) dropRemaining() {
	n := 0
	for _, m := range append(e.pending, e.open[:]...) {
		if m != nil {
			n += m.nrec
		}
	}
	e.pending, e.open = nil, [2]*message{}
	e.mu.Lock()
	n += e.buf.n
	e.buf.reset()
	e.stopped = true
	e.mu.Unlock()
	e.unsentAtStop.Store(int64(n))
	if n > 0 {
		e.m.dropShutdown.Add(float64(n))
		klog.InfoS("IPFIX records not sent at shutdown", "records", n)
	}
}

// serve sends on c until c fails or ctx ends, then tears c down.
func (e *Exporter) serve(ctx context.Context, c *conn, flushTick <-chan time.Time) {
	var refresh <-chan time.Time
	if e.cfg.Transport == UDP {
		c.refresh = time.NewTimer(e.cfg.TemplateRefreshInterval)
		defer c.refresh.Stop()
		refresh = c.refresh.C
	}
	ok := e.sendTemplates(c) && e.sendPending(c) && e.drain(c, true)
	for ok {
		select {
		case <-ctx.Done():
			e.drain(c, true)
			e.teardown(c, true)
			return
		case <-c.dead:
			ok = false
		case <-e.wake:
			ok = e.drain(c, false)
		case <-e.flush:
			ok = e.drain(c, true)
		case <-flushTick:
			ok = e.drain(c, true)
		case <-refresh:
			ok = e.sendTemplates(c)
		}
	}
	select {
	case <-c.dead:
		// An orderly close (EOF) gets an orderly close back, so a collector
		// that reads until EOF receives everything written before.
		e.m.errPeerClose.Inc()
		klog.V(2).InfoS("IPFIX collector closed the connection", "address", e.cfg.Address, "err", c.readErr)
		e.teardown(c, errors.Is(c.readErr, errPeerEOF))
	default:
		e.teardown(c, false)
	}
}

func (e *Exporter) sendTemplates(c *conn) bool {
	for _, body := range e.tmplMsg {
		m := e.getMessage()
		m.b = append(m.b[:ipfixHeaderLen], body...)
		if !e.write(c, m) {
			e.putMessage(m)
			return false
		}
	}
	// Both refresh triggers count from the last time templates went out,
	// whichever sent them.
	c.sinceTemplates = 0
	if c.refresh != nil {
		c.refresh.Reset(e.cfg.TemplateRefreshInterval)
	}
	return true
}

// writeData writes a data message; over UDP, the templates go first when
// TemplateRefreshMessages data messages were sent since they last did.
func (e *Exporter) writeData(c *conn, m *message) bool {
	if c.refresh != nil && c.sinceTemplates >= e.cfg.TemplateRefreshMessages && !e.sendTemplates(c) {
		return false
	}
	if !e.write(c, m) {
		return false
	}
	c.sinceTemplates++
	return true
}

func (e *Exporter) sendPending(c *conn) bool {
	for len(e.pending) > 0 {
		if !e.writeData(c, e.pending[0]) {
			return false
		}
		e.pending = e.pending[1:]
	}
	e.pending = nil
	return true
}

// drain sends buffered records: with all, everything; otherwise only full
// messages, once a message's worth waits. It reports false when the
// connection failed.
func (e *Exporter) drain(c *conn, all bool) bool {
	for {
		e.ready = e.encode(all, e.ready[:0])
		if len(e.ready) == 0 {
			return true
		}
		for i, m := range e.ready {
			if !e.writeData(c, m) {
				e.pending = append(e.pending, e.ready[i:]...)
				clear(e.ready)
				return false
			}
		}
		clear(e.ready)
	}
}

// encode moves buffered records into the open message of their address
// family and appends the messages that filled up to ready; with all, the
// partly filled ones too. It returns as soon as one message is full, so
// Export waits at most one message's encoding (tens of microseconds) for
// the lock.
func (e *Exporter) encode(all bool, ready []*message) []*message {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !all && e.buf.n < e.wakeAt {
		return ready
	}
	r := &e.scratch
	for e.buf.n > 0 && len(ready) == 0 {
		e.buf.peek(r, false)
		fam := 0
		if !r.Tuple.IsIPv4() {
			fam = 1
		}
		m := e.open[fam]
		if m == nil {
			m = e.getMessage()
			m.b = binary.BigEndian.AppendUint16(m.b[:ipfixHeaderLen], e.tmpl[fam].ID)
			m.b = append(m.b, 0, 0)
			e.open[fam] = m
		}
		mark := len(m.b)
		m.b = e.tmpl[fam].AppendData(m.b, r)
		if len(m.b) > e.maxMsg {
			m.b = m.b[:mark]
			if m.nrec > 0 {
				// Full: the record goes into the next message.
				ready = append(ready, closeSet(m))
				e.open[fam] = nil
				continue
			}
			// Alone in a message and still too large: it can never be sent.
			e.m.dropTooLarge.Inc()
			klog.V(2).InfoS("IPFIX record larger than the message size limit, dropped", "tuple", r.Tuple.String(), "limit", e.maxMsg)
		} else {
			m.nrec++
		}
		e.buf.pop()
		e.stalledSince = 0 // progress: a refused record now finds room
	}
	// Its strings pointed into the arena.
	*r = flow.Record{}
	if all && e.buf.n == 0 {
		for fam, m := range e.open {
			if m != nil && m.nrec > 0 {
				ready = append(ready, closeSet(m))
				e.open[fam] = nil
			}
		}
	}
	return ready
}

// closeSet writes the data set's length into its header.
func closeSet(m *message) *message {
	binary.BigEndian.PutUint16(m.b[ipfixHeaderLen+2:], uint16(len(m.b)-ipfixHeaderLen))
	return m
}

func (e *Exporter) getMessage() *message {
	if n := len(e.free); n > 0 {
		m := e.free[n-1]
		e.free = e.free[:n-1]
		return m
	}
	return &message{b: make([]byte, ipfixHeaderLen, e.maxMsg+bufferSlack)}
}

func (e *Exporter) putMessage(m *message) {
	if len(e.free) >= maxFreeBuffers {
		return
	}
	m.b, m.nrec, m.end = m.b[:ipfixHeaderLen], 0, 0
	e.free = append(e.free, m)
}

// write sends m on c with a fresh header. On failure the caller keeps m for
// the next connection: a message cut short never reaches the collector's
// decoder, so sending it again cannot duplicate records.
func (e *Exporter) write(c *conn, m *message) bool {
	select {
	case <-c.dead:
		return false
	default:
	}
	h := m.b[:ipfixHeaderLen]
	binary.BigEndian.PutUint16(h[0:], ipfixVersion)
	binary.BigEndian.PutUint16(h[2:], uint16(len(m.b)))
	binary.BigEndian.PutUint32(h[4:], uint32(time.Now().Unix()))
	binary.BigEndian.PutUint32(h[8:], c.seq)
	binary.BigEndian.PutUint32(h[12:], e.cfg.ObservationDomainID)
	if err := c.nc.SetWriteDeadline(time.Now().Add(e.cfg.WriteTimeout)); err != nil {
		e.m.errWrite.Inc()
		e.m.resent.Add(float64(m.nrec))
		return false
	}
	if _, err := c.nc.Write(m.b); err != nil {
		e.m.errWrite.Inc()
		e.m.resent.Add(float64(m.nrec))
		klog.V(2).InfoS("Cannot write to IPFIX collector", "address", e.cfg.Address, "err", err)
		return false
	}
	c.seq += uint32(m.nrec)
	e.m.messagesSent.Inc()
	e.m.bytesSent.Add(float64(len(m.b)))
	e.m.recordsSent.Add(float64(m.nrec))
	if !c.tracked {
		e.putMessage(m)
		return true
	}
	m.end = c.written.Load()
	c.inflight = append(c.inflight, m)
	e.releaseAcked(c)
	return true
}

// releaseAcked recycles messages the collector's kernel acknowledged.
func (e *Exporter) releaseAcked(c *conn) {
	acked, _, ok := tcpAcked(c.tcp)
	if !ok {
		return
	}
	i := 0
	for ; i < len(c.inflight) && c.inflight[i].end <= acked; i++ {
		e.putMessage(c.inflight[i])
	}
	c.inflight = append(c.inflight[:0], c.inflight[i:]...)
}
