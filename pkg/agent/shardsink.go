package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/shard"
)

// ReplicaExporter is the exporter of one aggregator replica as the sharded
// sink drives it; *ipfixexport.Exporter implements it.
type ReplicaExporter interface {
	Sink
	// Accepts reports whether Export would take r now rather than refuse
	// it (its buffer full: backpressure).
	Accepts(r *flow.Record) bool
	Run(ctx context.Context) error
	// DownSince is when the exporter lost its connection (or was created,
	// if it never had one); zero while connected.
	DownSince() time.Time
	// TakeBuffered moves records not sent yet out of the exporter into dst,
	// up to cap(dst).
	TakeBuffered(dst []flow.Record) []flow.Record
	// UnsentAtStop is what Run dropped when it returned.
	UnsentAtStop() int
}

// exportOutput is where the agent's records go: one exporter, or the
// sharded sink; the agent runs it until the loop has exported everything.
type exportOutput interface {
	Sink
	Run(ctx context.Context) error
}

// Resolver resolves the collector DNS name; *net.Resolver implements it.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// ShardedSinkConfig configures a ShardedSink. Exactly one of Collectors and
// CollectorDNS is set.
type ShardedSinkConfig struct {
	// Collectors is a static list of replicas, "host:port" each.
	Collectors []string
	// CollectorDNS is "name:port"; every address the name resolves to is a
	// replica. It is resolved again every ResolveInterval.
	CollectorDNS    string
	ResolveInterval time.Duration
	// FailoverAfter is how long a replica may be unreachable before its
	// connections go to the others.
	FailoverAfter time.Duration
	// HoldRecords bounds the records kept while no replica is known (the
	// name has not resolved yet); beyond it they are dropped and counted.
	HoldRecords int
	// MaxReplicas bounds the replicas (0: agentconfig.MaxCollectors), since
	// each exporter allocates its own buffer. A longer Collectors list is
	// an error; of more addresses than that the DNS name resolves to, the
	// lowest MaxReplicas in sorted order are used, so that every agent
	// picks the same ones, and the others are ignored, logged and counted.
	MaxReplicas int
	// NewExporter builds the exporter of the replica at address, its
	// metrics registered on reg (nil: not registered). Required.
	NewExporter func(address string, reg prometheus.Registerer) (ReplicaExporter, error)
	// Resolver defaults to net.DefaultResolver; Clock to the system clock.
	Resolver Resolver
	Clock    Clock
}

