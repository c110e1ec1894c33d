// Package l7 attaches Suricata EVE events to the connections flowlens
// exports: it matches each event to a connection whatever the orientation
// it was logged in (and through Service DNAT), keeps it only when one end
// of the connection opted into L7 export, accumulates appProtocolName,
// httpVals (one JSON object keyed by transaction id), DNS and TLS details
// per connection, and hands them to the connection's next record exactly
// once.
//
// Events that arrive before conntrack reports their connection wait in a
// bounded pending buffer and are retried by Tick.
//
// An Enricher is not safe for concurrent use. The agent calls Ingest, Tick
// and Enrich from its loop goroutine, the one that owns the connection
// store, so neither the store nor the Enricher needs a lock; the EVE reader
// hands events to that goroutine over a bounded channel (pkg/agent).
package l7

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
)

// Connections finds the connection an event belongs to. LookupConn must
// accept the tuple in either orientation and with the Service VIP as the
// server (pkg/connstore does). It is only called from Ingest and Tick, on
// the caller's goroutine.
type Connections interface {
	LookupConn(t flow.Tuple) (flow.Conn, bool)
}

// Policy says which ends of a connection opted into L7 export (the
// visibility.antrea.io/l7-export annotation, pkg/k8smeta).
type Policy interface {
	L7Want(c *flow.Conn) flow.L7Want
}

// Defaults for Config fields left zero.
const (
	DefaultMaxPending          = 4096
	DefaultMaxPendingAge       = 5 * time.Second
	DefaultMaxHTTPTransactions = 32
	// DefaultMaxHTTPBytes keeps httpVals well inside one IPFIX
	// variable-length field (65535) and a typical MTU-sized message set.
	DefaultMaxHTTPBytes   = 16 << 10
	DefaultMaxConnections = 65536
	DefaultStateMaxAge    = 10 * time.Minute
)

// Config configures an Enricher.
type Config struct {
	Connections Connections // required
	Policy      Policy      // required
	// NamespaceOf returns the namespace of the pod with this address, ""
	// if none; only needed when NamespacePrivacy is set.
	NamespaceOf func(addr netip.Addr) string
	// DefaultPrivacy applies to every namespace without an override; its
	// zero value drops query strings.
	DefaultPrivacy Privacy
	// NamespacePrivacy overrides DefaultPrivacy per namespace. When both
	// ends opted in, the stricter of their policies applies.
	NamespacePrivacy map[string]Privacy

	// MaxPending bounds events waiting for their connection; the oldest
	// is dropped when full.
	MaxPending int
	// MaxPendingAge is how long an event waits for its connection.
	MaxPendingAge time.Duration
	// MaxHTTPTransactions and MaxHTTPBytes bound httpVals per record;
	// transactions beyond them are counted and left out.
	MaxHTTPTransactions int
	MaxHTTPBytes        int
	// MaxConnections bounds how many connections hold L7 state.
	MaxConnections int
	// StateMaxAge drops the state of a connection that neither received
	// an event nor was exported for that long (its records stopped).
	StateMaxAge time.Duration
}

// Enricher matches EVE events to connections and fills records' L7 fields.
// Its methods must be called from one goroutine (see the package comment).
type Enricher struct {
	cfg Config
	lim limits
	m   *metrics

	state     map[flow.Tuple]*connState
	pending   []pendingEvent
	lastSweep time.Time
}

type pendingEvent struct {
	ev eve.Event
	at time.Time
}

