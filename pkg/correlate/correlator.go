package correlate

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Defaults for Config fields left zero.
const (
	DefaultCorrelationWait = 10 * time.Second
	DefaultStartWindow     = 5 * time.Second
	DefaultActiveTimeout   = 60 * time.Second
	DefaultInactiveTimeout = 90 * time.Second
	DefaultMaxConnections  = 500_000
	DefaultTickInterval    = 250 * time.Millisecond
)

// Config configures a Correlator. Zero durations take the defaults above.
type Config struct {
	// CorrelationWait is how long an inter-node half waits for its peer
	// before it is exported alone, flagged StatusUnmatched. It also bounds
	// how long a correlated connection waits for the second end-of-flow.
	CorrelationWait time.Duration
	// StartWindow: records of one 5-tuple whose start times differ by more
	// are different connections (port reuse); within it they are one, which
	// absorbs clock skew between nodes.
	StartWindow time.Duration
	// ActiveTimeout exports a connection that keeps receiving updates;
	// InactiveTimeout exports and forgets one that stopped receiving them.
	ActiveTimeout   time.Duration
	InactiveTimeout time.Duration
	// MaxConnections bounds the table; past it new connections are exported
	// at once, uncorrelated, and counted (never dropped).
	MaxConnections int
	// TickInterval is how often Run checks deadlines.
	TickInterval time.Duration
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.CorrelationWait, DefaultCorrelationWait)
	def(&c.StartWindow, DefaultStartWindow)
	def(&c.ActiveTimeout, DefaultActiveTimeout)
	def(&c.InactiveTimeout, DefaultInactiveTimeout)
	def(&c.TickInterval, DefaultTickInterval)
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
}

// Validate reports the first invalid field after defaults are applied.
func (c Config) Validate() error {
	c.setDefaults()
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"correlationWait", c.CorrelationWait},
		{"startWindow", c.StartWindow},
		{"activeTimeout", c.ActiveTimeout},
		{"inactiveTimeout", c.InactiveTimeout},
		{"tickInterval", c.TickInterval},
	} {
		if f.v < 0 {
			return fmt.Errorf("%s: must not be negative, got %s", f.name, f.v)
		}
	}
	if c.MaxConnections < 0 {
		return fmt.Errorf("maxConnections: must not be negative, got %d", c.MaxConnections)
	}
	return nil
}

type side uint8

const (
	sideSource side = iota
	sideDestination
	sideUnknown
)

// entry is one connection in the table. Entries of one key with
// different start times (port reuse) are chained through next.
type entry struct {
	// rec's CorrelationTuple is the entry's table key: rec.Tuple changes
	// only when the client's half joins the backend node's, and then the
	// proxy SNAT it brings maps it back to the same key. Not storing the
	// key keeps 40 bytes off every pending connection.
	rec       Record
	needsPeer bool
	unmatched bool // exported alone at least once
	// dirty: updated since the last export. An entry that is not has
	// nothing new to say, so its expiry removes it without another row.
	dirty      bool
	lastUpdate time.Time
	activeFrom time.Time
	waitUntil  time.Time // peer wait; zero once matched or given up
	endFrom    time.Time // first end-of-flow of a correlated connection
	prevEnd    [2]int64  // per side, end time covered by the previous export
	deadline   time.Time
	index      int
	next       *entry
	// seqs are the inputs folded in since the last export.
	seqs []uint64
	// health folds the halves' flow.Health into rec.Health.
	health healthAcc
}

func (e *entry) side(s side) *Side {
	if s == sideDestination {
		return &e.rec.FromDestination
	}
	return &e.rec.FromSource
}

// Correlator merges halves and aggregates updates of connections. It is not
// safe for concurrent use: one goroutine (Run, or a test) owns it.
type Correlator struct {
	cfg Config
	m   *metrics
	// Children of the labelled counters, resolved once: label hashing per
	// record showed in profiles.
	received [5]prometheus.Counter
	exported [6]prometheus.Counter
	table    map[flow.Tuple]*entry
	queue    expiryHeap
	entries  int
}

