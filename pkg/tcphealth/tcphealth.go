// Package tcphealth reports the TCP health of a node's connections (RTT,
// retransmitted segments, resets, time to establish, zero-window events)
// from eBPF programs on the kernel's tcp and sock tracepoints, into
// flow.Record.Health through an Enricher.
//
// # Kernel side (bpf/tcphealth.c)
//
// BTF tracepoint programs (tp_btf: no tracefs, no kprobes) keep one entry
// per socket in an LRU hash map keyed by the socket's (local, remote)
// tuple in flow.Tuple's layout (IPv4 v4-mapped), IPv4 and IPv6:
//
//   - tcp_probe (every segment an established socket receives): an RTT
//     sample (the socket's smoothed RTT, srtt_us>>3, in µs) added to a
//     cumulative sum and count, and into the period's min/max; a zero
//     window (the peer's snd_wnd == 0) counted on each transition into it.
//   - tcp_retransmit_skb / tcp_retransmit_synack: segments retransmitted
//     by the socket (tcp_skb_pcount of each skb sent again; SYN-ACKs from
//     the server's request socket, under the connection's tuple).
//   - tcp_send_reset: an RST the stack sent for the socket. Where no
//     socket owns the segment answered (a closed port), the tuple comes
//     from the segment's headers and the entry is born closed.
//   - tcp_receive_reset: an RST the socket accepted. The tracepoint fires
//     in tcp_reset(), which the stack also calls itself, with no RST
//     received, to abort a socket that shut its read side down and then
//     got data (it answers that data with a reset of its own); it passes
//     the socket alone, not the segment. Where the socket's state allows
//     that abort (read side shut down; FIN_WAIT1/2, CLOSE_WAIT, CLOSING,
//     LAST_ACK) the reset is marked unsure instead of counted, and the
//     abort's own reset (tcp_send_reset, reason TCP_ABORT_ON_DATA, same
//     socket, sent right after under the same socket lock) clears the
//     mark. Enrich counts a mark still set as one RST received once the
//     socket's close (which tcp_reset() does first) is a second old, or
//     at the connection's last record.
//   - inet_sock_set_state: SYN_SENT -> ESTABLISHED gives the client's
//     time to establish (the SYN_SENT time is kept per socket address, as
//     the kernel picks the local port only after entering SYN_SENT); CLOSE
//     marks the entry closed.
//
// Every counter of an entry is cumulative since the entry was born and is
// only written by the kernel. Enrich keeps each socket's values of its
// previous read and reports differences, so no event is counted twice or
// lost between two records (an exact count; see Accepted races below).
// The RTT min/max are per period: they sit in a second map whose entry
// Enrich takes (looks up and deletes atomically) when it reads the
// socket, so the next sample starts a new period. An entry a new
// connection's socket replaces (the tuple reused before user space took
// the closed one) loses its min/max entry with it, so the new
// connection's first period does not start from the old one's extremes.
//
// # Matching sockets to a record
//
// A record's connection is named on this node by up to three tuples
// (flow.Conn.Forms: as dialled, e.g. to a Service VIP; after DNAT;
// source-NATed). A client socket's (local, remote) equals a form; a
// server socket's equals the Reverse of one. Both can be on this node
// (intra-node traffic); Enrich looks all of them up. flow.Conn.DirectionOf
// says whether a socket is the source's (its retransmits and the resets it
// sent are Fwd) or the destination's. A reset seen leaving one local socket
// and arriving at the other is one reset: per direction the reported
// total is max(resets sent by that side, resets received by the other),
// both cumulative, and the record gets the increase of that maximum.
//
// # Bounds
//
// The socket map and the min/max map hold Config.MapEntries entries each;
// the SYN_SENT map a quarter of that. Kernel memory per entry (LRU maps
// are preallocated; on a 64-bit kernel, as bpftool reports it): a socket
// entry 160 bytes (48 of LRU hash element header, 40 key, 56 value, 16 of
// bucket), a min/max entry 112, a SYN_SENT entry 80: 292 bytes per socket
// of MapEntries, 18.3 MiB at the default of 65536 (a busy node's open and
// recently closed sockets). An insert that finds no room is counted per
// map (flowlens_tcphealth_map_full_total); the LRU evicts the least
// recently used entry otherwise, which user space estimates at each sweep
// (flowlens_tcphealth_evicted_entries_total) and detects where it had
// read the entry (flowlens_tcphealth_vanished_entries_total).
//
// Entries are deleted by user space: a connection's at its last record
// (flow.EndOfFlow) or when its state is forgotten (not enriched for
// Config.StaleAfter, or over Config.MaxConnections); closed entries no
// connection took, Config.ClosedGrace after their close, by the sweep.
// All counted (flowlens_tcphealth_deleted_entries_total by reason).
//
// # Accepted races
//
//   - RTT min/max: a sample that lands between Enrich's read of the sum
//     and its take of the min/max is in this period's min/max and the
//     next period's sum and count. A period with samples but no min/max
//     entry (that sample was its only one) reports the average as both;
//     min and max are clamped to include the average.
//   - The RTT sum and count are two plain stores (only tcp_probe writes
//     them, under the socket lock), not one atomic update: a read between
//     the two finds one sample's value without its count (or the count
//     without the value), so that sample's value and count land in two
//     consecutive periods' averages.
//   - An unsure reset (see tcp_receive_reset) read more than a second
//     after its socket closed is counted as received; were the abort's
//     own reset to come later than that, that one would have been the
//     stack's abort. Its two tracepoints are microseconds apart in one
//     call chain, so this needs the kernel to stall that long in between.
//   - The sweep deletes a closed entry only if it is still the one its
//     walk saw: it takes the entry (lookup and delete in one operation)
//     and puts back one a new connection's socket has replaced it with
//     since. An event of that new connection in the microseconds the
//     entry is out creates a fresh entry; the put-back then fails and the
//     earlier events of the new connection are lost (a map error).
//   - A tuple reused by a new socket before the old connection's entry
//     was taken: the kernel replaces the closed entry (counted) and Enrich
//     of the old connection leaves the new one alone, unless the old
//     connection's records never read its socket at all.
//
// Sockets are keyed by tuple alone, not network namespace: two sockets
// with the same (local, remote) tuple in different namespaces of the
// node (which a node's pod addressing does not produce) share an entry.
package tcphealth

