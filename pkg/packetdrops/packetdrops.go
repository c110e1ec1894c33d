// Package packetdrops reports the packets the kernel dropped, with the
// kernel's reason, in the flow records of their connections, and counts
// the drops no flow owns per reason in /metrics.
//
// A tp_btf program on the kfree_skb tracepoint (bpf/drops.c; tp_btf needs
// no tracefs, and kprobes/fentry are not available on every kernel this
// runs on) sees every freed buffer the kernel calls dropped, with its
// enum skb_drop_reason. In the kernel it
//   - counts every event per reason slot (filtered, passed, rate limited,
//     ring full: metrics read from a per-CPU array, so the per-reason
//     totals are exact whatever the bound let through);
//   - passes over the reasons that are not lost packets (ignoreReasons: the
//     normal consumption paths; SKB_CONSUMED and SKB_NOT_DROPPED_YET
//     always) and buffers that never were network packets;
//   - bounds the events it passes up per CPU (a token bucket, ratePerCPU
//     and burst), and writes the passed ones' tuple and reason to a ring
//     buffer. It wakes the reader only when the ring is a quarter full;
//     the reader drains it every 100 ms otherwise (a wakeup per event
//     would cost the reader a scheduling round per drop).
//
// User space keeps the drops by packet tuple (as the drop point saw the
// packet: before or after DNAT, source-NATed or not) until a flow record
// takes them: Enrich looks up the record's forms (flow.Conn.Forms) and
// their Reverse, so a drop is Fwd when its tuple is a form and Rev when it
// is a form's Reverse. Each drop is taken by one record only. What no
// record took within the TTL, and drops without a tuple, are counted in
// flowlens_packetdrops_unattributed_total{reason}.
//
// Accounting, per reason: flowlens_packetdrops_total = attributed +
// unattributed + rate_limited + ring_full + what is still pending (in
// the flowlens_packetdrops_pending_tuples tuples); the integration test
// TestAccountingIdentity checks it over all reasons.
//
// A drop can arrive after the record that would have carried it (the
// event is in the ring when the record is made): it goes to the
// connection's next record, or, after the connection's last one, to
// unattributed when the TTL ends. The table is keyed by tuple, and a
// tuple is reused (a client's ephemeral port cycling, a resolver's fixed
// source port, ping's identifier): the program stamps each drop with the
// kernel's clock, and a record takes only the drops from its connection's
// start on (Enrich), so the previous connection's late drops are never
// the next one's. A packet dropped before conntrack confirmed its
// connection (the first SYN refused by a firewall, then retransmitted
// and let through) predates the start conntrack reports: it is counted
// unattributed, not in the flow.
package packetdrops

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Config configures the drop observer. Zero fields take their defaults.
type Config struct {
	// RingBytes is the size of the event ring, a power of two and a
	// multiple of the page size; default 256 KiB: 4,096 events of 56
	// bytes plus an 8-byte header. The reader drains it every 100 ms
	// and when it is a quarter full; a full ring's events are counted
	// (flowlens_packetdrops_ring_full_total).
	RingBytes int
	// RatePerCPU is how many drop events a CPU passes up per second at
	// most; beyond it drops are only counted per reason
	// (flowlens_packetdrops_rate_limited_total). Default 5000.
	RatePerCPU int
	// Burst is how many events a CPU may pass up at once above the rate.
	// Default 500.
	Burst int
	// MaxTuples bounds the pending table (packet tuples with drops no
	// record took yet); a drop of a new tuple beyond it is counted
	// unattributed. Default 65536 (about 200 bytes each; a tuple dropping
	// in separate bursts keeps up to 4 time spans, 72 bytes each more).
	MaxTuples int
	// TTL is how long a tuple's drops wait for a record before they are
	// counted unattributed: at least the longest time between two records
	// of a connection (the active timeout). Default 2m.
	TTL time.Duration
	// IgnoreReasons are the reasons (enum skb_drop_reason names without
	// the SKB_DROP_REASON_ prefix) that do not mean a lost packet: counted
	// in flowlens_packetdrops_filtered_total, not passed up. Nil takes
	// DefaultIgnoreReasons. A name this kernel does not have is logged and
	// skipped (the enum changes between versions).
	IgnoreReasons []string
}

