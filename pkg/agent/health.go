package agent

import (
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

// Health is healthy while dumps of the connection source keep succeeding:
// an agent whose source is broken exports nothing and should be restarted,
// not trusted. The loop reports dumps; the HTTP server asks from its own
// goroutines, hence the atomic.
type Health struct {
	clock       Clock
	maxAge      time.Duration
	lastSuccess atomic.Int64 // Unix nanoseconds of the last good dump; 0: none yet
	// others are the other stages' checks (the EVE socket), added before
	// the HTTP server starts and only read after.
	others []namedCheck
}

type namedCheck struct {
	name  string
	check func() error
}

// AddCheck makes check part of Check under name; call it before serving.
func (h *Health) AddCheck(name string, check func() error) {
	h.others = append(h.others, namedCheck{name, check})
}

// NewHealth returns a Health that turns unhealthy when the last complete
// dump is older than maxAge (or there was none yet). A nil clock is the
// system clock.
func NewHealth(clock Clock, maxAge time.Duration) *Health {
	if clock == nil {
		clock = SystemClock{}
	}
	return &Health{clock: clock, maxAge: maxAge}
}

// DumpSucceeded records a complete dump that ended at t.
func (h *Health) DumpSucceeded(t time.Time) { h.lastSuccess.Store(t.UnixNano()) }

// Check returns nil when healthy, else every reason why not.
func (h *Health) Check() error {
	errs := []error{h.checkDumps()}
	for _, c := range h.others {
		if err := c.check(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.name, err))
		}
	}
	return errors.Join(errs...)
}

func (h *Health) checkDumps() error {
	last := h.lastSuccess.Load()
	if last == 0 {
		return fmt.Errorf("no conntrack dump has succeeded yet")
	}
	if age := h.clock.Now().Sub(time.Unix(0, last)); age > h.maxAge {
		return fmt.Errorf("last good conntrack dump %s ago", age.Round(time.Millisecond))
	}
	return nil
}

// ServeHTTP answers /healthz: 200 "ok" or 503 with the reason.
func (h *Health) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	if err := h.Check(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}