// New validates cfg and returns an empty Correlator whose metrics are
// registered on reg (nil: counted, not registered).
func New(cfg Config, reg prometheus.Registerer) (*Correlator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("correlate config: %w", err)
	}
	cfg.setDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	c := &Correlator{cfg: cfg, m: m, table: make(map[flow.Tuple]*entry)}
	for i := range c.received {
		c.received[i] = m.Received.WithLabelValues(flow.FlowType(i).String())
	}
	for i := range c.exported {
		c.exported[i] = m.Exported.WithLabelValues(flow.EndReason(i).String())
	}
	return c, nil
}

// Len is the number of connections held.
func (c *Correlator) Len() int { return c.entries }

// Add folds one record into the table. Records that complete a connection
// are exported by the next Expire call with the same now.
func (c *Correlator) Add(in *Input, now time.Time, emit func(*Record)) {
	r := &in.Record
	if int(r.FlowType) < len(c.received) {
		c.received[r.FlowType].Inc()
	} else {
		c.m.Received.WithLabelValues(r.FlowType.String()).Inc()
	}
	peer := expectsPeer(in)
	// Source NAT is applied by the node the connection entered by, the
	// source side; the node it was handed to sees no NAT. Otherwise the
	// exporting node, when known, is the surest sign of the side; the
	// pods a half names only tell when it names one of them.
	sd := sideSource
	if !peer || !r.IsSNATed() {
		sd = classifyByNode(r, in.ExporterNode)
		if sd == sideUnknown {
			sd = classify(r, in.Exporter)
		}
	}
	key := r.CorrelationTuple()
	e := c.find(key, r)
	if e == nil && !peer && r.EndReason == flow.EndOfFlow {
		// A connection one node saw whole, already over, and with nothing
		// held: pass it straight through (most short connections).
		emit(c.passThrough(in))
		return
	}
	if e == nil {
		if c.entries >= c.cfg.MaxConnections {
			c.m.Overflow.Inc()
			tmp := c.newEntry(in, sd, peer, now)
			emit(c.export(tmp, r.EndReason))
			return
		}
		e = c.newEntry(in, sd, peer, now)
		e.next = c.table[key]
		c.table[key] = e
		c.entries++
		c.m.Pending.Set(float64(c.entries))
		c.schedule(e, now, true)
		return
	}
	switch {
	case !e.needsPeer:
		sd = sideSource
	case r.IsSNATed():
		// The node that source-NATed the connection is its entry node,
		// whatever names the half carries (an agent in Antrea mode
		// clears every end that is not one of its own pods).
		if !e.rec.IsSNATed() {
			e.moveFarView(in.Exporter)
		}
		sd = sideSource
	case e.rec.IsSNATed():
		// The entry node's half is held, so this half without NAT is the
		// node the connection was handed to: the destination side.
		sd = sideDestination
	default:
		sd = c.resolveSide(e, sd, in.Exporter)
	}
	c.apply(e, r, sd, in.Exporter, now)
	if in.Seq != 0 {
		e.seqs = append(e.seqs, in.Seq)
	}
	c.schedule(e, now, false)
}

func (c *Correlator) newEntry(in *Input, sd side, peer bool, now time.Time) *entry {
	r := &in.Record
	e := &entry{needsPeer: peer, lastUpdate: now, activeFrom: now, index: -1, dirty: true}
	if in.Seq != 0 {
		e.seqs = []uint64{in.Seq}
	}
	e.rec.Record = *r
	e.rec.L7 = flow.L7{}
	if err := mergeL7(&e.rec.L7, &r.L7); err != nil {
		c.m.L7Errors.Inc()
		klog.V(4).InfoS("Dropped invalid httpVals", "tuple", r.Tuple, "err", err)
	}
	if !e.needsPeer || sd == sideUnknown {
		sd = sideSource
	}
	if e.needsPeer {
		e.waitUntil = now.Add(c.cfg.CorrelationWait)
	}
	e.prevEnd[sd] = r.StartNanos
	s := e.side(sd)
	s.Seen, s.Exporter = true, in.Exporter
	c.applyCounters(s, r)
	e.rec.Health = flow.Health{}
	e.health.add(&e.rec.Health, &r.Health, sd)
	return e
}