// ShardedSink spreads the agent's records over several aggregator replicas,
// one exporter (IPFIX session, with its own bounded buffer and reconnects)
// each. A record goes to the replica that rendezvous hashing of its
// connection (shard.RecordKey: the same for both orientations, and for a
// source-NATed NodePort connection the same as the backend node's view)
// picks among the replicas in the ring, so both nodes that export an
// inter-node connection send it to the same replica without talking to
// each other.
//
// A replica unreachable for longer than FailoverAfter leaves the ring: only
// its share of the connections moves (HRW), and moves back when it is
// reachable again. Unreachable starts when its exporter's connection fails:
// at once on a reset or close, and, when its host vanished (packets
// dropped, no reset), once written data stayed unacknowledged for the
// exporter's WriteTimeout (TCP_USER_TIMEOUT on the socket), so such a
// replica leaves the ring WriteTimeout + FailoverAfter after it went.
// Every agent decides this on its own, so around a failover the two halves of a connection can meet on different replicas;
// those are stored unmatched there, not lost.
//
// What a replica that leaves the ring holds (the bound asked in issue 15):
//   - records still in its buffer (at most BufferRecords, those exported to
//     it during the FailoverAfter before it left) are moved to their new
//     owners at once, and counted in
//     flowlens_agent_collector_records_moved_total. They were never written
//     to any connection, so moving them cannot duplicate them;
//   - records already encoded stay with its exporter for its return: the
//     messages written to the failed connection that the collector's kernel
//     had not acknowledged (at most the socket's send buffer, tcp_wmem's
//     maximum, plus the one message being written) and at most two partly
//     filled messages (65535 bytes each). Moving them could duplicate them:
//     the collector may have read part of them. If the agent stops first
//     they are dropped and counted
//     (flowlens_ipfix_exporter_records_dropped_total{reason="shutdown"}).
//   - Not covered, and counted nowhere: what the replica's kernel had
//     acknowledged but its process had not read when it was killed
//     (SIGKILL, OOM kill, node crash): its socket receive buffer, up to
//     tcp_rmem's maximum per agent connection. IPFIX has no
//     application-level acknowledgement, so the agent cannot know; the
//     aggregator's write-ahead log covers only what it read.
//   - With CollectorDNS, a replica the name stops naming (its pod left the
//     headless Service) leaves the ring at once, its buffer moved as above;
//     its exporter keeps running for FailoverAfter + ResolveInterval, so a
//     restarted pod named again under the same address gets the messages
//     encoded for it. After that it is retired and what it still holds is
//     dropped and counted as collector_removed: unlike a replica of the
//     static list, which keeps it for its return however long it is away.
//
// Between the outage and FailoverAfter the replica's share keeps going to
// its buffer (BufferRecords); once that is full the exporter refuses
// records (the agent keeps them in its connection store and offers them
// again, so after the failover they go to their new owner) until the
// exporter's BackpressureTimeout, and only then drops and counts them
// (buffer_full).
//
// Backpressure: Export reports false when the owning replica's exporter
// refused the record (its buffer full while connected, or unreachable for
// less than its BackpressureTimeout): nothing was kept or counted, and the
// caller offers it again later. Records held while no replica is known are
// taken (held, or dropped and counted). Records moved out of a replica
// that left the ring and refused by their new owner wait in the same hold
// buffer (HoldRecords; beyond it dropped and counted as hold_full) and are
// offered again on every reachability check.
// A collector that accepts connections but stops reading is not seen as
// down (the exporter reconnects after WriteTimeout), and over UDP nothing
// is ever seen as down: there is no failover for those. Such a replica's
// exporter still refuses a record for at most its BackpressureTimeout
// (no record left its buffer meanwhile), then drops and counts
// (buffer_full), so the bound the agent's loop relies on (RefusalBound)
// holds through this sink too; the hold buffer adds no wait, as what it
// holds is taken already.
//
// Memory: each replica's exporter allocates a buffer of BufferRecords
// records, about 344 bytes each at start and at most about 1.2 KiB each
// when every record carries long strings (L7 fields; see ipfixexport's
// recordBuffer), so at start MaxReplicas × BufferRecords × ~344 B (with
// agentconfig's bounds, 64 × 100000 × 344 B ≈ 2.2 GB at the default
// bufferRecords), plus per replica its socket's send buffer and up to two
// partly filled 64 KiB messages.
type ShardedSink struct {
	cfg      ShardedSinkConfig
	clock    Clock
	resolver Resolver
	reg      prometheus.Registerer
	dnsHost  string
	dnsPort  string
	m        shardMetrics
	// ignoredLast is how many addresses the last resolution ignored (owned
	// by whoever calls resolve: Run's goroutine).
	ignoredLast int

	// mu guards the routing state. Export holds it while it hands a record
	// to an exporter, so once a failover changed the ring and released mu,
	// no record can still be on its way into the replica that left, and
	// what its buffer holds can be moved completely.
	mu       sync.Mutex
	replicas map[string]*replica
	ring     *shard.Ring
	owners   []*replica // owners[i] is ring.Member(i)
	held     []flow.Record
	moveBuf  []flow.Record
	running  bool
	stopped  bool
	// leaving holds replicas the DNS name stopped naming, out of the ring,
	// their exporters still running, until the deadline: one that is named
	// again by then (a restarted pod back under its address) gets its
	// exporter back, with the messages it had already encoded.
	leaving  map[string]leavingReplica
	retiring map[string]bool
	errs     []error

	wg sync.WaitGroup // exporter goroutines and retirements
}

type replica struct {
	id      string
	exp     ReplicaExporter
	reg     *trackingRegisterer // nil without a registry
	records prometheus.Counter
	inRing  bool
	cancel  context.CancelFunc // set once Run started it
	done    chan struct{}      // closed when its Run returned
}

type leavingReplica struct {
	rep   *replica
	until time.Time
}

