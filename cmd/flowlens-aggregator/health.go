package main

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
)

// sinkHealth is what /healthz asks the sinks (sink.Fanout): nil while they
// deliver, else why not (writes failing for longer than
// health.sinkFailureTimeout, a destination rejecting records, ...).
type sinkHealth interface {
	Healthy() error
}

// health answers /healthz: 200 "ok", or 503 with every reason the
// aggregator is not doing its job. A listener that stopped while the
// aggregator runs loses every agent sending to it; a sink that cannot write
// loses (or, with a full queue, drops) what it is given. Both used to pass
// as "ok".
type health struct {
	mu        sync.Mutex
	listeners []error
	sinks     sinkHealth
}

func newHealth() *health { return &health{} }

// watchSinks sets the sinks to ask; call it before serving.
func (h *health) watchSinks(s sinkHealth) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sinks = s
}

// listenerStopped records that the listener for endpoint ended for good.
func (h *health) listenerStopped(endpoint string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.listeners = append(h.listeners, fmt.Errorf("listener %s stopped: %w", endpoint, err))
}

// check is nil when healthy, else every reason joined.
func (h *health) check() error {
	h.mu.Lock()
	errs := append([]error(nil), h.listeners...)
	sinks := h.sinks
	h.mu.Unlock()
	if sinks != nil {
		if err := sinks.Healthy(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (h *health) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := h.check(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "unhealthy:\n%v\n", err)
		return
	}
	fmt.Fprintln(w, "ok")
}
