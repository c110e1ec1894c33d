package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/ipfixie"
	"github.com/flowlens/flowlens/pkg/sink"
)

// captureWriter keeps what the aggregator outputs, for assertions.
type captureWriter struct {
	mu   sync.Mutex
	recs []*correlate.Record
}

func (c *captureWriter) Write(_ context.Context, b *sink.Batch) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, b.Records...)
	return len(b.Records), nil
}

func (c *captureWriter) Close() error { return nil }

func (c *captureWriter) records() []*correlate.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*correlate.Record(nil), c.recs...)
}

func (c *captureWriter) waitFor(t testing.TB, n int, timeout time.Duration) []*correlate.Record {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if r := c.records(); len(r) >= n {
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := c.records()
	t.Fatalf("got %d aggregated records within %s, want %d", len(r), timeout, n)
	return r
}

// runningAggregator is an aggregator started for a test, stopped (and
// waited for) at cleanup or by stop.
type runningAggregator struct {
	*aggregator
	capture *captureWriter
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
	err     error
}

func startAggregator(t testing.TB, cfg *aggregatorconfig.Config) *runningAggregator {
	t.Helper()
	ra := newTestAggregator(t, cfg)
	ra.start(t)
	return ra
}

// newTestAggregator builds an aggregator with a capturing sink added; the
// test may adjust its stages before start.
func newTestAggregator(t testing.TB, cfg *aggregatorconfig.Config) *runningAggregator {
	t.Helper()
	if err := cfg.Finish(); err != nil {
		t.Fatalf("config: %v", err)
	}
	a, err := newAggregator(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("newAggregator: %v", err)
	}
	capture := &captureWriter{}
	s, err := sink.New(sink.Config{Name: "capture", Writer: capture, CommitInterval: 20 * time.Millisecond,
		QueueRecords: 1 << 20, MaxBatch: 1 << 16}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.sinks = append(a.sinks, s)
	return &runningAggregator{aggregator: a, capture: capture, done: make(chan error, 1)}
}

func (ra *runningAggregator) start(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	ra.cancel = cancel
	go func() { ra.done <- ra.run(ctx) }()
	t.Cleanup(func() { ra.stop(t) })
}

func (ra *runningAggregator) stop(t testing.TB) {
	t.Helper()
	ra.once.Do(func() {
		ra.cancel()
		select {
		case ra.err = <-ra.done:
		case <-time.After(90 * time.Second):
			ra.err = fmt.Errorf("aggregator did not stop within 90s")
		}
	})
	if ra.err != nil {
		t.Errorf("aggregator run: %v", ra.err)
	}
}

func (ra *runningAggregator) addr(t testing.TB, network string) string {
	t.Helper()
	for _, a := range ra.collectorAddrs() {
		if a.Network() == network {
			return a.String()
		}
	}
	t.Fatalf("no %s collector", network)
	return ""
}

// counterSum adds up every series of a metric family in reg.
func counterSum(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// agent is an ipfixexport.Exporter standing in for one node's agent.
type agent struct {
	exp    *ipfixexport.Exporter
	cancel context.CancelFunc
	done   chan struct{}
}

func startAgent(t *testing.T, collector string, transport ipfixexport.Transport, domain uint32) *agent {
	t.Helper()
	exp, err := ipfixexport.New(ipfixexport.Config{
		Address: collector, Transport: transport, ObservationDomainID: domain,
		L7DetailElements: true, HealthElements: true,
		FlushInterval: 20 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
		BufferRecords: 200_000,
	}, nil)
	if err != nil {
		t.Fatalf("ipfixexport.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{exp: exp, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(a.done); _ = exp.Run(ctx) }()
	t.Cleanup(a.stop)
	return a
}

// stop sends what is buffered and closes the connection.
func (a *agent) stop() {
	a.cancel()
	<-a.done
}

func (a *agent) export(t *testing.T, recs ...flow.Record) {
	t.Helper()
	for i := range recs {
		for !a.exp.Export(&recs[i]) {
			time.Sleep(time.Millisecond)
		}
	}
	a.exp.Flush()
}

// halves returns what the client's node and the server's node export for
// connection i of an inter-node Service connection.
func halves(i int, start time.Time) (src, dst flow.Record) {
	tuple := flow.NewTuple(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), netip.MustParseAddr("10.2.0.7"),
		uint16(20000+i%40000), 8080, flow.ProtoTCP)
	base := flow.Record{FlowType: flow.FlowTypeInterNode, EndReason: flow.EndOfFlow}
	base.Tuple = tuple
	base.StartNanos = start.UnixNano()
	base.StopNanos = start.Add(2 * time.Second).UnixNano()
	base.ExportNanos = base.StopNanos
	base.TCPState = flow.TCPStateTimeWait
	base.OrigDstIP, base.OrigDstPort = tuple.DstIP, tuple.DstPort

	src = base
	src.Fwd, src.Rev = flow.Counters{Packets: 10, Bytes: 1000}, flow.Counters{Packets: 8, Bytes: 9000}
	src.FwdDelta, src.RevDelta = src.Fwd, src.Rev
	src.Source = flow.Endpoint{PodName: fmt.Sprintf("client-%d", i), PodNamespace: "ns-a", NodeName: "node-a"}
	src.OrigDstIP, src.OrigDstPort = netip.MustParseAddr("10.96.0.10").As16(), 80
	src.ClusterIP = true
	src.ServicePortName = "ns-b/web:http"
	src.L7 = flow.L7{AppProtocolName: "http", HTTPVals: fmt.Sprintf(`{"0":"GET /c%d"}`, i), DNSQueryName: "web.ns-b.svc"}
	// The client's socket and this node's drops (healthMerged is the row).
	src.Health = flow.Health{RTTMinMicros: 200, RTTAvgMicros: 300, RTTMaxMicros: 900, RTTSamples: 3,
		FwdRetransmits: 2, FwdResets: 1, EstablishMicros: 450, ZeroWindows: 1, FwdDrops: 4, DropReason: "NETFILTER_DROP"}
	src.DestinationName = "web.ns-b.svc.cluster.local"

	dst = base
	dst.Fwd, dst.Rev = flow.Counters{Packets: 9, Bytes: 900}, flow.Counters{Packets: 8, Bytes: 9000}
	dst.FwdDelta, dst.RevDelta = dst.Fwd, dst.Rev
	dst.Destination = flow.Endpoint{PodName: "server", PodNamespace: "ns-b", NodeName: "node-b"}
	// The server's node has no HTTP for it (must not wipe the client's) but
	// saw the TLS handshake.
	dst.L7 = flow.L7{TLSServerName: "server.example"}
	// The server's socket: the client's RST arriving, its own
	// retransmissions, drops on this node.
	dst.Health = flow.Health{RTTMinMicros: 150, RTTAvgMicros: 250, RTTMaxMicros: 400, RTTSamples: 1,
		RevRetransmits: 5, FwdResets: 1, ZeroWindows: 2, FwdDrops: 1, RevDrops: 6, DropReason: "TCP_INVALID_SEQUENCE"}
	return src, dst
}

// healthMerged is the Health of the row of a connection of halves:
// counts summed per direction, the RST both nodes saw once, RTT min of the
// minima, max of the maxima, the sample-weighted mean (287.5 rounded),
// the reason of the half with more drops (pkg/correlate).
var healthMerged = flow.Health{RTTMinMicros: 150, RTTAvgMicros: 288, RTTMaxMicros: 900, RTTSamples: 4,
	FwdRetransmits: 2, RevRetransmits: 5, FwdResets: 1, EstablishMicros: 450, ZeroWindows: 3,
	FwdDrops: 5, RevDrops: 6, DropReason: "TCP_INVALID_SEQUENCE"}

// intraNode is connection i seen whole by one node, ended.
func intraNode(i int, start time.Time) flow.Record {
	r := flow.Record{FlowType: flow.FlowTypeIntraNode, EndReason: flow.EndOfFlow}
	r.Tuple = flow.NewTuple(netip.AddrFrom4([4]byte{10, 3, byte(i >> 16), byte(i >> 8)}), netip.AddrFrom4([4]byte{10, 4, 0, byte(i)}),
		uint16(1024+i%60000), 443, flow.ProtoTCP)
	r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
	r.StartNanos = start.UnixNano()
	r.StopNanos = start.Add(time.Second).UnixNano()
	r.ExportNanos = r.StopNanos
	r.Fwd = flow.Counters{Packets: uint64(i%100 + 1), Bytes: uint64(100 * (i%100 + 1))}
	r.FwdDelta = r.Fwd
	r.Source = flow.Endpoint{PodName: "a", PodNamespace: "ns", NodeName: "node-c"}
	r.Destination = flow.Endpoint{PodName: "b", PodNamespace: "ns", NodeName: "node-c"}
	return r
}

// ipfixMessage builds one IPFIX message with the given sets (id, body).
func ipfixMessage(domain uint32, seq uint32, sets ...[]byte) []byte {
	n := 16
	for _, s := range sets {
		n += len(s)
	}
	b := make([]byte, 0, n)
	b = binary.BigEndian.AppendUint16(b, 10)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = binary.BigEndian.AppendUint32(b, uint32(time.Now().Unix()))
	b = binary.BigEndian.AppendUint32(b, seq)
	b = binary.BigEndian.AppendUint32(b, domain)
	for _, s := range sets {
		b = append(b, s...)
	}
	return b
}

func ipfixSet(id uint16, body []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = binary.BigEndian.AppendUint16(b, uint16(4+len(body)))
	return append(b, body...)
}

// validMessages returns a template message and a data message carrying
// recs, as an agent would send them.
func validMessages(t testing.TB, domain uint32, recs ...flow.Record) (tmpl, data []byte) {
	t.Helper()
	v4, _, err := ipfixie.FlowTemplates(ipfixexport.TemplateIDv4, ipfixexport.TemplateIDv6)
	if err != nil {
		t.Fatal(err)
	}
	tmpl = ipfixMessage(domain, 0, ipfixSet(2, v4.AppendTemplateRecord(nil)))
	var body []byte
	for i := range recs {
		body = v4.AppendData(body, &recs[i])
	}
	data = ipfixMessage(domain, 0, ipfixSet(v4.ID, body))
	return tmpl, data
}

func dial(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// nopWriter accepts every batch.
type nopWriter struct{}

func (nopWriter) Write(_ context.Context, b *sink.Batch) (int, error) { return len(b.Records), nil }
func (nopWriter) Close() error                                        { return nil }
