package l7e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/flowlens/flowlens/pkg/eve"
)

// ErrStopped is Probe.Wait's error when its stop channel closed.
var ErrStopped = errors.New("wait stopped")

// Probe is an EVE socket of its own that Suricata also logs to: it tells a
// caller what Suricata saw (to wait until it captures, and to know that an
// event for a connection exists, whatever the agent did with it).
type Probe struct {
	mu      sync.Mutex
	events  []eve.Event
	changed chan struct{}
	cancel  context.CancelFunc
	done    chan error
}

// StartProbe listens on the unix stream socket path.
func StartProbe(path string) (*Probe, error) {
	p := &Probe{changed: make(chan struct{}, 1), done: make(chan error, 1)}
	r, err := eve.New(eve.Config{Source: eve.SourceUnixStream, Path: path, Handler: p.add}, nil)
	if err != nil {
		return nil, fmt.Errorf("eve probe: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { p.done <- r.Run(ctx) }()
	return p, nil
}

func (p *Probe) add(ev eve.Event) {
	p.mu.Lock()
	p.events = append(p.events, ev)
	p.mu.Unlock()
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// Close stops the reader and removes the socket.
func (p *Probe) Close() error {
	p.cancel()
	return <-p.done
}

// Wait returns the first event (in arrival order) for which match is true,
// waiting up to timeout; a close of stop (may be nil, e.g. Sensor.Done)
// ends the wait early with ErrStopped.
func (p *Probe) Wait(timeout time.Duration, stop <-chan struct{}, match func(eve.Event) bool) (eve.Event, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		p.mu.Lock()
		evs := p.events[seen:]
		seen = len(p.events)
		p.mu.Unlock()
		for _, ev := range evs {
			if match(ev) {
				return ev, nil
			}
		}
		// Rescan only the new ones next time; events are never removed.
		select {
		case <-p.changed:
		case <-stop:
			return eve.Event{}, ErrStopped
		case <-deadline.C:
			return eve.Event{}, fmt.Errorf("no matching EVE event from Suricata within %s; it logged:\n%s", timeout, p.summary())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// summary lists the events received, one line each.
func (p *Probe) summary() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, ev := range p.events {
		fmt.Fprintf(&b, "    %s %s app_proto=%q", ev.Type, ev.Tuple, ev.AppProto)
		if ev.HTTP != nil {
			fmt.Fprintf(&b, " http=%s %s%s %d", ev.HTTP.Method, ev.HTTP.Hostname, ev.HTTP.URL, ev.HTTP.Status)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Involves reports whether the event's tuple has endpoint a (either side).
func Involves(ev eve.Event, a netip.AddrPort) bool {
	t := ev.Tuple
	return (t.Src() == a.Addr() && t.SrcPort == a.Port()) || (t.Dst() == a.Addr() && t.DstPort == a.Port())
}