// find returns the entry of r's connection: same key, start within the
// window, the closest start when several are (a port reused while the
// previous connection still waits for its last end-of-flow). An unknown
// start time (zero) matches any, after a known one.
func (c *Correlator) find(key flow.Tuple, r *flow.Record) *entry {
	var best *entry
	var bestD time.Duration
	for e := c.table[key]; e != nil; e = e.next {
		// A source NAT port given to one client after another: the far
		// node's view is the same, the clients are not.
		if r.IsSNATed() && e.rec.IsSNATed() && e.rec.Tuple != r.Tuple {
			continue
		}
		d := c.cfg.StartWindow
		if a, b := e.rec.StartNanos, r.StartNanos; a != 0 && b != 0 {
			d = time.Duration(a - b)
			if d < 0 {
				d = -d
			}
			if d > c.cfg.StartWindow {
				continue
			}
		}
		if best == nil || d < bestD {
			best, bestD = e, d
		}
	}
	return best
}

// expectsPeer reports whether another node reports the other half of in's
// connection.
func expectsPeer(in *Input) bool {
	r := &in.Record
	switch r.FlowType {
	case flow.FlowTypeInterNode:
		return true
	case flow.FlowTypeIntraNode:
		return false
	}
	// A node that source-NATs a connection from outside to an endpoint on
	// another node (NodePort or LoadBalancer, externalTrafficPolicy
	// Cluster) hands it over: that node reports it too, from the
	// translated source. Unless the endpoint is known to be on the
	// exporting node, the half waits for its peer: a lone half is then
	// late and flagged unmatched, where not waiting would split a joined
	// connection into two rows and count its bytes twice. An empty
	// destination node waits too: an agent in Antrea mode clears a remote
	// pod, so it cannot mean "this node". A pod's own egress masquerade
	// (to-external) has no far node that reports it.
	if !r.IsSNATed() || r.FlowType != flow.FlowTypeFromExternal {
		return false
	}
	return r.Destination.NodeName == "" || r.Destination.NodeName != in.ExporterNode
}

// moveFarView makes room on the source side for the entry node's half
// (exported by exporter) when the backend node's half, which carries no
// NAT, was placed there because nothing it named told its side.
func (e *entry) moveFarView(exporter string) {
	src, dst := &e.rec.FromSource, &e.rec.FromDestination
	if !src.Seen || dst.Seen || src.Exporter == exporter {
		return
	}
	*dst, *src = *src, Side{}
	e.prevEnd[sideDestination], e.prevEnd[sideSource] = e.prevEnd[sideSource], 0
}

// classify tells which node exported r. Antrea's agents fill only the pods
// local to them, so a lone source pod means the source node; agents that know
// both pods are told apart by the exporter's node name.
func classify(r *flow.Record, exporter string) side {
	s, d := r.Source.PodName != "", r.Destination.PodName != ""
	switch {
	case s && !d:
		return sideSource
	case d && !s:
		return sideDestination
	}
	if exporter != "" {
		switch exporter {
		case r.Source.NodeName:
			return sideSource
		case r.Destination.NodeName:
			return sideDestination
		}
	}
	return sideUnknown
}

// classifyByNode places a half by the node that exported it.
func classifyByNode(r *flow.Record, node string) side {
	switch {
	case node == "":
		return sideUnknown
	case node == r.Source.NodeName:
		return sideSource
	case node == r.Destination.NodeName:
		return sideDestination
	}
	return sideUnknown
}

// resolveSide places a record that classify could not place: the side its
// exporter already filled, else the empty one.
func (c *Correlator) resolveSide(e *entry, sd side, exporter string) side {
	if sd != sideUnknown {
		return sd
	}
	src, dst := &e.rec.FromSource, &e.rec.FromDestination
	switch {
	case src.Seen && src.Exporter == exporter:
		return sideSource
	case dst.Seen && dst.Exporter == exporter:
		return sideDestination
	case !src.Seen:
		return sideSource
	default:
		return sideDestination
	}
}

func (c *Correlator) applyCounters(s *Side, r *flow.Record) {
	end := r.StopNanos
	if end == 0 {
		end = r.ExportNanos
	}
	if end >= s.EndNanos {
		s.Fwd, s.Rev = r.Fwd, r.Rev
		s.EndNanos = end
	}
	s.FwdDelta.Packets += r.FwdDelta.Packets
	s.FwdDelta.Bytes += r.FwdDelta.Bytes
	s.RevDelta.Packets += r.RevDelta.Packets
	s.RevDelta.Bytes += r.RevDelta.Bytes
	if r.EndReason == flow.EndOfFlow {
		s.Ended = true
	}
}