import (
	"container/list"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Config configures the tracker. Zero values take the defaults.
type Config struct {
	// MapEntries bounds the kernel's socket map and its RTT min/max map
	// (292 bytes of kernel memory per entry in all, with the SYN_SENT
	// map). Default 65536: 18.3 MiB.
	MapEntries int
	// MaxConnections bounds the connections whose per-socket baselines
	// user space keeps; beyond it the least recently enriched one is
	// forgotten. Default MapEntries.
	MaxConnections int
	// ClosedGrace is how long a closed socket's entry waits for a record
	// to take it before the sweep deletes it; longer than a closed
	// connection's last record takes to come (conntrack keeps TIME_WAIT
	// 120 s). Default 5m.
	ClosedGrace time.Duration
	// StaleAfter forgets a connection not enriched for that long, with
	// its entries (its next record starts from new entries, still
	// exact). Default 30m.
	StaleAfter time.Duration
	// SweepInterval is how often the sweep runs. Default 30s.
	SweepInterval time.Duration
}

const (
	defaultMapEntries = 65536
	// maxMapEntries (4.6 GiB of kernel memory) catches a unit mistake.
	maxMapEntries        = 1 << 24
	defaultClosedGrace   = 5 * time.Minute
	defaultStaleAfter    = 30 * time.Minute
	defaultSweepInterval = 30 * time.Second
	// statsInterval is how often the programs' per-CPU counters are
	// copied into the metrics.
	statsInterval = 5 * time.Second
	// sweepBatch bounds the work done per hold of the tracker's lock, so
	// Enrich never waits long behind the sweep.
	sweepBatch = 64
)

func (cfg *Config) complete() error {
	if cfg.MapEntries == 0 {
		cfg.MapEntries = defaultMapEntries
	}
	if cfg.MapEntries < 16 || cfg.MapEntries > maxMapEntries {
		return fmt.Errorf("mapEntries %d: must be between 16 and %d", cfg.MapEntries, maxMapEntries)
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = cfg.MapEntries
	}
	if cfg.MaxConnections < 1 {
		return fmt.Errorf("maxConnections %d: must be positive", cfg.MaxConnections)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"closedGrace", &cfg.ClosedGrace, defaultClosedGrace},
		{"staleAfter", &cfg.StaleAfter, defaultStaleAfter},
		{"sweepInterval", &cfg.SweepInterval, defaultSweepInterval},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < 0 {
			return fmt.Errorf("%s %s: must be positive", d.name, *d.v)
		}
	}
	return nil
}

// Tracker owns the loaded and attached programs, their maps, and the
// per-connection state Enrich keeps. Enrich is meant for one goroutine
// (the agent's loop); the tracker's own sweep goroutine synchronises with
// it in short lock holds.
type Tracker struct {
	cfg     Config
	objs    bpfObjects
	links   []link.Link
	metrics *metrics

	// mu guards everything below and the enrich table's scratch.
	mu     sync.Mutex
	closed bool
	table  table // Enrich's view of the kernel maps; a fake in tests
	conns  map[flow.Tuple]*connState
	order  *list.List // of *connState, least recently enriched first
	owned  map[bpfSockKey]int
	// deleted counts the socket entries user space deleted, for the
	// eviction estimate.
	deleted uint64
	now     func() int64 // CLOCK_MONOTONIC ns, as bpf_ktime_get_ns
	// Enrich's scratch: kept here so that handing pointers to the table
	// costs no allocation per record.
	keys [6]bpfSockKey
	cur  bpfSockStats
	mm   bpfRttMinmax

	stop chan struct{}
	done chan struct{}

	// Sweep goroutine only.
	sweepTable   table
	lastStats    [statMax]uint64
	lastEvictEst uint64
}