type shardMetrics struct {
	records       *prometheus.CounterVec
	failovers     prometheus.Counter
	returns       prometheus.Counter
	ringSize      prometheus.Gauge
	replicas      prometheus.Gauge
	resolveErrors prometheus.Counter
	ignored       prometheus.Gauge
	moved         prometheus.Counter
	dropped       *prometheus.CounterVec
}

// Reasons of flowlens_agent_collector_records_dropped_total.
const (
	dropNoCollector = "no_collector"      // no replica known, hold buffer full or stopping
	dropRemoved     = "collector_removed" // unsent by a replica its DNS name no longer names
	dropHoldFull    = "hold_full"         // moved, refused by the new owner, hold buffer full
)

// moveChunk is how many records are moved out of a replica at a time.
const moveChunk = 1024

// NewShardedSink validates cfg, builds the exporters of a static replica
// list and registers the metrics on reg (nil: not registered). Nothing is
// sent before Run.
func NewShardedSink(cfg ShardedSinkConfig, reg prometheus.Registerer) (*ShardedSink, error) {
	switch {
	case (len(cfg.Collectors) > 0) == (cfg.CollectorDNS != ""):
		return nil, errors.New("sharded sink: set exactly one of Collectors and CollectorDNS")
	case cfg.FailoverAfter <= 0:
		return nil, fmt.Errorf("sharded sink: FailoverAfter %s must be positive", cfg.FailoverAfter)
	case cfg.CollectorDNS != "" && cfg.ResolveInterval <= 0:
		return nil, fmt.Errorf("sharded sink: ResolveInterval %s must be positive", cfg.ResolveInterval)
	case cfg.HoldRecords < 0:
		return nil, fmt.Errorf("sharded sink: HoldRecords %d must not be negative", cfg.HoldRecords)
	case cfg.NewExporter == nil:
		return nil, errors.New("sharded sink: NewExporter is required")
	case cfg.MaxReplicas < 0:
		return nil, fmt.Errorf("sharded sink: MaxReplicas %d must not be negative", cfg.MaxReplicas)
	}
	if cfg.MaxReplicas == 0 {
		cfg.MaxReplicas = agentconfig.MaxCollectors
	}
	if len(cfg.Collectors) > cfg.MaxReplicas {
		return nil, fmt.Errorf("sharded sink: %d collectors, at most %d", len(cfg.Collectors), cfg.MaxReplicas)
	}
	s := &ShardedSink{
		cfg: cfg, clock: cfg.Clock, resolver: cfg.Resolver, reg: reg,
		replicas: map[string]*replica{}, retiring: map[string]bool{}, leaving: map[string]leavingReplica{},
		ring: shard.NewRing(), moveBuf: make([]flow.Record, 0, moveChunk),
	}
	if s.clock == nil {
		s.clock = SystemClock{}
	}
	if s.resolver == nil {
		s.resolver = net.DefaultResolver
	}
	if cfg.CollectorDNS != "" {
		var err error
		if s.dnsHost, s.dnsPort, err = net.SplitHostPort(cfg.CollectorDNS); err != nil || s.dnsHost == "" {
			return nil, fmt.Errorf("sharded sink: CollectorDNS %q: want name:port", cfg.CollectorDNS)
		}
	}
	if err := s.newMetrics(reg); err != nil {
		return nil, err
	}
	for _, id := range cfg.Collectors {
		if _, dup := s.replicas[id]; dup {
			return nil, fmt.Errorf("sharded sink: collector %q listed twice", id)
		}
		if err := s.addReplicaLocked(id); err != nil {
			return nil, err
		}
	}
	s.rebuildLocked()
	return s, nil
}