func (c *Correlator) apply(e *entry, r *flow.Record, sd side, exporter string, now time.Time) {
	s := e.side(sd)
	if !s.Seen {
		s.Seen, s.Exporter = true, exporter
		e.prevEnd[sd] = r.StartNanos
		if e.needsPeer && !e.waitUntil.IsZero() {
			e.waitUntil = time.Time{}
			c.m.Correlated.Inc()
		} else if e.needsPeer {
			// The peer arrived after this connection was exported alone.
			c.m.Correlated.Inc()
		}
	}
	c.applyCounters(s, r)

	m := &e.rec.Record
	// The half of the node that source-NATed the connection names the
	// client; the other node saw only the translated source (a node's
	// address). The row shows the connection as the client made it.
	farView := m.IsSNATed() && !r.IsSNATed()
	if r.IsSNATed() && !m.IsSNATed() {
		m.Tuple, m.Source, m.FlowType = r.Tuple, r.Source, r.FlowType
		m.ProxySnatIP, m.ProxySnatPort = r.ProxySnatIP, r.ProxySnatPort
	}
	if !farView {
		mergeEndpoint(&m.Source, r.Source, sd == sideSource)
	}
	mergeEndpoint(&m.Destination, r.Destination, sd == sideDestination)
	if err := mergeL7(&m.L7, &r.L7); err != nil {
		c.m.L7Errors.Inc()
		klog.V(4).InfoS("Kept valid side of httpVals", "tuple", r.Tuple, "err", err)
	}
	e.health.add(&m.Health, &r.Health, sd)
	// The name the source pod resolved: its node's DNS cache knows it;
	// the other node's value (both pods on it, or none) fills a gap. An
	// empty one (the TTL ran out since) never wipes a known name.
	if r.DestinationName != "" && (m.DestinationName == "" || sd == sideSource) {
		m.DestinationName = r.DestinationName
	}
	if r.StartNanos != 0 && (m.StartNanos == 0 || r.StartNanos < m.StartNanos) {
		m.StartNanos = r.StartNanos
	}
	m.StopNanos = max(m.StopNanos, r.StopNanos)
	if r.ExportNanos >= m.ExportNanos {
		m.ExportNanos = r.ExportNanos
		if r.TCPState != flow.TCPStateNone {
			m.TCPState = r.TCPState
		}
	}
	// Service DNAT happens on the source node: only its half knows the VIP.
	if r.IsDNATed() && !m.IsDNATed() {
		m.OrigDstIP, m.OrigDstPort = r.OrigDstIP, r.OrigDstPort
	}
	if m.ServicePortName == "" {
		m.ServicePortName = r.ServicePortName
	}
	if m.ClusterID == "" {
		m.ClusterID = r.ClusterID
	}
	m.ClusterIP = m.ClusterIP || r.ClusterIP
	if m.FlowType == flow.FlowTypeUnknown {
		m.FlowType = r.FlowType
	}
	if sd == sideSource {
		m.Zone, m.Mark, m.ID, m.Status = r.Zone, r.Mark, r.ID, r.Status
	}
	e.lastUpdate = now
	e.dirty = true
}

// mergeEndpoint fills dst from in: empty fields always, set ones only from
// the node that owns that end.
func mergeEndpoint(dst *flow.Endpoint, in flow.Endpoint, authoritative bool) {
	set := func(d *string, v string) {
		if v != "" && (*d == "" || authoritative) {
			*d = v
		}
	}
	set(&dst.PodName, in.PodName)
	set(&dst.PodNamespace, in.PodNamespace)
	set(&dst.NodeName, in.NodeName)
	set(&dst.Labels, in.Labels)
	// Kind and name are one value: taken together from one half, never a
	// kind from one node and a name from the other.
	if in.WorkloadName != "" && (dst.WorkloadName == "" || authoritative) {
		dst.WorkloadKind, dst.WorkloadName = in.WorkloadKind, in.WorkloadName
	}
}