// DefaultIgnoreReasons are the reasons ignored by default: what fires on a
// healthy node without any packet lost on the way. Measured on kernel 6.18
// with every reason kept (the program's location argument resolved through
// /proc/kallsyms), over 60 s of HTTP between two netns pods and over
// loopback at ~45 requests/s, plus whatever else ran:
//   - QUEUE_PURGE, ~1 per TCP connection closed (1,859 in 40 s), from
//     sk_stream_kill_queues: the receive queue purged at socket
//     destruction (a FIN the application never read).
//   - NOT_SPECIFIED, ~0.5-1/s, all from udp_destruct_common (datagrams
//     still queued when a UDP socket closed: a resolver's late duplicate
//     answer) and ip6_mc_input (MLD reports to a group the host is not in).
//     Every plain kfree_skb() left in the kernel lands here too; the drop
//     points that lose packets have been getting specific reasons since
//     5.17.
//
// Not for this host, or a capture's copy of a packet whose original went
// on:
//   - OTHERHOST: "packet not for this host" (ip_rcv/ipv6_rcv of a frame
//     for another MAC). A promiscuous bridge (kubelet's
//     promiscuous-bridge hairpin mode, tcpdump on cni0) passes up a copy
//     of every pod-to-pod frame it forwards: 80 of 80 frames of 40
//     answered echoes between two bridged pods were freed so
//     (TestReviewPromiscBridgeCopiesAreNotDrops). A frame really
//     mis-addressed to a node is rare and is no flow's loss either.
//   - IPV6_NDISC_NS_OTHERHOST: "NEIGHBOUR SOLICITATION for another
//     host", IPv6's OTHERHOST: a solicitation this host received on a
//     group it joined, for a target it does not own; the owner answers.
//   - PACKET_SOCK_ERROR: set only by af_packet's receive paths
//     (packet_rcv, tpacket_rcv) for the clone a capture socket could not
//     queue: 42 for 40 replies past a capture that never reads
//     (TestReviewTapCopiesLostAreNotFlowDrops). The enum has no other
//     capture-only reason: TAP_FILTER/TAP_TXFILTER are a tun/tap
//     device's own datapath (a VM's NIC), real losses, kept.
//
// Duplicates: a segment or fragment whose data the receiver already has
// (enum skb_drop_reason's own docs, 6.18); every byte arrived once, the
// copy is discarded. The loss behind a retransmission, if any, is counted
// where it happened, and as a retransmit by pkg/tcphealth.
//   - TCP_OLD_DATA: "data is already received before (spurious
//     retrans)": 3 of 3 segments an nft dup rule duplicated
//     (TestReviewDuplicateSegmentsAreNotLostPackets).
//   - TCP_OLD_SEQUENCE: "Old SEQ field (duplicate packet)": the whole
//     segment ends before rcv_wup, data received and acknowledged (a
//     retransmission after a lost or late ACK). The first measurement
//     above kept it as real; by the kernel's definition it is a copy.
//   - TCP_OFOMERGE: "the data of skb is already in the ofo queue".
//   - TCP_OFO_DROP: "data already in receive queue": an out-of-order
//     segment the in-order data has since covered.
//   - DUP_FRAG: "duplicate fragment" (IPFRAG_DUP: a fragment the
//     reassembly queue already holds; an overlapping one kills the queue
//     under another reason, kept).
//
// The reasons kept that fired in the measured runs were real: NO_SOCKET
// (SYNs to a closed port), IP_INNOROUTES.
func DefaultIgnoreReasons() []string {
	return []string{
		"NOT_SPECIFIED", "QUEUE_PURGE", // noise
		"OTHERHOST", "IPV6_NDISC_NS_OTHERHOST", "PACKET_SOCK_ERROR", // not for this host, capture copies
		"TCP_OLD_DATA", "TCP_OLD_SEQUENCE", "TCP_OFOMERGE", "TCP_OFO_DROP", "DUP_FRAG", // duplicates
	}
}

