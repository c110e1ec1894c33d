package agent

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/eve"
)

// Handoff carries EVE events from the reader's goroutines to the loop over
// a bounded channel, so that only the loop touches the connection store.
//
// Back-pressure is explicit: when the channel is full, Handle waits for the
// loop (counted in flowlens_agent_eve_handoff_waits_total) and the reader
// stops reading meanwhile, so Suricata buffers (socket sources) or the file
// grows (file source); nothing is dropped for being too fast. Events the
// loop no longer takes because the agent stops are counted in
// flowlens_agent_eve_events_discarded_total.
type Handoff struct {
	ch        chan eve.Event
	closeOnce sync.Once
	quit      chan struct{}
	waits     prometheus.Counter
	discarded prometheus.Counter
}

// NewHandoff returns a Handoff buffering up to size events and registers
// its metrics on reg (nil: not registered).
func NewHandoff(size int, reg prometheus.Registerer) (*Handoff, error) {
	if size < 0 {
		return nil, fmt.Errorf("eve handoff: size %d must not be negative", size)
	}
	h := &Handoff{
		ch:   make(chan eve.Event, size),
		quit: make(chan struct{}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_eve_handoff_waits_total",
			Help: "EVE events the reader had to hold because the agent loop's queue was full (the reader paused; Suricata buffered).",
		}),
		discarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_eve_events_discarded_total",
			Help: "EVE events read but not given to the L7 stage because the agent was stopping.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{h.waits, h.discarded} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register eve handoff metrics: %w", err)
			}
		}
	}
	return h, nil
}

// Events is the loop's end (LoopConfig.L7Events).
func (h *Handoff) Events() <-chan eve.Event { return h.ch }

// Handle is the EVE reader's Handler; it may be called from several
// goroutines. It returns once the loop's channel took ev, or, if the
// handoff is closed, after counting ev as discarded.
func (h *Handoff) Handle(ev eve.Event) {
	select {
	case <-h.quit:
		h.discarded.Inc()
		return
	default:
	}
	select {
	case h.ch <- ev:
		return
	default:
	}
	h.waits.Inc()
	select {
	case h.ch <- ev:
	case <-h.quit:
		h.discarded.Inc()
	}
}

// Close tells Handle that the loop has stopped: waiting calls return and
// later ones discard. Call it after the loop returned and before waiting
// for the reader; then call DiscardRemaining once the reader has stopped.
func (h *Handoff) Close() { h.closeOnce.Do(func() { close(h.quit) }) }

// DiscardRemaining counts the events left in the channel, which no loop
// will read; call it after the reader stopped.
func (h *Handoff) DiscardRemaining() {
	for {
		select {
		case <-h.ch:
			h.discarded.Inc()
		default:
			return
		}
	}
}