// ended reports whether every node that reports the connection has seen
// it end.
func (e *entry) ended() (all, some bool) {
	src, dst := &e.rec.FromSource, &e.rec.FromDestination
	all, some = true, false
	for _, s := range []*Side{src, dst} {
		if !s.Seen {
			continue
		}
		all = all && s.Ended
		some = some || s.Ended
	}
	if e.needsPeer && !(src.Seen && dst.Seen) && !e.unmatched {
		all = false // the peer may still report
	}
	return all, some
}

func (c *Correlator) schedule(e *entry, now time.Time, isNew bool) {
	all, some := e.ended()
	if some && e.endFrom.IsZero() {
		e.endFrom = now
	}
	var d time.Time
	switch {
	case !e.waitUntil.IsZero() && !all:
		d = e.waitUntil
	case all:
		d = now
	default:
		d = e.activeFrom.Add(c.cfg.ActiveTimeout)
		if t := e.lastUpdate.Add(c.cfg.InactiveTimeout); t.Before(d) {
			d = t
		}
		if some {
			if t := e.endFrom.Add(c.cfg.CorrelationWait); t.Before(d) {
				d = t
			}
		}
	}
	e.deadline = d
	if isNew {
		heap.Push(&c.queue, e)
	} else {
		heap.Fix(&c.queue, e.index)
	}
}

// Expire exports every connection whose deadline is at or before now.
func (c *Correlator) Expire(now time.Time, emit func(*Record)) {
	for len(c.queue) > 0 && !c.queue[0].deadline.After(now) {
		e := c.queue[0]
		all, some := e.ended()
		switch {
		case !e.waitUntil.IsZero() && !all:
			// The peer never came: export this half alone.
			e.waitUntil = time.Time{}
			e.unmatched = true
			c.m.Unmatched.Inc()
			if all, _ = e.ended(); all {
				c.remove(e, emit, flow.EndOfFlow)
				continue
			}
			emit(c.export(e, flow.EndActiveTimeout))
			e.activeFrom = now
		case all:
			c.remove(e, emit, flow.EndOfFlow)
			continue
		case some && !now.Before(e.endFrom.Add(c.cfg.CorrelationWait)):
			c.remove(e, emit, flow.EndOfFlow)
			continue
		case !now.Before(e.lastUpdate.Add(c.cfg.InactiveTimeout)):
			c.remove(e, emit, flow.EndIdleTimeout)
			continue
		default:
			if e.dirty {
				emit(c.export(e, flow.EndActiveTimeout))
			}
			e.activeFrom = now
		}
		c.schedule(e, now, false)
	}
}

// Flush exports every connection held that has news since its last
// export, as on a forced end; Run calls it on shutdown so nothing pending
// is lost.
func (c *Correlator) Flush(emit func(*Record)) {
	for len(c.queue) > 0 {
		e := c.queue[0]
		if !e.waitUntil.IsZero() {
			e.unmatched = true
			c.m.Unmatched.Inc()
		}
		c.remove(e, emit, flow.EndForced)
	}
}

func (c *Correlator) remove(e *entry, emit func(*Record), reason flow.EndReason) {
	heap.Remove(&c.queue, e.index)
	t := e.rec.CorrelationTuple()
	if c.table[t] == e {
		if e.next == nil {
			delete(c.table, t)
		} else {
			c.table[t] = e.next
		}
	} else {
		for p := c.table[t]; p != nil; p = p.next {
			if p.next == e {
				p.next = e.next
				break
			}
		}
	}
	c.entries--
	c.m.Pending.Set(float64(c.entries))
	if e.dirty {
		emit(c.export(e, reason))
	}
}

// passThrough builds the output for a record that needs neither a peer nor
// aggregation, without a table entry.
func (c *Correlator) passThrough(in *Input) *Record {
	r := &in.Record
	out := &Record{Record: *r, Correlation: StatusNotRequired}
	if in.Seq != 0 {
		out.Seqs = []uint64{in.Seq}
	}
	out.L7 = flow.L7{}
	if err := mergeL7(&out.L7, &r.L7); err != nil {
		c.m.L7Errors.Inc()
		klog.V(4).InfoS("Dropped invalid httpVals", "tuple", r.Tuple, "err", err)
	}
	s := &out.FromSource
	s.Seen, s.Exporter = true, in.Exporter
	c.applyCounters(s, r)
	fillThroughput(s, r.StartNanos)
	out.FromDestination = *s
	out.Throughput, out.ReverseThroughput = s.Throughput, s.ReverseThroughput
	out.L7Counts = c.countL7(&out.L7)
	if int(flow.EndOfFlow) < len(c.exported) {
		c.exported[flow.EndOfFlow].Inc()
	}
	return out
}

