// Package dnsnames names the destinations of flows from the DNS responses
// the node's pods receive: a flow from a pod to an address carries the
// name that pod (or, with a namespace resolver, any pod of its Kubernetes
// namespace) resolved to that address, while the answer is live.
//
// A direct-action TC program (TCX anchored at the head where the kernel
// has it, else a clsact qdisc with a cls_bpf filter) runs at egress of the
// host side of each pod-facing interface: every response a pod receives
// crosses it once (but see Limits on bpf_redirect_peer). It passes up, through a ring buffer, only answered UDP
// DNS responses (source port 53, QR set, RCODE NOERROR, ANCOUNT > 0;
// IPv4, and IPv6 with UDP right after the fixed header): the addresses,
// ports and up to 1232 bytes of the DNS message. A longer message is
// copied up to the bound and the answers that fit whole are used
// (counted in truncated_total once passed up). The DNS message is read
// with bpf_skb_load_bytes, so one in the skb's page fragments is seen; a
// UDP GSO or GRO packet (several datagrams under one UDP header) is read
// datagram by datagram using its gso_size, each message passed up on its
// own, at most 64 per packet (more are counted in
// segments_skipped_total). A per-CPU bound on responses per second and a
// full ring are counted. The program only looks: it returns TC_ACT_UNSPEC, so the filters after
// it (a CNI's, the flow counters, a traffic mirror) still run. The
// source is bpf/dnsnames.c; `make generate` rebuilds the committed object
// and bindings (bpf_bpfel.*).
//
// DNS over TCP is not read: a TCP response may span segments, and a
// segment that does not start a message would be parsed as garbage.
// Resolvers fall back to TCP only for responses too large for UDP, which
// name the same addresses an A/AAAA answer over UDP names almost always.
//
// Run parses each response with golang.org/x/net/dns/dnsmessage and maps
// every A and AAAA answer that belongs to the question's name (the name
// itself or a name its CNAME chain leads to) to the question's name: a
// pod that asked for api.example.com and got a CNAME to a CDN name and
// its addresses connects to api.example.com. Names are kept per (client
// IP, address) and, when the client IP's Kubernetes namespace is known
// at the time of the response (Config.Namespaces), also per (namespace,
// address). Why both: the kernel only sees IPs, and per-IP entries name
// the connections of the pod that asked; the issue asks for names per pod
// namespace, so that the replicas of a workload share what one of them
// resolved (a long-lived connection opened before the agent started, a
// response lost to the rate bound). The namespace is taken when the
// answer arrives, not at Enrich time: it is the asker's namespace then,
// and a pod IP reused later by a pod of another namespace does not
// inherit the answer (when the namespace was known then: see Limits). A per-IP entry whose recorded namespace differs
// from the flow's source namespace is not used, for the same reason.
//
// Answers are kept for their TTL, the smallest along the CNAME chain that
// leads to them (the question's name maps to the address only while every
// record on the way is live), at least Config.TTLFloor (clients cache
// answers and connect after the TTL; TTLs of 0-5 s are common) and at most
// Config.TTLCeiling, in a cache of Config.CacheEntries entries shared
// between namespaces: when it is full, an expired entry makes room first,
// else the namespace holding the most entries gives up its entry closest
// to expiry, so one namespace resolving many names cannot evict the live
// answers of another that holds fewer. A connection keeps the name it
// was first given until its end-of-flow record, even past the answer's
// lifetime: it was opened to that name.
//
// Limits: a pod able to send UDP from port 53 to another pod can make
// that pod's flows carry a name of its choosing (the program does not
// check the response answers a query of the pod); names are descriptive,
// not a basis for policy. A CNI that delivers node-local traffic with
// bpf_redirect_peer (Cilium's eBPF host routing) moves a response from
// the DNS pod's host veth straight into the client pod, past the egress
// this program watches, so answers from a node-local DNS server are not
// seen there. A per-IP entry stored while the resolver did not yet know
// the asking pod's namespace (a pod's first lookups, before the informer
// has its IP) carries no namespace and is used by whichever pod holds
// the IP later, for at most the answer's lifetime. Entries are keyed by
// the IP the response was sent to, so a dual-stack pod that resolves over
// one family and connects over the other gets names only from the
// per-namespace entries.
package dnsnames

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/tcattach"
)

