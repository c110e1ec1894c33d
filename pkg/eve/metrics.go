package eve

import (
	"fmt"
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Observer is told the outcome of every line a Reader reads. Calls may come
// from several goroutines at once (one per stream connection).
type Observer interface {
	Parsed(ev *Event)
	Rejected(r Reason)
}

// Metrics counts lines by outcome on Prometheus collectors; it is the
// Observer the agent uses.
type Metrics struct {
	events      *prometheus.CounterVec
	rejected    map[Reason]prometheus.Counter
	connections prometheus.Counter
	readErrors  prometheus.Counter
}

// NewMetrics creates the collectors and registers them on reg; a nil reg
// leaves them unregistered.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_eve_events_total",
		Help: "EVE records parsed, by event_type (only known types are counted, so the label set is bounded).",
	}, []string{"event_type"})
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_eve_lines_rejected_total",
		Help: "EVE lines skipped, by reason (oversize, invalid_json, no_event_type, unknown_event_type, no_tuple, bad_timestamp, empty).",
	}, []string{"reason"})
	m := &Metrics{
		events:   events,
		rejected: map[Reason]prometheus.Counter{},
		connections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_eve_connections_total",
			Help: "Connections accepted from Suricata on the EVE unix stream socket.",
		}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_eve_read_errors_total",
			Help: "Read errors on an EVE source (connection reset, file vanished); the reader recovers.",
		}),
	}
	for _, r := range AllReasons() {
		m.rejected[r] = rejected.WithLabelValues(string(r))
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{events, rejected, m.connections, m.readErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register eve metrics: %w", err)
		}
	}
	return m, nil
}

// Parsed implements Observer.
func (m *Metrics) Parsed(ev *Event) { m.events.WithLabelValues(ev.Type).Inc() }

// Rejected implements Observer.
func (m *Metrics) Rejected(r Reason) {
	if c, ok := m.rejected[r]; ok {
		c.Inc()
	}
}

func (m *Metrics) connection() {
	if m != nil {
		m.connections.Inc()
	}
}

func (m *Metrics) readError() {
	if m != nil {
		m.readErrors.Inc()
	}
}

// Tally is an Observer that keeps counts in memory, for `flowlens eve
// check` and tests.
type Tally struct {
	mu       sync.Mutex
	types    map[string]int
	rejected map[Reason]int
}

// Parsed implements Observer.
func (t *Tally) Parsed(ev *Event) {
	t.mu.Lock()
	if t.types == nil {
		t.types = map[string]int{}
	}
	t.types[ev.Type]++
	t.mu.Unlock()
}

// Rejected implements Observer.
func (t *Tally) Rejected(r Reason) {
	t.mu.Lock()
	if t.rejected == nil {
		t.rejected = map[Reason]int{}
	}
	t.rejected[r]++
	t.mu.Unlock()
}

// Count is one row of a Tally.
type Count struct {
	Key string
	N   int
}

// Types returns parsed-record counts by event type, sorted by type.
func (t *Tally) Types() []Count {
	t.mu.Lock()
	defer t.mu.Unlock()
	return sortedCounts(t.types)
}

// RejectedCounts returns rejected-line counts by reason, sorted by reason.
func (t *Tally) RejectedCounts() []Count {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[string]int, len(t.rejected))
	for r, n := range t.rejected {
		m[string(r)] = n
	}
	return sortedCounts(m)
}

// Totals returns the number of parsed and rejected lines.
func (t *Tally) Totals() (parsed, rejected int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range t.types {
		parsed += n
	}
	for _, n := range t.rejected {
		rejected += n
	}
	return parsed, rejected
}

func sortedCounts(m map[string]int) []Count {
	out := make([]Count, 0, len(m))
	for k, n := range m {
		out = append(out, Count{Key: k, N: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}