const (
	defaultRingBytes  = 256 << 10
	defaultRatePerCPU = 5000
	defaultBurst      = 500
	defaultMaxTuples  = 65536
	defaultTTL        = 2 * time.Minute

	// startSlack is how long before a connection's start a drop still
	// counts as the connection's: the start (conntrack's timestamp at
	// confirmation, or the counter program's first packet) and the drop
	// are read from different clocks at different points of the same
	// packet's path, and the monotonic-to-wall conversion has the jitter
	// of two clock reads. It is kept small: a resolver's fixed source
	// port or ping's identifier reuse a tuple within milliseconds.
	startSlack = 20 * time.Millisecond

	// statsInterval is how often Run reads the kernel counters into the
	// metrics and expires old tuples.
	statsInterval = time.Second
	// pollInterval is how often Run drains the ring when the program did
	// not wake it (it wakes it only when the ring is a quarter full).
	pollInterval = 100 * time.Millisecond
)

var reasonNameRE = regexp.MustCompile(`^[A-Z0-9_]+$`)

func (cfg *Config) complete() error {
	if cfg.RingBytes == 0 {
		cfg.RingBytes = defaultRingBytes
	}
	page := unix.Getpagesize()
	if cfg.RingBytes < page || cfg.RingBytes&(cfg.RingBytes-1) != 0 {
		return fmt.Errorf("ringBytes %d: must be a power of two of at least the page size (%d)", cfg.RingBytes, page)
	}
	if cfg.RatePerCPU == 0 {
		cfg.RatePerCPU = defaultRatePerCPU
	}
	if cfg.RatePerCPU < 1 || cfg.RatePerCPU > 1e9 {
		return fmt.Errorf("ratePerCPU %d: must be between 1 and 1e9 events per second", cfg.RatePerCPU)
	}
	if cfg.Burst == 0 {
		cfg.Burst = defaultBurst
	}
	if cfg.Burst < 1 {
		return fmt.Errorf("burst %d: must be positive", cfg.Burst)
	}
	if cfg.MaxTuples == 0 {
		cfg.MaxTuples = defaultMaxTuples
	}
	if cfg.MaxTuples < 1 {
		return fmt.Errorf("maxTuples %d: must be positive", cfg.MaxTuples)
	}
	if cfg.TTL == 0 {
		cfg.TTL = defaultTTL
	}
	if cfg.TTL < time.Second {
		return fmt.Errorf("ttl %s: must be at least 1s", cfg.TTL)
	}
	if cfg.IgnoreReasons == nil {
		cfg.IgnoreReasons = DefaultIgnoreReasons()
	}
	for _, r := range cfg.IgnoreReasons {
		if !reasonNameRE.MatchString(r) {
			return fmt.Errorf("ignoreReasons: %q is not a drop reason name (e.g. NOT_SPECIFIED, without SKB_DROP_REASON_)", r)
		}
	}
	return nil
}

// Drops owns the program, its link and ring, and the pending table.
// Enrich and the metrics are safe against Run's goroutine.
type Drops struct {
	cfg   Config
	names *reasonNames
	m     *metrics
	now   func() time.Time

	// mu guards the table and the lazily resolved per-reason counters.
	// Run holds it for one event at a time, so Enrich never waits long.
	mu       sync.Mutex
	tab      *table
	pendingN atomic.Int64 // tab.len(), for Enrich's lock-free empty check
	attrib   [slots]prometheus.Counter
	unattrib [slots]prometheus.Counter

	// Kernel side; nil in unit tests.
	objs bpfObjects
	lnk  link.Link
	ring *ringbuf.Reader
	// Run's state: the kernel counters as of the previous read.
	last      bpfCounters
	lastRecur uint64
	percpu    []bpfCounters
	closeOnce sync.Once
	closeErr  error
}