// NamespaceResolver gives the Kubernetes namespace of the pod holding an
// address, or "" when none is known (k8smeta.Meta implements it).
type NamespaceResolver interface {
	NamespaceOf(addr netip.Addr) string
}

// Config configures the names.
type Config struct {
	// CacheEntries bounds the address-to-name cache as a whole: one
	// entry per (client IP, address) and one per (namespace, address).
	// Each entry counts against the namespace of the pod that asked
	// (the client's namespace when the answer arrived; clients of no
	// known namespace count together as one more). When the cache is
	// full, the namespace holding the most entries loses its entry
	// closest to expiry, so with k namespaces holding answers each keeps
	// at least CacheEntries/k of its live ones. Default 65536 (~260
	// bytes each besides the names: ~17 MiB when full). It also bounds
	// the connections that keep their name between records.
	CacheEntries int
	// TTLFloor is the shortest time an answer is kept, whatever its TTL.
	// Default 30s.
	TTLFloor time.Duration
	// TTLCeiling is the longest. Default 1h.
	TTLCeiling time.Duration
	// MaxResponsesPerSecond is the per-CPU bound on responses the
	// program passes up per second; more are counted and not read.
	// Default 10000.
	MaxResponsesPerSecond int
	// RingBytes is the size of the ring buffer, a power of two and a
	// multiple of the page size. Default 1<<20 (~7000 typical responses
	// of ~100 bytes before Run must have read them).
	RingBytes int
	// Attach is "auto" (TCX, else tc clsact), "tcx" or "tc". Default auto.
	Attach string
	// Namespaces, when set, gives the client pod's namespace as each
	// response arrives, which makes names apply to every pod of the
	// namespace. Nil: names apply only to the client IP that asked.
	Namespaces NamespaceResolver
}

// Attach modes.
const (
	AttachAuto = tcattach.Auto
	AttachTCX  = tcattach.TCX
	AttachTC   = tcattach.TC
)

const (
	defaultCacheEntries = 65536
	defaultTTLFloor     = 30 * time.Second
	defaultTTLCeiling   = time.Hour
	defaultMaxPerSecond = 10000
	defaultRingBytes    = 1 << 20

	// housekeeping is how often Run reads the program's counters and
	// drops expired answers, whether or not responses arrive.
	housekeeping = time.Second
	// pollInterval is how often Run drains the ring: the program wakes
	// it only when the ring is a quarter full, so an answer reaches the
	// cache within this delay (flow records are exported seconds after
	// their connection's first packet).
	pollInterval = 50 * time.Millisecond
	// expireBatch bounds the expired answers dropped per lock hold.
	expireBatch = 4096
	// sweepEvery is how many Enrich calls pass between two sweeps of
	// sweepBatch named connections for ones no record came for in
	// connStaleAfter (their end-of-flow record was never enriched).
	sweepEvery  = 1024
	sweepBatch  = 64
	minConnIdle = 10 * time.Minute
)

func (cfg *Config) complete() error {
	if cfg.CacheEntries == 0 {
		cfg.CacheEntries = defaultCacheEntries
	}
	if cfg.CacheEntries < 1 {
		return fmt.Errorf("cacheEntries %d: must be positive", cfg.CacheEntries)
	}
	if cfg.TTLFloor == 0 {
		cfg.TTLFloor = defaultTTLFloor
	}
	if cfg.TTLCeiling == 0 {
		cfg.TTLCeiling = defaultTTLCeiling
	}
	if cfg.TTLFloor < 0 {
		return fmt.Errorf("ttlFloor %s: must not be negative", cfg.TTLFloor)
	}
	if cfg.TTLCeiling < cfg.TTLFloor {
		return fmt.Errorf("ttlCeiling %s: must not be below ttlFloor %s", cfg.TTLCeiling, cfg.TTLFloor)
	}
	if cfg.MaxResponsesPerSecond == 0 {
		cfg.MaxResponsesPerSecond = defaultMaxPerSecond
	}
	if cfg.MaxResponsesPerSecond < 1 {
		return fmt.Errorf("maxResponsesPerSecond %d: must be positive", cfg.MaxResponsesPerSecond)
	}
	if cfg.RingBytes == 0 {
		cfg.RingBytes = defaultRingBytes
	}
	page := unix.Getpagesize()
	if cfg.RingBytes < page || cfg.RingBytes&(cfg.RingBytes-1) != 0 {
		return fmt.Errorf("ringBytes %d: must be a power of two of at least the page size (%d)", cfg.RingBytes, page)
	}
	switch cfg.Attach {
	case "":
		cfg.Attach = AttachAuto
	case AttachAuto, AttachTCX, AttachTC:
	default:
		return fmt.Errorf("attach %q: want auto, tcx or tc", cfg.Attach)
	}
	return nil
}