func (s *ShardedSink) newMetrics(reg prometheus.Registerer) error {
	s.m = shardMetrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_agent_collector_records_total",
			Help: "Records handed to each aggregator replica's exporter (moved ones included); its own flowlens_ipfix_exporter_* metrics carry the same collector label.",
		}, []string{"collector"}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_collector_failovers_total",
			Help: "Times a replica unreachable for longer than export.failoverAfter was taken out of the ring (its connections went to the others).",
		}),
		returns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_collector_returns_total",
			Help: "Times a replica taken out of the ring was reachable again and took its connections back.",
		}),
		ringSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_agent_collector_ring_size",
			Help: "Replicas in the ring (reachable, or not unreachable for longer than export.failoverAfter).",
		}),
		replicas: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_agent_collector_replicas",
			Help: "Replicas known from export.collectors or export.collectorDNS.",
		}),
		resolveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_collector_resolve_errors_total",
			Help: "Resolutions of export.collectorDNS that failed or named no address (the last replicas were kept).",
		}),
		ignored: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_agent_collector_addresses_ignored",
			Help: fmt.Sprintf("Addresses the last resolution of export.collectorDNS named beyond the replica limit (%d), not used as replicas.", s.cfg.MaxReplicas),
		}),
		moved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_collector_records_moved_total",
			Help: "Records taken from the buffer of a replica that left the ring, or the DNS name, and handed to their new replica.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_agent_collector_records_dropped_total",
			Help: "Records no replica took: no_collector (none known yet and the hold buffer full, or the agent stopped first), collector_removed (left unsent by a replica the DNS name stopped naming), hold_full (moved from a replica that left the ring, refused by the new one while the hold buffer was full).",
		}, []string{"reason"}),
	}
	s.m.dropped.WithLabelValues(dropNoCollector)
	s.m.dropped.WithLabelValues(dropRemoved)
	s.m.dropped.WithLabelValues(dropHoldFull)
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{s.m.records, s.m.failovers, s.m.returns, s.m.ringSize, s.m.replicas,
		s.m.resolveErrors, s.m.ignored, s.m.moved, s.m.dropped} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register sharded sink metrics: %w", err)
		}
	}
	return nil
}

// Export routes r to its replica. It reports false when that replica's
// exporter refused it (backpressure: offer it again later); true when it
// was taken: queued, held, or dropped and counted.
func (s *ShardedSink) Export(r *flow.Record) bool {
	key := shard.RecordKey(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.routeLocked(key, r)
}

// Accepts reports whether Export would take r now.
func (s *ShardedSink) Accepts(r *flow.Record) bool {
	key := shard.RecordKey(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.ring.Owner(key)
	return i < 0 || s.owners[i].exp.Accepts(r)
}

// RefusalBound is the longest Export refuses one record offered again and
// again: the largest of its replicas' exporters' bounds (0 when none
// tells), since the record's owner may be any of them. The hold buffer
// adds no wait: what it holds is taken already.
func (s *ShardedSink) RefusalBound() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var d time.Duration
	for _, rep := range s.replicas {
		if b, ok := rep.exp.(refusalBounder); ok {
			d = max(d, b.RefusalBound())
		}
	}
	return d
}

func (s *ShardedSink) routeLocked(key uint64, r *flow.Record) bool {
	i := s.ring.Owner(key)
	if i < 0 {
		s.holdLocked(r, dropNoCollector)
		return true
	}
	rep := s.owners[i]
	if !rep.exp.Export(r) {
		return false // refused: the caller keeps it
	}
	rep.records.Inc()
	return true
}

// holdLocked keeps r in the hold buffer, or drops and counts it as reason
// when the buffer is full or the sink stopped.
func (s *ShardedSink) holdLocked(r *flow.Record, reason string) {
	if s.stopped || len(s.held) >= s.cfg.HoldRecords {
		s.m.dropped.WithLabelValues(reason).Inc()
		return
	}
	s.held = append(s.held, *r)
}

// rerouteLocked routes a record no caller is waiting for (moved out of a
// replica, or held): one its new owner refuses is held for the next try.
func (s *ShardedSink) rerouteLocked(r *flow.Record) {
	if !s.routeLocked(shard.RecordKey(r), r) {
		s.holdLocked(r, dropHoldFull)
	}
}

// retryHeldLocked offers the held records to their owners again.
func (s *ShardedSink) retryHeldLocked() {
	if len(s.held) == 0 || s.ring.Len() == 0 {
		return
	}
	held := s.held
	s.held = nil
	for i := range held {
		s.rerouteLocked(&held[i])
	}
}

// Run starts the exporters, watches their reachability and (with
// CollectorDNS) the replica set until ctx ends; then it moves what waits
// for an unreachable replica to a connected one and stops the exporters,
// which send what they hold. It returns the exporters' errors.
func (s *ShardedSink) Run(ctx context.Context) error {
	s.mu.Lock()
	s.running = true
	for _, rep := range s.replicas {
		s.startLocked(rep)
	}
	s.mu.Unlock()

	// Reachability is sampled often enough that a replica leaves the ring
	// within a quarter of FailoverAfter after it is due (at most a second).
	every := min(time.Second, max(10*time.Millisecond, s.cfg.FailoverAfter/4))
	check := s.clock.NewTicker(every)
	defer check.Stop()
	var resolveC <-chan time.Time
	if s.cfg.CollectorDNS != "" {
		s.resolve(ctx)
		t := s.clock.NewTicker(s.cfg.ResolveInterval)
		defer t.Stop()
		resolveC = t.C()
	}
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case now := <-check.C():
			s.check(now)
			// Until the name resolves at all, records are only held:
			// retry at the check's pace rather than the resolve interval's.
			if s.cfg.CollectorDNS != "" && s.known() == 0 {
				s.resolve(ctx)
			}
		case <-resolveC:
			s.resolve(ctx)
		}
	}
	s.shutdown()
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