// newDrops builds the user-space half: table, names, metrics.
func newDrops(cfg Config, names *reasonNames, m *metrics, now func() time.Time) *Drops {
	return &Drops{cfg: cfg, names: names, m: m, now: now, tab: newTable(cfg.MaxTuples)}
}

// New loads the program, attaches it to the kfree_skb tracepoint and
// opens its ring. The error names the program and the kernel's reason
// (the verifier's log for a refused program).
func New(cfg Config, reg prometheus.Registerer) (*Drops, error) {
	if err := cfg.complete(); err != nil {
		return nil, fmt.Errorf("packet drops config: %w", err)
	}
	names, err := kernelReasonNames()
	if err != nil {
		return nil, fmt.Errorf("packet drops: drop reason names: %w", err)
	}
	// Registered only once the program runs: an agent that goes on
	// without it (observe mode auto) must not export drop metrics frozen
	// at 0 as if nothing were dropped.
	m, err := newMetrics(nil)
	if err != nil {
		return nil, err
	}
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load packet drops spec: %w", err)
	}
	spec.Maps[bpfMapEvents].MaxEntries = uint32(cfg.RingBytes)
	keep, err := keepMask(names, cfg.IgnoreReasons)
	if err != nil {
		return nil, err
	}
	interval := uint64(time.Second) / uint64(cfg.RatePerCPU)
	if interval == 0 {
		interval = 1
	}
	for name, v := range map[string]any{
		bpfVarKeep:       keep,
		bpfVarKeepSubsys: uint8(1),
		bpfVarIntervalNs: interval,
		// The bucket passes an event while tat-now <= burst_ns; one
		// interval less makes exactly Burst pass at once.
		bpfVarBurstNs: interval * uint64(cfg.Burst-1),
		// Woken at a quarter full: the timer (pollInterval) drains less.
		bpfVarWakeupBytes: uint64(cfg.RingBytes / 4),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("packet drops: set %s: %w", name, err)
		}
	}
	d := newDrops(cfg, names, m, time.Now)
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load %s (tp_btf/kfree_skb): %+v", bpfProgKfreeSkbDrop, ve)
		}
		return nil, fmt.Errorf("load %s (tp_btf/kfree_skb): %w", bpfProgKfreeSkbDrop, err)
	}
	d.lnk, err = link.AttachTracing(link.TracingOptions{Program: d.objs.KfreeSkbDrop, AttachType: ebpf.AttachTraceRawTp})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("attach %s to tp_btf/kfree_skb: %w", bpfProgKfreeSkbDrop, err), d.objs.Close())
	}
	d.ring, err = ringbuf.NewReader(d.objs.Events)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open ring %s: %w", bpfMapEvents, err), d.lnk.Close(), d.objs.Close())
	}
	d.percpu = make([]bpfCounters, ebpf.MustPossibleCPU())
	if err := m.register(reg); err != nil {
		return nil, errors.Join(err, d.Close())
	}
	klog.InfoS("Attached packet drop observer", "program", bpfProgKfreeSkbDrop, "ringBytes", cfg.RingBytes,
		"ratePerCPU", cfg.RatePerCPU, "burst", cfg.Burst, "maxTuples", cfg.MaxTuples, "ttl", cfg.TTL,
		"ignoreReasons", cfg.IgnoreReasons)
	return d, nil
}