// Names owns the loaded program, its ring and the name cache. Enrich,
// Attach and Detach are safe to call from any goroutine, concurrently
// with Run.
type Names struct {
	cfg     Config
	metrics *metrics
	cache   *cache
	now     func() time.Time

	// objMu guards the kernel objects against Close while Run reads
	// their counters.
	objMu  sync.Mutex
	objs   bpfObjects
	ring   *ringbuf.Reader
	closed bool

	// Run's goroutine only.
	parser parser
	rec    ringbuf.Record
	percpu []uint64
	lastSt [statMax]uint64

	// connMu guards the names connections keep between records.
	connMu    sync.Mutex
	conns     map[connKey]connName
	enriched  uint64
	connStale int64

	attachMu sync.Mutex
	attached map[attachKey]*attachment
}

type connKey struct {
	tuple flow.Tuple
	id    uint32
}

type connName struct {
	name string
	seen int64 // Unix ns of its latest record
}

// newNames builds everything but the kernel objects.
func newNames(cfg Config, m *metrics) *Names {
	stale := 2 * cfg.TTLCeiling
	if stale < minConnIdle {
		stale = minConnIdle
	}
	return &Names{
		cfg:       cfg,
		metrics:   m,
		cache:     newCache(cfg.CacheEntries, cfg.TTLFloor, cfg.TTLCeiling),
		now:       time.Now,
		conns:     make(map[connKey]connName),
		connStale: int64(stale),
		attached:  make(map[attachKey]*attachment),
	}
}

// New loads the program and its maps; nothing is attached yet. A load
// error names the program or map and carries the kernel's (verifier's)
// reason.
func New(cfg Config, reg prometheus.Registerer) (*Names, error) {
	if err := cfg.complete(); err != nil {
		return nil, fmt.Errorf("dns names config: %w", err)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load dns names spec: %w", err)
	}
	spec.Maps[bpfMapEvents].MaxEntries = uint32(cfg.RingBytes)
	if err := spec.Variables[bpfVarMaxPerSec].Set(uint64(cfg.MaxResponsesPerSecond)); err != nil {
		return nil, fmt.Errorf("set %s: %w", bpfVarMaxPerSec, err)
	}
	if err := spec.Variables[bpfVarWakeBytes].Set(uint64(cfg.RingBytes / 4)); err != nil {
		return nil, fmt.Errorf("set %s: %w", bpfVarWakeBytes, err)
	}
	n := newNames(cfg, m)
	if err := spec.LoadAndAssign(&n.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			// The verifier's log ends with its reason; %+v keeps all of it.
			return nil, fmt.Errorf("load eBPF program %s: %+v", bpfProgDnsToPod, ve)
		}
		return nil, fmt.Errorf("load eBPF program %s and its maps: %w", bpfProgDnsToPod, err)
	}
	n.ring, err = ringbuf.NewReader(n.objs.Events)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open ring %s: %w", bpfMapEvents, err), n.objs.Close())
	}
	n.percpu = make([]uint64, ebpf.MustPossibleCPU())
	klog.InfoS("Loaded eBPF DNS response program", "cacheEntries", cfg.CacheEntries, "ttlFloor", cfg.TTLFloor,
		"ttlCeiling", cfg.TTLCeiling, "maxResponsesPerSecond", cfg.MaxResponsesPerSecond, "ringBytes", cfg.RingBytes,
		"attach", cfg.Attach, "perNamespace", cfg.Namespaces != nil)
	return n, nil
}

