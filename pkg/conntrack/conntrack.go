// Package conntrack is the pipeline's conntrack source: it dumps a network
// namespace's conntrack table and listens to its NEW/UPDATE/DESTROY events,
// turning each entry into a flow.Conn.
//
// It speaks ctnetlink itself over a NETLINK_NETFILTER socket and decodes the
// attributes in place into one reused flow.Conn, because a general-purpose
// library (ti-mo/conntrack) allocates a Flow with several nested objects per
// entry, which on a node with 10^5 connections dominates the agent's CPU and
// garbage. The decoder is in decode.go; the hot path allocates nothing per
// entry.
package conntrack

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
)

// Defaults for the optional Config fields.
const (
	DefaultDumpTimeout      = 30 * time.Second
	DefaultEventBufferBytes = 16 << 20
	// dumpRcvBuf only needs to hold a few of the ~32 KiB batches the kernel
	// queues per read; dump throughput does not grow with it.
	dumpRcvBuf = 1 << 20
	// recvBufSize is larger than any datagram the kernel sends: dump
	// batches are capped at 32 KiB and events are single messages.
	recvBufSize = 64 << 10
)

// Config selects the namespace and the entries a Source reports.
type Config struct {
	// NetNSPath is the network namespace file (/run/netns/NAME,
	// /proc/PID/ns/net); empty means the agent's own namespace.
	NetNSPath string
	// Zones lists the conntrack zones to report; empty reports all.
	Zones []uint16
	// Mark and MarkMask report only entries with mark&MarkMask ==
	// Mark&MarkMask; MarkMask 0 disables the filter.
	Mark, MarkMask uint32
	// EnableAccounting tells the caller to call Source.EnableAccounting
	// after New (the agent does it from its config). New itself never
	// writes sysctls, so that building a Source has no side effects on the
	// node and its failure modes stay separate from the sysctls'.
	EnableAccounting bool
	// UpdateEvents subscribes Listen to UPDATE events (TCP state changes,
	// mark changes) as well as NEW and DESTROY. They are numerous.
	UpdateEvents bool
	// DumpTimeout bounds one Dump; 0 means DefaultDumpTimeout.
	DumpTimeout time.Duration
	// EventBufferBytes is the event socket's receive buffer; 0 means
	// DefaultEventBufferBytes. Too small a buffer loses events under load.
	EventBufferBytes int
	// EventBatchDelay, when positive, makes Listen read events in
	// batches: once the socket is empty it waits this long before reading
	// again, so the events of that time are read together instead of the
	// listener (and whoever it hands them to) waking for each. Events are
	// delayed by up to this much; the socket buffer must hold that long's
	// worth (16 MiB is about 50k events).
	EventBatchDelay time.Duration
}

// Source dumps and listens to one namespace's conntrack table. Dump may be
// called from several goroutines (calls are serialised); Listen runs
// independently of Dump on its own socket.
type Source struct {
	cfg    Config
	m      *metrics
	filter filter

	// open makes a dump socket in the namespace and openEvents the event
	// socket; tests replace them with fakes that replay captured
	// datagrams.
	open       func(groups uint32, rcvbuf int) (socket, error)
	openEvents func(groups uint32, rcvbuf int) (eventSocket, error)

	mu   sync.Mutex // guards the dump state below
	sock socket     // dump socket; nil until the first Dump or after a failed one
	buf  []byte
	conn flow.Conn
	seq  uint32
}

// New validates cfg and returns a Source. It opens no socket yet.
func New(cfg Config, reg prometheus.Registerer) (*Source, error) {
	if cfg.NetNSPath != "" {
		if _, err := os.Stat(cfg.NetNSPath); err != nil {
			return nil, fmt.Errorf("conntrack source netns: %w", err)
		}
	}
	if cfg.Mark&^cfg.MarkMask != 0 && cfg.MarkMask != 0 {
		return nil, fmt.Errorf("conntrack source: mark %#x has bits outside mask %#x", cfg.Mark, cfg.MarkMask)
	}
	if cfg.Mark != 0 && cfg.MarkMask == 0 {
		return nil, fmt.Errorf("conntrack source: mark %#x given without a mark mask", cfg.Mark)
	}
	if cfg.DumpTimeout < 0 || cfg.EventBufferBytes < 0 || cfg.EventBatchDelay < 0 {
		return nil, errors.New("conntrack source: negative DumpTimeout, EventBufferBytes or EventBatchDelay")
	}
	// The dump request reads Zones on every call: keep our own copy.
	cfg.Zones = slices.Clone(cfg.Zones)
	if cfg.DumpTimeout == 0 {
		cfg.DumpTimeout = DefaultDumpTimeout
	}
	if cfg.EventBufferBytes == 0 {
		cfg.EventBufferBytes = DefaultEventBufferBytes
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	path := cfg.NetNSPath
	open := func(groups uint32, rcvbuf int) (socket, error) {
		c, err := openNL(path, groups, rcvbuf)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return c, nil
	}
	openEvents := func(groups uint32, rcvbuf int) (eventSocket, error) {
		c, err := openEventNL(path, groups, rcvbuf)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	return &Source{cfg: cfg, m: m, filter: newFilter(cfg), open: open, openEvents: openEvents, buf: make([]byte, recvBufSize)}, nil
}

// socket is what Dump and Get need of a netlink socket.
type socket interface {
	send(b []byte) error
	// recv reads one datagram into b, waiting for one.
	recv(b []byte) (int, error)
	setDeadline(t time.Time) error
	close() error
}

// eventSocket is what Listen needs of the event socket.
type eventSocket interface {
	// recv reads one datagram into b, waiting for one.
	recv(b []byte) (int, error)
	// tryRecv reads one datagram into b if one is queued; ok is false
	// when none is.
	tryRecv(b []byte) (n int, ok bool, err error)
	setDeadline(t time.Time) error
	close() error
}

// Close releases the dump socket. Listen calls end with their context.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sock == nil {
		return nil
	}
	err := s.sock.close()
	s.sock = nil
	return err
}