func (s *ShardedSink) known() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.replicas)
}

// check takes replicas unreachable for longer than FailoverAfter out of
// the ring, puts those reachable again back, and moves what waits in the
// buffers of those out of it.
func (s *ShardedSink) check(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	for _, rep := range s.sortedLocked() {
		down := rep.exp.DownSince()
		healthy := down.IsZero() || now.Sub(down) < s.cfg.FailoverAfter
		if healthy == rep.inRing {
			continue
		}
		rep.inRing, changed = healthy, true
		if healthy {
			s.m.returns.Inc()
			klog.InfoS("Collector replica reachable again; its share of the connections returns to it", "collector", rep.id)
		} else {
			s.m.failovers.Inc()
			klog.InfoS("Collector replica unreachable; its share of the connections moves to the other replicas",
				"collector", rep.id, "unreachableFor", now.Sub(down).Round(time.Millisecond), "failoverAfter", s.cfg.FailoverAfter)
		}
	}
	if changed {
		s.rebuildLocked()
	} else {
		s.retryHeldLocked()
	}
	if s.ringHasHealthyLocked() {
		for _, rep := range s.sortedLocked() {
			if !rep.inRing {
				s.moveLocked(rep)
			}
		}
	}
	for id, l := range s.leaving {
		if !now.Before(l.until) {
			delete(s.leaving, id)
			klog.InfoS("Collector replica not named by DNS again within the grace period; retired", "collector", id, "name", s.dnsHost)
			s.retireLocked(l.rep)
		}
	}
}

// leaveGrace is how long a replica the DNS name stopped naming keeps its
// exporter: failoverAfter, the outage a replica may have without losing
// its share, plus one resolution to see it named again.
func (s *ShardedSink) leaveGrace() time.Duration { return s.cfg.FailoverAfter + s.cfg.ResolveInterval }

// ringHasHealthyLocked reports whether the ring is made of replicas in it,
// rather than of all of them because none is.
func (s *ShardedSink) ringHasHealthyLocked() bool {
	return len(s.owners) > 0 && s.owners[0].inRing
}

// moveLocked hands what waits in rep's buffer to the owners the ring now
// names.
func (s *ShardedSink) moveLocked(rep *replica) {
	n := 0
	for {
		buf := rep.exp.TakeBuffered(s.moveBuf[:0])
		for i := range buf {
			s.rerouteLocked(&buf[i])
		}
		n += len(buf)
		clear(buf) // let the strings be collected
		if len(buf) < cap(buf) {
			break
		}
	}
	if n > 0 {
		s.m.moved.Add(float64(n))
		klog.InfoS("Records moved from a collector replica's buffer to their new replicas", "collector", rep.id, "records", n)
	}
}

// rebuildLocked makes the ring of the replicas in it, or of all of them
// when none is: then records wait in the buffer of the replica they would
// have without a failover, for whichever comes back first.
func (s *ShardedSink) rebuildLocked() {
	var in, all []string
	for _, rep := range s.sortedLocked() {
		all = append(all, rep.id)
		if rep.inRing {
			in = append(in, rep.id)
		}
	}
	use := in
	if len(in) == 0 {
		use = all
	}
	s.ring = shard.NewRing(use...)
	s.owners = s.owners[:0]
	for _, id := range s.ring.Members() {
		s.owners = append(s.owners, s.replicas[id])
	}
	s.m.ringSize.Set(float64(len(in)))
	s.m.replicas.Set(float64(len(all)))
	s.retryHeldLocked()
}