// keepMask is the program's bitmap of the core reasons it passes: all but
// the ignored ones and the two values that are not drops.
func keepMask(names *reasonNames, ignore []string) ([coreSlots / 64]uint64, error) {
	var mask [coreSlots / 64]uint64
	for i := range mask {
		mask[i] = ^uint64(0)
	}
	clearSlot := func(s int) { mask[s/64] &^= 1 << (s % 64) }
	for _, always := range []string{"NOT_DROPPED_YET", "CONSUMED"} {
		if s, ok := names.byName[always]; ok {
			clearSlot(s)
		}
	}
	for _, r := range ignore {
		s, ok := names.byName[r]
		if !ok {
			klog.InfoS("Ignored drop reason unknown to this kernel, skipped", "field", "ignoreReasons", "reason", r)
			continue
		}
		if s >= coreSlots {
			return mask, fmt.Errorf("ignoreReasons: %s is a subsystem, not a reason; subsystem reasons cannot be ignored", r)
		}
		clearSlot(s)
	}
	return mask, nil
}

// Close detaches the program and releases the ring and maps. Run returns
// once its read sees the closed ring.
func (d *Drops) Close() error {
	d.closeOnce.Do(func() {
		var errs []error
		if d.lnk != nil {
			errs = append(errs, d.lnk.Close())
		}
		if d.ring != nil {
			errs = append(errs, d.ring.Close())
		}
		errs = append(errs, d.objs.Close())
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// Run reads the event ring until ctx ends or Close, and every
// statsInterval reads the kernel counters into the metrics and counts the
// tuples no record took within the TTL as unattributed.
func (d *Drops) Run(ctx context.Context) error {
	var rec ringbuf.Record
	// The ring's deadlines are wall-clock; d.now only stamps drops for
	// the TTL (tests move it).
	next := time.Now().Add(statsInterval)
	for {
		if ctx.Err() != nil {
			d.housekeep()
			return nil
		}
		// Wake for the next housekeeping, to drain the ring (the program
		// wakes the reader only for a quarter-full ring) and to see ctx end.
		d.ring.SetDeadline(minTime(next, time.Now().Add(pollInterval)))
		err := d.ring.ReadInto(&rec)
		switch {
		case err == nil:
			d.handleRaw(rec.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed):
			// Close ran: a deliberate stop, whichever of ctx and Close
			// the caller ended first.
			return nil
		default:
			d.m.readErrors.Inc()
			klog.ErrorS(err, "Read packet drop ring", "ring", bpfMapEvents)
			// A persistent error must not spin a core.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		if now := time.Now(); !now.Before(next) {
			d.housekeep()
			next = now.Add(statsInterval)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// housekeep reads the kernel counters and expires old tuples.
func (d *Drops) housekeep() {
	if err := d.readKernelCounters(); err != nil {
		d.m.readErrors.Inc()
		klog.ErrorS(err, "Read packet drop counters", "map", bpfMapStats)
	}
	d.expire()
}

// readKernelCounters adds what the program counted since the previous
// read to the metrics.
func (d *Drops) readKernelCounters() error {
	if d.objs.Stats == nil {
		return nil
	}
	if err := d.objs.Stats.Lookup(uint32(0), &d.percpu); err != nil {
		return fmt.Errorf("lookup %s: %w", bpfMapStats, err)
	}
	var sum bpfCounters
	for i := range d.percpu {
		c := &d.percpu[i]
		for s := range slots {
			sum.Passed[s] += c.Passed[s]
			sum.Filtered[s] += c.Filtered[s]
			sum.Limited[s] += c.Limited[s]
			sum.RingFull[s] += c.RingFull[s]
		}
		sum.NotNetwork += c.NotNetwork
		sum.CaptureCopies += c.CaptureCopies
	}
	for s := range slots {
		for _, k := range []struct {
			now, last uint64
			vec       *prometheus.CounterVec
		}{
			{sum.Passed[s], d.last.Passed[s], d.m.total},
			{sum.Filtered[s], d.last.Filtered[s], d.m.filtered},
			{sum.Limited[s], d.last.Limited[s], d.m.limited},
			{sum.RingFull[s], d.last.RingFull[s], d.m.ringFull},
		} {
			if k.now > k.last {
				k.vec.WithLabelValues(d.names.slotName(s)).Add(float64(k.now - k.last))
			}
		}
	}
	if sum.NotNetwork > d.last.NotNetwork {
		d.m.notNetwork.Add(float64(sum.NotNetwork - d.last.NotNetwork))
	}
	if sum.CaptureCopies > d.last.CaptureCopies {
		d.m.captured.Add(float64(sum.CaptureCopies - d.last.CaptureCopies))
	}
	d.last = sum
	if st, err := d.objs.KfreeSkbDrop.Stats(); err == nil && st.RecursionMisses > d.lastRecur {
		d.m.recursion.Add(float64(st.RecursionMisses - d.lastRecur))
		d.lastRecur = st.RecursionMisses
	}
	return nil
}

// Event flags (EV_* in bpf/drops.c).
const (
	evNoTuple  = 0x1
	evNotIP    = 0x2
	evFragment = 0x4
)

// eventSize is sizeof(struct drop_event).
const eventSize = 56

// event is one decoded drop.
type event struct {
	tuple  flow.Tuple
	reason uint32
	flags  uint8
	ktime  uint64 // CLOCK_MONOTONIC ns of the drop; 0: unknown (handled now)
}

// decodeEvent reads a struct drop_event (little-endian, as the program
// writes it on the only byte order it is built for).
func decodeEvent(b []byte) (event, error) {
	if len(b) < eventSize {
		return event{}, fmt.Errorf("drop event of %d bytes, want %d", len(b), eventSize)
	}
	var ev event
	copy(ev.tuple.SrcIP[:], b[0:16])
	copy(ev.tuple.DstIP[:], b[16:32])
	ev.tuple.SrcPort = binary.LittleEndian.Uint16(b[32:34])
	ev.tuple.DstPort = binary.LittleEndian.Uint16(b[34:36])
	ev.tuple.Proto = b[36]
	ev.flags = b[37]
	ev.reason = binary.LittleEndian.Uint32(b[40:44])
	ev.ktime = binary.LittleEndian.Uint64(b[48:56])
	if p := ev.tuple.Proto; p == flow.ProtoICMP || p == flow.ProtoICMPv6 {
		ev.tuple.SrcPort, ev.tuple.DstPort = icmpPorts(p == flow.ProtoICMPv6, ev.tuple.SrcPort, ev.tuple.DstPort)
	}
	return ev, nil
}

// icmpPorts maps an ICMP message (identifier, type<<8|code) to the ports
// of flow.Tuple the way pkg/conntrack decodes a conntrack ICMP tuple: a
// request has sport = identifier and dport = type<<8|code, a reply the
// request's tuple reversed, and a message conntrack does not track as a
// connection sport 0.
func icmpPorts(v6 bool, id, typeCode uint16) (sport, dport uint16) {
	typ, code := uint8(typeCode>>8), typeCode&0xff
	var req uint8 // the request type a reply answers
	if !v6 {
		switch typ {
		case 8, 13, 15, 17:
			return id, typeCode
		case 0:
			req = 8
		case 14:
			req = 13
		case 16:
			req = 15
		case 18:
			req = 17
		}
	} else {
		switch typ {
		case 128, 139:
			return id, typeCode
		case 129:
			req = 128
		case 140:
			req = 139
		}
	}
	if req != 0 {
		return uint16(req)<<8 | code, id
	}
	return 0, typeCode
}

func (d *Drops) handleRaw(b []byte) {
	ev, err := decodeEvent(b)
	if err != nil {
		d.m.readErrors.Inc()
		klog.ErrorS(err, "Decode packet drop event")
		return
	}
	d.handle(ev)
}

// handle files one drop under its tuple, or counts it unattributed when it
// has none or the table is full.
func (d *Drops) handle(ev event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ev.flags&(evNoTuple|evNotIP|evFragment) != 0 {
		if ev.flags&evNoTuple != 0 {
			d.m.parseFail.Inc()
		}
		d.unattributedLocked(ev.reason, 1)
		return
	}
	if !d.tab.add(ev.tuple, ev.reason, d.dropTime(ev.ktime)) {
		d.m.tableFull.Inc()
		d.unattributedLocked(ev.reason, 1)
		return
	}
	d.pendingN.Store(int64(d.tab.len()))
}

// dropTime is the Unix ns of a drop the program stamped at kt
// (CLOCK_MONOTONIC), on d.now's clock; an unstamped one is stamped now.
// The offset is read per event: it follows a step of the wall clock at
// once, for a vDSO clock read.
func (d *Drops) dropTime(kt uint64) int64 {
	now := d.now().UnixNano()
	if kt == 0 {
		return now
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return now
	}
	age := ts.Nano() - int64(kt)
	if age < 0 {
		age = 0
	}
	return now - age
}

// unattributedLocked counts n drops of reason as owned by no flow; d.mu
// is held.
func (d *Drops) unattributedLocked(reason, n uint32) {
	s := slotOf(reason)
	if d.unattrib[s] == nil {
		d.unattrib[s] = d.m.unattributed.WithLabelValues(d.names.slotName(s))
	}
	d.unattrib[s].Add(float64(n))
}

func (d *Drops) attributedLocked(reason, n uint32) {
	s := slotOf(reason)
	if d.attrib[s] == nil {
		d.attrib[s] = d.m.attributed.WithLabelValues(d.names.slotName(s))
	}
	d.attrib[s].Add(float64(n))
}

// expire counts the tuples no record took within the TTL as unattributed.
func (d *Drops) expire() {
	cutoff := d.now().Add(-d.cfg.TTL).UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tab.expire(cutoff, d.unattributedLocked)
	n := d.tab.len()
	d.pendingN.Store(int64(n))
	d.m.entries.Set(float64(n))
}

// Enrich fills r.Health's FwdDrops, RevDrops and DropReason with the drops
// of r's connection that arrived since its previous record, and removes
// them, so each drop is in one record. A drop whose tuple is one of the
// connection's forms went the original way (Fwd), one whose tuple is a
// form's Reverse the reply way (Rev). Only drops from the connection's
// start on (r.StartNanos less startSlack) are its own: older ones of the
// same tuple are a previous connection's, left for the TTL to count
// unattributed. With StartNanos 0 (unknown: no conntrack timestamp and no
// counter program) every pending drop of the tuple is taken, as no start
// tells them apart. Called from the agent's loop: a few map lookups under
// a lock Run holds only per event, nothing when no drop is pending.
func (d *Drops) Enrich(r *flow.Record) {
	if d.pendingN.Load() == 0 {
		return
	}
	since := int64(math.MinInt64)
	if r.StartNanos != 0 {
		since = r.StartNanos - startSlack.Nanoseconds()
	}
	forms, n := r.Conn.Forms()
	var fwd, rev uint32
	var t tally
	d.mu.Lock()
	for i := range n {
		fwd = satAdd(fwd, d.tab.take(forms[i], since, t.add))
		rev = satAdd(rev, d.tab.take(forms[i].Reverse(), since, t.add))
	}
	if fwd > 0 || rev > 0 {
		t.each(d.attributedLocked)
		d.pendingN.Store(int64(d.tab.len()))
	}
	d.mu.Unlock()
	if fwd == 0 && rev == 0 {
		return
	}
	r.Health.FwdDrops = satAdd(r.Health.FwdDrops, fwd)
	r.Health.RevDrops = satAdd(r.Health.RevDrops, rev)
	if reason, ok := t.top(); ok {
		r.Health.DropReason = d.names.name(reason)
	}
}
