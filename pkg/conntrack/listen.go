package conntrack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Listen subscribes to the namespace's conntrack events and calls fn for each
// NEW and DESTROY (and UPDATE with Config.UpdateEvents) entry that passes the
// zone/mark filter, on the calling goroutine, until ctx is done; then it
// returns nil. With Config.EventBatchDelay the calls come in bursts, each
// ended by an EventBatchEnd. A callback rather than a channel keeps the reused Conn valid
// for exactly one call and lets a slow consumer show up as EventOverrun
// instead of an unbounded queue.
//
// When the kernel drops events because the socket buffer is full (ENOBUFS),
// Listen counts it, calls fn with an EventOverrun and goes on: the caller
// should then Dump to learn what it missed. Other socket errors end Listen
// with an error.
func (s *Source) Listen(ctx context.Context, fn func(Event)) error {
	groups := uint32(groupNew | groupDestroy)
	if s.cfg.UpdateEvents {
		groups |= groupUpdate
	}
	sock, err := s.openEvents(groups, s.cfg.EventBufferBytes)
	if err != nil {
		return fmt.Errorf("listen to conntrack events of netns %q: %w", s.cfg.NetNSPath, err)
	}

	// Cancellation wakes the blocked read through a past deadline; the
	// watcher is waited for before the socket closes.
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			sock.setDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()
	defer func() {
		close(done)
		wg.Wait()
		sock.close()
	}()

	buf := make([]byte, recvBufSize)
	var conn flow.Conn
	// batching: the last read found a datagram, so the next one does not
	// wait for one; an empty socket then costs one pause of
	// EventBatchDelay (the batch gathers) before waiting again.
	batching := false
	var pause *time.Timer
	for {
		var n int
		var err error
		if batching {
			var ok bool
			n, ok, err = sock.tryRecv(buf)
			if err == nil && !ok {
				fn(Event{Type: EventBatchEnd})
				if pause == nil {
					pause = time.NewTimer(s.cfg.EventBatchDelay)
				} else {
					pause.Reset(s.cfg.EventBatchDelay)
				}
				select {
				case <-ctx.Done():
					pause.Stop()
					return nil
				case <-pause.C:
				}
				if n, ok, err = sock.tryRecv(buf); err == nil && !ok {
					batching = false // quiet: wait for the next event
					continue
				}
			}
		} else {
			n, err = sock.recv(buf)
			batching = s.cfg.EventBatchDelay > 0
		}
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			if errors.Is(err, syscall.ENOBUFS) {
				s.m.eventOverruns.Inc()
				klog.InfoS("Conntrack event socket overran, events lost", "netns", s.cfg.NetNSPath)
				fn(Event{Type: EventOverrun})
				continue
			}
			s.m.eventErrors.Inc()
			return fmt.Errorf("receive conntrack events of netns %q: %w", s.cfg.NetNSPath, err)
		}
		var st decodeStats
		s.handleEvents(buf[:n], &conn, &st, fn)
		st.flush(s.m, "events")
	}
}

// EventStream is a subscription to the namespace's conntrack events that
// its owner reads when it chooses (Drain), with no goroutine of its own:
// for a caller that takes events at its own ticks anyway, which then wakes
// for ticks only. The kernel queues the events in between, in the socket's
// receive buffer (Config.EventBufferBytes); one that overflows is reported
// as EventOverrun by the next Drain.
type EventStream struct {
	s    *Source
	sock eventSocket
	buf  []byte
	conn flow.Conn
}

// maxDrainDatagrams bounds one Drain, so that a flood cannot hold its
// caller forever; the rest is read by the next one.
const maxDrainDatagrams = 1 << 16

// OpenEvents subscribes to NEW and DESTROY events (and UPDATE with
// Config.UpdateEvents), as Listen does.
func (s *Source) OpenEvents() (*EventStream, error) {
	groups := uint32(groupNew | groupDestroy)
	if s.cfg.UpdateEvents {
		groups |= groupUpdate
	}
	sock, err := s.openEvents(groups, s.cfg.EventBufferBytes)
	if err != nil {
		return nil, fmt.Errorf("listen to conntrack events of netns %q: %w", s.cfg.NetNSPath, err)
	}
	return &EventStream{s: s, sock: sock, buf: make([]byte, recvBufSize)}, nil
}

// Drain calls fn for each event queued now that passes the zone/mark
// filter, in order, without waiting for more; when max > 0 it reads at
// most max datagrams (a datagram holds one event, or a few). The event's
// Conn is valid during the call only. A socket error other than an
// overrun ends it.
func (e *EventStream) Drain(max int, fn func(Event)) error {
	if max <= 0 || max > maxDrainDatagrams {
		max = maxDrainDatagrams
	}
	for i := 0; i < max; i++ {
		n, ok, err := e.sock.tryRecv(e.buf)
		if err == nil && !ok {
			return nil
		}
		if err != nil {
			if errors.Is(err, syscall.ENOBUFS) {
				e.s.m.eventOverruns.Inc()
				klog.InfoS("Conntrack event socket overran, events lost", "netns", e.s.cfg.NetNSPath)
				fn(Event{Type: EventOverrun})
				continue
			}
			e.s.m.eventErrors.Inc()
			return fmt.Errorf("receive conntrack events of netns %q: %w", e.s.cfg.NetNSPath, err)
		}
		var st decodeStats
		e.s.handleEvents(e.buf[:n], &e.conn, &st, fn)
		st.flush(e.s.m, "events")
	}
	return nil
}

// Close ends the subscription.
func (e *EventStream) Close() error { return e.sock.close() }

// handleEvents decodes the event messages of one datagram.
func (s *Source) handleEvents(b []byte, conn *flow.Conn, st *decodeStats, fn func(Event)) {
	for {
		m, rest, ok, err := nextMsg(b)
		if err != nil {
			st.errors++
			st.firstErr = fmt.Errorf("parse event message: %w", err)
			return
		}
		if !ok {
			return
		}
		b = rest
		typ, ok := eventType(m)
		if !ok {
			continue
		}
		payload, ok := ctPayload(m)
		if !ok || !s.decodeFiltered(payload, conn, st) {
			continue
		}
		s.m.events[typ].Inc()
		fn(Event{Type: typ, Conn: conn})
	}
}