func (s *ShardedSink) sortedLocked() []*replica {
	out := make([]*replica, 0, len(s.replicas))
	for _, rep := range s.replicas {
		out = append(out, rep)
	}
	slices.SortFunc(out, func(a, b *replica) int {
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
	return out
}

// addReplicaLocked builds the exporter of a replica, its metrics labelled
// with its id. A new replica starts in the ring: it is taken out like any
// other if it cannot be reached for FailoverAfter.
func (s *ShardedSink) addReplicaLocked(id string) error {
	rep := &replica{id: id, inRing: true, records: s.m.records.WithLabelValues(id)}
	var reg prometheus.Registerer
	if s.reg != nil {
		rep.reg = &trackingRegisterer{Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"collector": id}, s.reg)}
		reg = rep.reg
	}
	exp, err := s.cfg.NewExporter(id, reg)
	if err != nil {
		if rep.reg != nil {
			rep.reg.unregisterAll()
		}
		s.m.records.DeleteLabelValues(id)
		return fmt.Errorf("exporter of collector %s: %w", id, err)
	}
	rep.exp = exp
	s.replicas[id] = rep
	if s.running {
		s.startLocked(rep)
	}
	return nil
}

func (s *ShardedSink) startLocked(rep *replica) {
	ctx, cancel := context.WithCancel(context.Background())
	rep.cancel, rep.done = cancel, make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(rep.done)
		if err := rep.exp.Run(ctx); err != nil {
			s.mu.Lock()
			s.errs = append(s.errs, fmt.Errorf("exporter of collector %s: %w", rep.id, err))
			s.mu.Unlock()
		}
	}()
}

// resolve looks the DNS name up and makes its addresses the replicas. A
// failed lookup, or one naming no address, keeps the last replicas: a DNS
// outage must not stop the export.
func (s *ShardedSink) resolve(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, min(s.cfg.ResolveInterval, 10*time.Second))
	defer cancel()
	addrs, err := s.resolver.LookupHost(rctx, s.dnsHost)
	if err == nil && len(addrs) == 0 {
		err = errors.New("no address")
	}
	if err != nil {
		if ctx.Err() != nil {
			return // stopping
		}
		s.m.resolveErrors.Inc()
		klog.ErrorS(err, "Cannot resolve the collector DNS name; keeping the last replicas", "name", s.dnsHost, "replicas", s.known())
		return
	}
	ids := make([]string, 0, len(addrs))
	for _, a := range addrs {
		ids = append(ids, net.JoinHostPort(a, s.dnsPort))
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	n := max(0, len(ids)-s.cfg.MaxReplicas)
	if n > 0 && n != s.ignoredLast {
		// Logged when the count changes, not at every resolution.
		klog.ErrorS(nil, "The collector DNS name resolves to more addresses than the replica limit; the highest ones are ignored",
			"name", s.dnsHost, "addresses", len(ids), "limit", s.cfg.MaxReplicas, "ignored", ids[s.cfg.MaxReplicas:])
	}
	if n > 0 {
		// Sorted, so every agent that sees the same answer uses the same
		// replicas and agrees on every connection's owner.
		ids = ids[:s.cfg.MaxReplicas]
	}
	s.ignoredLast = n
	s.m.ignored.Set(float64(n))
	s.setReplicas(ids)
}