// Run reads the ring until ctx ends or Close is called, storing the
// answers; it returns nil then, or the error that stopped the reads.
func (n *Names) Run(ctx context.Context) error {
	n.objMu.Lock()
	ring := n.ring
	closed := n.closed
	n.objMu.Unlock()
	if closed || ring == nil {
		return errors.New("dns names: run after close")
	}
	// Flush wakes a blocked read at once (a deadline set now would wait
	// for the read's lock).
	stop := context.AfterFunc(ctx, func() { _ = ring.Flush() })
	defer stop()
	last := time.Now()
	for {
		if ctx.Err() != nil {
			n.housekeeping()
			return nil
		}
		ring.SetDeadline(time.Now().Add(pollInterval))
		err := ring.ReadInto(&n.rec)
		switch {
		case err == nil:
			n.handle(n.rec.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, ringbuf.ErrFlushed):
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			n.metrics.readErrors.Inc()
			return fmt.Errorf("read dns response ring: %w", err)
		}
		if time.Since(last) >= housekeeping {
			n.housekeeping()
			last = time.Now()
		}
	}
}

// Ring record layout: struct event in bpf/dnsnames.c without its unused
// tail (a unit test checks these offsets against the generated type).
const (
	evSaddr   = 0
	evDaddr   = 16
	evMsgLen  = 36
	evCopied  = 38
	evPayload = 44
)

// handle stores the answers of one ring record.
func (n *Names) handle(s []byte) {
	if len(s) < evPayload {
		n.metrics.readErrors.Inc()
		return
	}
	msgLen := int(binary.LittleEndian.Uint16(s[evMsgLen:]))
	copied := int(binary.LittleEndian.Uint16(s[evCopied:]))
	if len(s) < evPayload+copied {
		n.metrics.readErrors.Inc()
		return
	}
	var client [16]byte
	copy(client[:], s[evDaddr:evDaddr+16])
	payload := s[evPayload : evPayload+copied]
	// One message, normally. A payload longer than its first message is
	// read as datagrams of that message's length, the last one up to it:
	// the layout of a UDP GRO/GSO packet of back-to-back responses.
	// The program passes those up one datagram at a time using the
	// packet's gso_size; this covers one that reaches it without
	// (a path that cleared gso_size), so that no response is dropped
	// silently. Past the first, a part that is no message is counted as
	// a parse error.
	seg := msgLen
	if l, ok := messageLen(payload); ok && l < msgLen {
		seg = l
	}
	for i, off := 0, 0; off < msgLen && off < copied && i < maxMessages; i, off = i+1, off+seg {
		end := min(off+seg, msgLen)
		n.handleMessage(client, payload[off:min(end, copied)], end <= copied)
	}
}

// handleMessage stores the answers of one DNS message sent to client;
// whole is false when msg is only the copied prefix of it.
func (n *Names) handleMessage(client [16]byte, msg []byte, whole bool) {
	n.metrics.responses.Inc()
	name, answers, err := n.parser.parse(msg, whole)
	if err != nil {
		n.metrics.parseErrors.Inc()
		klog.V(5).InfoS("Unusable DNS response", "err", err)
		return
	}
	if len(answers) == 0 {
		return
	}
	ns := ""
	if n.cfg.Namespaces != nil {
		ns = n.cfg.Namespaces.NamespaceOf(netip.AddrFrom16(client).Unmap())
	}
	now := n.now().UnixNano()
	evicted := 0
	for _, a := range answers {
		evicted += n.cache.put(cacheKey{client: client, addr: a.addr}, ns, name, a.ttl, now)
		if ns != "" {
			evicted += n.cache.put(cacheKey{ns: ns, addr: a.addr}, "", name, a.ttl, now)
		}
	}
	n.metrics.answers.Add(float64(len(answers)))
	n.metrics.evictions.Add(float64(evicted))
	n.metrics.entries.Set(float64(n.cache.len()))
}

// housekeeping drops expired answers and brings the program's counters
// into the metrics.
func (n *Names) housekeeping() {
	now := n.now().UnixNano()
	for n.cache.expire(now, expireBatch) == expireBatch {
	}
	n.metrics.entries.Set(float64(n.cache.len()))
	n.syncStats()
}

