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

// metrics counts lines by outcome, connections and errors on Prometheus
// collectors; it is the Observer every Reader uses.
type metrics struct {
	events          *prometheus.CounterVec
	rejected        map[Reason]prometheus.Counter
	connections     prometheus.Counter
	readErrors      prometheus.Counter
	clients         prometheus.Gauge
	clientsRefused  prometheus.Counter
	socketRecreated prometheus.Counter
	socketReady     prometheus.Gauge
}

// newMetrics creates the collectors and registers them on reg; a nil reg
// leaves them unregistered. budget is reported as the buffered bytes.
func newMetrics(reg prometheus.Registerer, budget *byteBudget) (*metrics, error) {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_eve_events_total",
		Help: "EVE records parsed, by event_type (only known types are counted, so the label set is bounded).",
	}, []string{"event_type"})
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_eve_lines_rejected_total",
		Help: "EVE lines skipped, by reason (oversize, buffer_full, invalid_json, no_event_type, unknown_event_type, no_tuple, bad_timestamp, empty).",
	}, []string{"reason"})
	m := &metrics{
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
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_eve_clients",
			Help: "Clients connected to the EVE unix stream socket.",
		}),
		clientsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_eve_clients_refused_total",
			Help: "Clients of the EVE unix stream socket closed at once because MaxClients were connected.",
		}),
		socketRecreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_eve_socket_recreated_total",
			Help: "Times the EVE socket file was found removed and created again.",
		}),
		socketReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_eve_socket_ready",
			Help: "1 while the EVE socket file is in place and ours (Suricata can connect), else 0; always 1 for a file source.",
		}),
	}
	m.socketReady.Set(1)
	buffered := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flowlens_eve_buffered_bytes",
		Help: "Bytes held in EVE lines not yet complete, over all stream clients (bounded by MaxBufferedBytes).",
	}, func() float64 { return float64(budget.held()) })
	for _, r := range AllReasons() {
		m.rejected[r] = rejected.WithLabelValues(string(r))
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{events, rejected, m.connections, m.readErrors, m.clients, m.clientsRefused, m.socketRecreated, m.socketReady, buffered} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register eve metrics: %w", err)
		}
	}
	return m, nil
}

// Parsed implements Observer.
func (m *metrics) Parsed(ev *Event) { m.events.WithLabelValues(ev.Type).Inc() }

// Rejected implements Observer.
func (m *metrics) Rejected(r Reason) {
	if c, ok := m.rejected[r]; ok {
		c.Inc()
	}
}

func (m *metrics) readError() { m.readErrors.Inc() }

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