// New validates cfg and returns an Enricher whose metrics are registered on
// reg (nil: counted but not registered).
func New(cfg Config, reg prometheus.Registerer) (*Enricher, error) {
	if cfg.Connections == nil {
		return nil, errors.New("l7: Connections is required")
	}
	if cfg.Policy == nil {
		return nil, errors.New("l7: Policy is required")
	}
	if len(cfg.NamespacePrivacy) > 0 && cfg.NamespaceOf == nil {
		return nil, errors.New("l7: NamespaceOf is required when NamespacePrivacy is set")
	}
	defInt := func(name string, v *int, def int) error {
		if *v == 0 {
			*v = def
		}
		if *v < 0 {
			return fmt.Errorf("l7: %s %d must be positive", name, *v)
		}
		return nil
	}
	defDur := func(name string, v *time.Duration, def time.Duration) error {
		if *v == 0 {
			*v = def
		}
		if *v < 0 {
			return fmt.Errorf("l7: %s %s must be positive", name, *v)
		}
		return nil
	}
	for _, err := range []error{
		defInt("MaxPending", &cfg.MaxPending, DefaultMaxPending),
		defInt("MaxHTTPTransactions", &cfg.MaxHTTPTransactions, DefaultMaxHTTPTransactions),
		defInt("MaxHTTPBytes", &cfg.MaxHTTPBytes, DefaultMaxHTTPBytes),
		defInt("MaxConnections", &cfg.MaxConnections, DefaultMaxConnections),
		defDur("MaxPendingAge", &cfg.MaxPendingAge, DefaultMaxPendingAge),
		defDur("StateMaxAge", &cfg.StateMaxAge, DefaultStateMaxAge),
	} {
		if err != nil {
			return nil, err
		}
	}
	if cfg.MaxHTTPBytes > 65535 {
		return nil, fmt.Errorf("l7: MaxHTTPBytes %d exceeds an IPFIX variable-length field (65535)", cfg.MaxHTTPBytes)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Enricher{
		cfg:   cfg,
		lim:   limits{maxTx: cfg.MaxHTTPTransactions, maxBytes: cfg.MaxHTTPBytes},
		m:     m,
		state: map[flow.Tuple]*connState{},
	}, nil
}

// carriesL7 reports whether an event has anything to export.
func carriesL7(ev *eve.Event) bool {
	return ev.AppProto != "" || ev.HTTP != nil || ev.DNS != nil || ev.TLS != nil
}

// Ingest takes one event from the EVE reader. now is the arrival time, used
// for the pending buffer and state expiry (event timestamps are the
// sensor's clock, not ours).
func (e *Enricher) Ingest(ev eve.Event, now time.Time) {
	if !carriesL7(&ev) {
		e.m.dropped[dropNoL7].Inc()
		return
	}
	if c, ok := e.lookup(ev.Tuple); ok {
		e.apply(&c, &ev, now)
		return
	}
	e.m.deferred.Inc()
	if len(e.pending) >= e.cfg.MaxPending {
		e.pending[0] = pendingEvent{} // release its strings now
		e.pending = e.pending[1:]
		e.m.dropped[dropPendingFull].Inc()
	}
	e.pending = append(e.pending, pendingEvent{ev: ev, at: now})
	e.m.pending.Set(float64(len(e.pending)))
}

func (e *Enricher) lookup(t flow.Tuple) (flow.Conn, bool) {
	return e.cfg.Connections.LookupConn(t)
}

// apply gates an event on the opt-in policy and accumulates it under the
// store's tuple for the connection.
func (e *Enricher) apply(c *flow.Conn, ev *eve.Event, now time.Time) {
	want := e.cfg.Policy.L7Want(c)
	if !want.Any() {
		e.m.dropped[dropNotWanted].Inc()
		return
	}
	p := e.privacyFor(c, want)
	s := e.state[c.Tuple]
	if s == nil {
		if len(e.state) >= e.cfg.MaxConnections {
			e.m.dropped[dropStateFull].Inc()
			return
		}
		s = &connState{}
		e.state[c.Tuple] = s
		e.m.connections.Set(float64(len(e.state)))
	}
	s.touched = now
	if t := s.add(ev, p, e.lim); t != "" {
		e.m.truncated[string(t)].Inc()
	}
	e.m.matched.Inc()
}

// privacyFor is the policy of the namespaces that asked for the export;
// when both ends did, what either drops is dropped.
func (e *Enricher) privacyFor(c *flow.Conn, want flow.L7Want) Privacy {
	if len(e.cfg.NamespacePrivacy) == 0 {
		return e.cfg.DefaultPrivacy
	}
	of := func(a netip.Addr) Privacy {
		if p, ok := e.cfg.NamespacePrivacy[e.cfg.NamespaceOf(a)]; ok {
			return p
		}
		return e.cfg.DefaultPrivacy
	}
	var p Privacy
	first := true
	for _, end := range []struct {
		bit  flow.L7Want
		addr netip.Addr
	}{{flow.L7Source, c.Tuple.Src()}, {flow.L7Destination, c.Tuple.Dst()}} {
		if want&end.bit == 0 {
			continue
		}
		if first {
			p, first = of(end.addr), false
		} else {
			p = p.stricter(of(end.addr))
		}
	}
	return p
}

// Enrich fills r.L7 with what the connection accumulated since its previous
// record, and forgets the transactions so each is exported once. The
// connection's app protocol and TLS handshake stay for its later records;
// a final record (any end reason but active timeout) drops all state.
// Records of connections without L7 state are left untouched.
func (e *Enricher) Enrich(r *flow.Record) {
	s := e.state[r.Tuple]
	if s == nil {
		return
	}
	s.fill(&r.L7)
	e.m.enriched.Inc()
	if r.EndReason != flow.EndActiveTimeout {
		delete(e.state, r.Tuple)
		e.m.connections.Set(float64(len(e.state)))
		return
	}
	if r.ExportNanos != 0 {
		s.touched = time.Unix(0, r.ExportNanos)
	}
}

// Tick retries pending events against the connection store, drops those
// older than MaxPendingAge, and expires idle per-connection state.
func (e *Enricher) Tick(now time.Time) {
	// Compact in place, keeping arrival order.
	keep := e.pending[:0]
	for i := range e.pending {
		p := &e.pending[i]
		if now.Sub(p.at) > e.cfg.MaxPendingAge {
			e.m.dropped[dropUnmatched].Inc()
			continue
		}
		if c, ok := e.lookup(p.ev.Tuple); ok {
			e.apply(&c, &p.ev, now)
			continue
		}
		keep = append(keep, *p)
	}
	clear(e.pending[len(keep):]) // release the strings of events let go
	e.pending = keep
	e.m.pending.Set(float64(len(e.pending)))

	// A full sweep costs a pass over the map; a tenth of the age is
	// precise enough.
	if now.Sub(e.lastSweep) < e.cfg.StateMaxAge/10 {
		return
	}
	e.lastSweep = now
	for t, s := range e.state {
		if now.Sub(s.touched) > e.cfg.StateMaxAge {
			delete(e.state, t)
			e.m.stateExpired.Inc()
		}
	}
	e.m.connections.Set(float64(len(e.state)))
}

// Pending returns how many events wait for their connection.
func (e *Enricher) Pending() int { return len(e.pending) }

// L7Of is what a record would carry for this one event alone, under
// privacy policy p: what `flowlens eve check --json` prints.
func L7Of(ev eve.Event, p Privacy) flow.L7 {
	var s connState
	s.add(&ev, p, limits{maxTx: 1, maxBytes: 65535})
	var l flow.L7
	s.fill(&l)
	return l
}