// countL7 is CountL7 with its error counted: the merge already rejected
// invalid httpVals, so one here means a bug, not bad input.
func (c *Correlator) countL7(l *flow.L7) L7Counts {
	n, err := CountL7(l)
	if err != nil {
		c.m.L7Errors.Inc()
		klog.V(4).InfoS("Counting L7 transactions", "err", err)
	}
	return n
}

// fillThroughput sets s's throughput over the interval from prevEnd to the
// node's latest end.
func fillThroughput(s *Side, prevEnd int64) {
	s.Throughput, s.ReverseThroughput = 0, 0
	if !s.Seen || prevEnd <= 0 {
		return
	}
	if iv := s.EndNanos - prevEnd; iv > 0 {
		secs := float64(iv) / 1e9
		s.Throughput = uint64(float64(s.FwdDelta.Bytes) * 8 / secs)
		s.ReverseThroughput = uint64(float64(s.RevDelta.Bytes) * 8 / secs)
	}
}

// export builds the record handed to the sinks and starts a new delta
// interval.
func (c *Correlator) export(e *entry, reason flow.EndReason) *Record {
	fillThroughput(&e.rec.FromSource, e.prevEnd[sideSource])
	fillThroughput(&e.rec.FromDestination, e.prevEnd[sideDestination])
	out := new(Record)
	*out = e.rec
	out.EndReason = reason
	if !e.needsPeer {
		// One node reported the whole connection: it speaks for both
		// sides of the row. The entry keeps its destination side unseen,
		// or ended() would wait for an end-of-flow that never comes.
		out.FromDestination = out.FromSource
	}
	primary := &out.FromSource
	if !primary.Seen {
		primary = &out.FromDestination
	}
	out.Fwd, out.Rev = primary.Fwd, primary.Rev
	out.FwdDelta, out.RevDelta = primary.FwdDelta, primary.RevDelta
	out.Throughput, out.ReverseThroughput = primary.Throughput, primary.ReverseThroughput
	switch {
	case !e.needsPeer:
		out.Correlation = StatusNotRequired
	case out.FromSource.Seen && out.FromDestination.Seen:
		out.Correlation = StatusCorrelated
	default:
		out.Correlation = StatusUnmatched
	}
	e.dirty = false
	out.Seqs, e.seqs = e.seqs, nil
	// Counted before the entry forgets the transactions: out.L7 is a copy.
	out.L7Counts = c.countL7(&out.L7)
	resetTransactions(&e.rec.L7)
	e.health.reset(&e.rec.Health)
	for i, s := range []*Side{&e.rec.FromSource, &e.rec.FromDestination} {
		s.FwdDelta, s.RevDelta = flow.Counters{}, flow.Counters{}
		if s.Seen {
			e.prevEnd[i] = s.EndNanos
		}
	}
	if int(reason) < len(c.exported) {
		c.exported[reason].Inc()
	} else {
		c.m.Exported.WithLabelValues(reason.String()).Inc()
	}
	return out
}

// Run owns the Correlator: it adds what arrives on in, exports on deadlines
// and, when in is closed or ctx is done, drains what is already queued and
// flushes the table. emit is called from Run's goroutine only.
func (c *Correlator) Run(ctx context.Context, in <-chan Input, emit func(*Record)) error {
	t := time.NewTicker(c.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case i, ok := <-in:
					if !ok {
						c.Flush(emit)
						return nil
					}
					c.Add(&i, time.Now(), emit)
				default:
					c.Flush(emit)
					if errors.Is(ctx.Err(), context.Canceled) {
						return nil
					}
					return ctx.Err()
				}
			}
		case i, ok := <-in:
			if !ok {
				c.Flush(emit)
				return nil
			}
			now := time.Now()
			c.Add(&i, now, emit)
			c.Expire(now, emit)
		case now := <-t.C:
			c.Expire(now, emit)
		}
	}
}

type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.index = -1
	*h = old[:len(old)-1]
	return e
}