func (n *Names) syncStats() {
	n.objMu.Lock()
	defer n.objMu.Unlock()
	if n.closed || n.objs.Stats == nil {
		return
	}
	for slot := uint32(0); slot < statMax; slot++ {
		if err := n.objs.Stats.Lookup(slot, &n.percpu); err != nil {
			n.metrics.readErrors.Inc()
			return
		}
		var sum uint64
		for _, v := range n.percpu {
			sum += v
		}
		if sum > n.lastSt[slot] {
			n.metrics.kernel[slot].Add(float64(sum - n.lastSt[slot]))
		}
		n.lastSt[slot] = sum
	}
}

// Enrich sets r.DestinationName, when it is empty, to the name the
// record's source resolved to its destination: the address it dialled
// (a Service VIP when DNATed), else the endpoint. A connection keeps the
// name it was first given until its end-of-flow record. Cheap: a few map
// lookups under locks held only for map operations.
func (n *Names) Enrich(r *flow.Record) {
	if r.DestinationName != "" {
		return
	}
	ck := connKey{tuple: r.Tuple, id: r.ID}
	end := r.EndReason == flow.EndOfFlow
	now := n.now().UnixNano()
	n.connMu.Lock()
	defer n.connMu.Unlock()
	n.enriched++
	if n.enriched%sweepEvery == 0 {
		n.sweepConns(now)
	}
	if c, ok := n.conns[ck]; ok {
		r.DestinationName = c.name
		n.metrics.named.Inc()
		if end {
			delete(n.conns, ck)
			n.metrics.conns.Set(float64(len(n.conns)))
		} else {
			c.seen = now
			n.conns[ck] = c
		}
		return
	}
	name, ok := n.lookup(r, now)
	if !ok {
		return
	}
	r.DestinationName = name
	n.metrics.named.Inc()
	if end {
		return
	}
	if len(n.conns) >= n.cfg.CacheEntries {
		n.metrics.connsFull.Inc()
		return
	}
	n.conns[ck] = connName{name: name, seen: now}
	n.metrics.conns.Set(float64(len(n.conns)))
}

// lookup finds the live name for the record's source and destination.
func (n *Names) lookup(r *flow.Record, now int64) (string, bool) {
	ns := r.Source.PodNamespace
	dsts := [2][16]byte{r.Tuple.DstIP}
	nd := 1
	if r.OrigDstIP != ([16]byte{}) && r.OrigDstIP != r.Tuple.DstIP {
		dsts[0], dsts[1] = r.OrigDstIP, r.Tuple.DstIP
		nd = 2
	}
	for _, d := range dsts[:nd] {
		name, ens, ok := n.cache.get(cacheKey{client: r.Tuple.SrcIP, addr: d}, now)
		if ok && (ens == "" || ns == "" || ens == ns) {
			return name, true
		}
		if ns != "" {
			if name, _, ok := n.cache.get(cacheKey{ns: ns, addr: d}, now); ok {
				return name, true
			}
		}
	}
	return "", false
}

// sweepConns forgets a few connections no record came for in a long
// time: their end-of-flow record was never enriched (dropped upstream).
// Map iteration starts at a random place, so repeated sweeps cover all.
func (n *Names) sweepConns(now int64) {
	i := 0
	for k, c := range n.conns {
		if now-c.seen > n.connStale {
			delete(n.conns, k)
		}
		if i++; i >= sweepBatch {
			break
		}
	}
	n.metrics.conns.Set(float64(len(n.conns)))
}

// Close detaches everything Attach installed and releases the program,
// its maps and the ring; Run returns.
func (n *Names) Close() error {
	var errs []error
	n.attachMu.Lock()
	for k, a := range n.attached {
		if err := a.Detach(k.netns); err != nil {
			errs = append(errs, fmt.Errorf("detach dns response program from ifindex %d in netns %q: %w", k.ifindex, k.netns, err))
		}
		delete(n.attached, k)
	}
	n.metrics.attached.Set(0)
	n.attachMu.Unlock()
	n.objMu.Lock()
	defer n.objMu.Unlock()
	if n.closed {
		return errors.Join(errs...)
	}
	n.closed = true
	if n.ring != nil {
		if err := n.ring.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close dns response ring: %w", err))
		}
	}
	if err := n.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close dns names bpf objects: %w", err))
	}
	return errors.Join(errs...)
}