// New loads the programs and maps and attaches the programs. An error
// names the program (or map) and carries the kernel's reason; nothing is
// left loaded then.
func New(cfg Config, reg prometheus.Registerer) (*Tracker, error) {
	if err := cfg.complete(); err != nil {
		return nil, fmt.Errorf("tcp health config: %w", err)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	t := newTracker(cfg, m)
	if err := t.load(); err != nil {
		return nil, errors.Join(err, t.objs.Close())
	}
	if err := t.attach(); err != nil {
		return nil, errors.Join(err, t.detach(), t.objs.Close())
	}
	t.table = newMapTable(&t.objs.bpfMaps)
	t.sweepTable = newMapTable(&t.objs.bpfMaps)
	t.stop = make(chan struct{})
	t.done = make(chan struct{})
	go t.run()
	klog.InfoS("Loaded eBPF TCP health programs", "mapEntries", cfg.MapEntries, "programs", len(t.links))
	return t, nil
}

// newTracker builds the user-space side; New adds the kernel.
func newTracker(cfg Config, m *metrics) *Tracker {
	return &Tracker{
		cfg:     cfg,
		metrics: m,
		conns:   make(map[flow.Tuple]*connState),
		order:   list.New(),
		owned:   make(map[bpfSockKey]int),
		now:     monoNow,
	}
}

// load loads the maps, then each program on its own so an error names it.
func (t *Tracker) load() error {
	spec, err := loadBpf()
	if err != nil {
		return fmt.Errorf("load tcp health spec: %w", err)
	}
	spec.Maps[bpfMapSocks].MaxEntries = uint32(t.cfg.MapEntries)
	spec.Maps[bpfMapMinmax].MaxEntries = uint32(t.cfg.MapEntries)
	spec.Maps[bpfMapSynStart].MaxEntries = uint32(max(t.cfg.MapEntries/4, 16))
	var maps bpfMaps
	if err := spec.LoadAndAssign(&maps, nil); err != nil {
		return fmt.Errorf("load tcp health maps: %w", err)
	}
	t.objs.bpfMaps = maps
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		bpfMapSocks: maps.Socks, bpfMapMinmax: maps.Minmax, bpfMapSynStart: maps.SynStart, bpfMapStats: maps.Stats,
	}}
	for _, p := range []struct {
		name string
		dst  **ebpf.Program
	}{
		{bpfProgThTcpProbe, &t.objs.ThTcpProbe},
		{bpfProgThTcpRetransmitSkb, &t.objs.ThTcpRetransmitSkb},
		{bpfProgThTcpRetransmitSynack, &t.objs.ThTcpRetransmitSynack},
		{bpfProgThTcpSendReset, &t.objs.ThTcpSendReset},
		{bpfProgThTcpReceiveReset, &t.objs.ThTcpReceiveReset},
		{bpfProgThInetSockSetState, &t.objs.ThInetSockSetState},
	} {
		ps := spec.Programs[p.name]
		if ps == nil {
			return fmt.Errorf("program %s missing from the object", p.name)
		}
		coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
			Maps:     spec.Maps,
			Programs: map[string]*ebpf.ProgramSpec{p.name: ps},
			Types:    spec.Types,
		}, *opts)
		if err != nil {
			return fmt.Errorf("load program %s (%s): %w", p.name, ps.AttachTo, err)
		}
		*p.dst = coll.DetachProgram(p.name)
		coll.Close()
	}
	return nil
}

func (t *Tracker) attach() error {
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{
		// The state program first: establish times need SYN_SENT seen.
		{bpfProgThInetSockSetState, t.objs.ThInetSockSetState},
		{bpfProgThTcpProbe, t.objs.ThTcpProbe},
		{bpfProgThTcpRetransmitSkb, t.objs.ThTcpRetransmitSkb},
		{bpfProgThTcpRetransmitSynack, t.objs.ThTcpRetransmitSynack},
		{bpfProgThTcpSendReset, t.objs.ThTcpSendReset},
		{bpfProgThTcpReceiveReset, t.objs.ThTcpReceiveReset},
	} {
		l, err := link.AttachTracing(link.TracingOptions{Program: p.prog})
		if err != nil {
			return fmt.Errorf("attach program %s: %w", p.name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

func (t *Tracker) detach() error {
	var errs []error
	for _, l := range t.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach tcp health program: %w", err))
		}
	}
	t.links = nil
	return errors.Join(errs...)
}

// Close detaches the programs, stops the sweep and frees the maps.
func (t *Tracker) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Unlock()
	if t.stop != nil {
		close(t.stop)
		<-t.done
	}
	errs := []error{t.detach()}
	if err := t.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close tcp health objects: %w", err))
	}
	return errors.Join(errs...)
}

// monoNow is CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
func monoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}