// setReplicas makes ids the replica set: new ones get an exporter, gone
// ones leave the ring at once, their buffers moved to the new owners; their
// exporters keep running for leaveGrace (sending what they had encoded, if
// connected) and stop then unless the name names them again.
func (s *ShardedSink) setReplicas(ids []string) {
	s.mu.Lock()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var removed []*replica
	for id, rep := range s.replicas {
		if !want[id] {
			removed = append(removed, rep)
			delete(s.replicas, id)
		}
	}
	for _, id := range ids {
		if _, ok := s.replicas[id]; ok {
			continue
		}
		if l, ok := s.leaving[id]; ok {
			delete(s.leaving, id)
			s.replicas[id] = l.rep
			l.rep.inRing = true // check takes it out again if it cannot be reached
			klog.InfoS("Collector replica named by DNS again within the grace period; it keeps its exporter", "collector", id, "name", s.dnsHost)
			continue
		}
		if s.retiring[id] {
			// Its old exporter's metrics are still registered; the next
			// resolution adds it.
			continue
		}
		if err := s.addReplicaLocked(id); err != nil {
			klog.ErrorS(err, "Cannot add collector replica", "collector", id)
			continue
		}
		klog.InfoS("Collector replica added", "collector", id, "name", s.dnsHost)
	}
	s.rebuildLocked()
	until := s.clock.Now().Add(s.leaveGrace())
	for _, rep := range removed {
		klog.InfoS("Collector replica no longer named by DNS; its share of the connections moves to the others",
			"collector", rep.id, "name", s.dnsHost, "retiredUnlessNamedAgainWithin", s.leaveGrace())
		s.moveLocked(rep)
		// Its exporter keeps running (sending what it had encoded if it is
		// connected) and is retired only if the name does not name it
		// again within the grace period.
		rep.inRing = false
		s.leaving[rep.id] = leavingReplica{rep: rep, until: until}
	}
	s.mu.Unlock()
}

// retireLocked stops a removed replica's exporter and, once it returned,
// counts what it could not send and unregisters its metrics.
func (s *ShardedSink) retireLocked(rep *replica) {
	finish := func() {
		if n := rep.exp.UnsentAtStop(); n > 0 {
			s.m.dropped.WithLabelValues(dropRemoved).Add(float64(n))
		}
		if rep.reg != nil {
			rep.reg.unregisterAll()
		}
		s.m.records.DeleteLabelValues(rep.id)
	}
	if rep.cancel == nil {
		finish() // never started: nothing was encoded
		return
	}
	s.retiring[rep.id] = true
	rep.cancel()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-rep.done
		s.mu.Lock()
		defer s.mu.Unlock()
		finish()
		delete(s.retiring, rep.id)
	}()
}

// shutdown moves what waits for a replica that is not connected now to one
// that is (after the exporters stop nothing would send it), then stops
// every exporter and waits for them.
func (s *ShardedSink) shutdown() {
	s.mu.Lock()
	var up []string
	for _, rep := range s.sortedLocked() {
		if rep.exp.DownSince().IsZero() {
			up = append(up, rep.id)
		}
	}
	if len(up) > 0 && len(up) < len(s.replicas) {
		for _, rep := range s.replicas {
			rep.inRing = rep.exp.DownSince().IsZero()
		}
		s.rebuildLocked()
		for _, rep := range s.sortedLocked() {
			if !rep.inRing {
				s.moveLocked(rep)
			}
		}
	}
	s.retryHeldLocked()
	if n := len(s.held); n > 0 {
		s.m.dropped.WithLabelValues(dropNoCollector).Add(float64(n))
		klog.InfoS("Records dropped at shutdown: held for a collector replica that never took them", "records", n, "name", s.dnsHost)
		s.held = nil
	}
	s.stopped = true
	for _, rep := range s.replicas {
		if rep.cancel != nil {
			rep.cancel()
		}
	}
	for _, l := range s.leaving {
		// What it still holds was already encoded for it: dropped and
		// counted by its exporter (shutdown), like any replica's.
		if l.rep.cancel != nil {
			l.rep.cancel()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// trackingRegisterer remembers what an exporter registered, so that the
// metrics of a replica the DNS name stops naming can be unregistered.
type trackingRegisterer struct {
	prometheus.Registerer
	mu sync.Mutex
	cs []prometheus.Collector
}

func (t *trackingRegisterer) Register(c prometheus.Collector) error {
	if err := t.Registerer.Register(c); err != nil {
		return err
	}
	t.mu.Lock()
	t.cs = append(t.cs, c)
	t.mu.Unlock()
	return nil
}

func (t *trackingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

func (t *trackingRegisterer) unregisterAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.cs {
		t.Registerer.Unregister(c)
	}
	t.cs = nil
}