// accountingSysctls are what EnableAccounting sets, in order: counters,
// start/stop timestamps, events.
var accountingSysctls = [...]string{
	"net.netfilter.nf_conntrack_acct",
	"net.netfilter.nf_conntrack_timestamp",
	"net.netfilter.nf_conntrack_events",
}

// EnableAccounting turns on per-connection counters, timestamps and events
// in the Source's namespace. It tries every sysctl and returns one error
// naming each that could not be set and why; the caller can log it and run
// on without counters or timestamps.
func (s *Source) EnableAccounting() error {
	var errs []error
	for _, name := range accountingSysctls {
		if err := netns.WriteSysctl(s.cfg.NetNSPath, name, "1"); err != nil {
			s.m.accountingErrors.Inc()
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("enable conntrack accounting in netns %q: %w", s.cfg.NetNSPath, errors.Join(errs...))
	}
	return nil
}

// decodeStats are counted locally during a dump and added to the metrics
// once, so the per-entry path does no atomic operations.
type decodeStats struct {
	decoded, filtered, errors int
	firstErr                  error
}

func (s *decodeStats) flush(m *metrics, what string) {
	m.entriesDecoded.Add(float64(s.decoded))
	m.entriesFiltered.Add(float64(s.filtered))
	if s.errors > 0 {
		m.decodeErrors.Add(float64(s.errors))
		klog.ErrorS(s.firstErr, "Dropped undecodable conntrack messages", "source", what, "count", s.errors)
	}
}

// decodeFiltered decodes one ctnetlink conntrack payload into c and reports
// whether it passes the Source's filter.
func (s *Source) decodeFiltered(payload []byte, c *flow.Conn, st *decodeStats) bool {
	if err := decodeConn(payload, c); err != nil {
		st.errors++
		if st.firstErr == nil {
			st.firstErr = err
		}
		return false
	}
	st.decoded++
	if !s.filter.match(c.Zone, c.Mark) {
		st.filtered++
		return false
	}
	return true
}

// Dump reads the whole conntrack table of the namespace (IPv4 and IPv6),
// calling fn once per entry that passes the zone/mark filter. The *flow.Conn
// is reused: it is valid only during the call, so fn copies what it keeps.
// fn must not call Dump. An entry that cannot be decoded is counted, logged
// and skipped; the dump goes on.
func (s *Source) Dump(fn func(*flow.Conn)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	s.m.dumps.Inc()
	var st decodeStats
	err := s.dumpLocked(fn, &st)
	st.flush(s.m, "dump")
	s.m.dumpDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.dumpErrors.Inc()
		// The rest of a dump that failed half-way is still queued on the
		// socket; a fresh socket next time is simpler than draining it.
		if s.sock != nil {
			s.sock.close()
			s.sock = nil
		}
		return fmt.Errorf("dump conntrack table of netns %q: %w", s.cfg.NetNSPath, err)
	}
	return nil
}

func (s *Source) dumpLocked(fn func(*flow.Conn), st *decodeStats) error {
	if s.sock == nil {
		sock, err := s.open(0, dumpRcvBuf)
		if err != nil {
			return err
		}
		s.sock = sock
	}
	s.seq++
	if err := s.sock.setDeadline(time.Now().Add(s.cfg.DumpTimeout)); err != nil {
		return fmt.Errorf("set dump deadline: %w", err)
	}
	if err := s.sock.send(dumpRequest(s.cfg, s.seq)); err != nil {
		return fmt.Errorf("send dump request: %w", err)
	}
	for {
		n, err := s.sock.recv(s.buf)
		if err != nil {
			return fmt.Errorf("receive dump: %w", err)
		}
		b := s.buf[:n]
		for {
			m, rest, ok, err := nextMsg(b)
			if err != nil {
				return fmt.Errorf("parse dump message: %w", err)
			}
			if !ok {
				break
			}
			b = rest
			if m.seq != s.seq {
				continue // left over from an earlier request
			}
			switch m.typ {
			case nlmsgDone:
				if err := errnoOf(m.payload); err != nil {
					return fmt.Errorf("kernel ended dump: %w", err)
				}
				return nil
			case nlmsgError:
				if err := errnoOf(m.payload); err != nil {
					return fmt.Errorf("kernel refused dump: %w", err)
				}
				continue
			}
			payload, ok := ctPayload(m)
			if !ok {
				continue
			}
			if s.decodeFiltered(payload, &s.conn, st) {
				fn(&s.conn)
			}
		}
	}
}
