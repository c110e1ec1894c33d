// Package linkmetrics exports the aggregator's service links as Prometheus
// counters (flowlens_link_*), so that Grafana node-graph setups built on
// such counters (Istio-style source/destination labels) show what the
// flows table shows.
//
// A link is (source namespace, kind and name; destination namespace, kind
// and name; destination port; protocol; application protocol), named as
// the UI's map names its nodes (pkg/servicemap SourceNodeExpr,
// DestinationNodeExpr). The source is its pod's workload, else the pod,
// else its node, else the external address; the destination is the
// Service the connection went through, else the pod's workload, the pod,
// the node, else the external peer by the TLS server name its client sent
// (a connection-level field), else its address. Each row the correlator
// hands to the sinks is observed once: a correlated connection is one row
// per export, carrying the deltas since its previous export, so nothing is
// counted once per half or twice across exports.
//
// Connections: a connection counts once, at its first row (firstRow):
// the row whose deltas are its totals. That is the map's definition
// (distinct connections) over time: a paused connection's idle-timeout
// rows and its interim rows do not count again, and increase() over a
// window counts the connections that began being exported in it. It
// needs no memory per connection. Rows without totals (exporters that
// send only deltas, conntrack accounting off) count at their final row.
//
// Cardinality is bounded: at most Config.MaxSeries links get series of
// their own. Links with an external end may take at most a quarter of
// them: beyond it the external end is named "other" (the link keeps its
// in-cluster end), so a pod talking to many internet addresses cannot
// use up the series the in-cluster links need. Rows of any further link
// go to one link whose every label is "other", and
// flowlens_link_series_overflow_total counts those rows. A link with no
// row for Config.IdleTimeout loses its series (DeleteLabelValues) when a
// new link needs one and the cap is reached: a returning link starts
// again from zero, which rate() and increase() read as a counter reset.
//
// Label values are made valid UTF-8 (invalid bytes become U+FFFD): pod,
// workload and server names arrive as IPFIX strings nobody checked, and
// client_golang refuses (panics on) invalid ones. A row whose series
// cannot be made anyway is counted in flowlens_link_dropped_total.
package linkmetrics

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// DefaultMaxSeries is Config.MaxSeries's default.
const DefaultMaxSeries = 2000

// MaxMaxSeries bounds Config.MaxSeries: beyond it the metrics endpoint
// itself becomes the problem.
const MaxMaxSeries = 1_000_000

// Other is the value of every label of the overflow link.
const Other = "other"

// Kinds of link ends that are not workloads.
const (
	KindPod      = "Pod"
	KindService  = "Service"
	KindNode     = "Node"
	KindExternal = "External"
)

// DefaultIdleTimeout is Config.IdleTimeout's default: well above any
// scrape interval and the aggregator's export timeouts, so an active
// link never loses its series.
const DefaultIdleTimeout = time.Hour

// maxNameLen bounds an external name (a TLS server name is at most a DNS
// name); a longer one is replaced by the address, as on the map.
const maxNameLen = 253

// Config configures Links.
type Config struct {
	// MaxSeries is how many distinct links get series of their own
	// (aggregatorconfig metrics.links.maxSeries); 0 means
	// DefaultMaxSeries.
	MaxSeries int
	// IdleTimeout: a link without rows for this long may lose its series
	// to a new link once MaxSeries is reached; 0 means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Labels of every flowlens_link_* counter, in order.
var labelNames = []string{
	"source_namespace", "source_kind", "source_name",
	"destination_namespace", "destination_kind", "destination_name",
	"destination_port", "protocol", "app_protocol",
}

// Key identifies a link (see the package documentation).
type Key struct {
	SourceNamespace, SourceKind, SourceName                string
	DestinationNamespace, DestinationKind, DestinationName string
	DestinationPort                                        uint16
	Protocol                                               uint8
	AppProtocol                                            string
}

func (k *Key) labelValues() []string {
	return []string{
		k.SourceNamespace, k.SourceKind, k.SourceName,
		k.DestinationNamespace, k.DestinationKind, k.DestinationName,
		strconv.Itoa(int(k.DestinationPort)), flow.ProtoName(k.Protocol), k.AppProtocol,
	}
}

// external tells whether either end is an external address.
func (k *Key) external() bool {
	return k.SourceKind == KindExternal || k.DestinationKind == KindExternal
}

// collapseExternal names the link's external ends "other".
func (k *Key) collapseExternal() {
	if k.SourceKind == KindExternal {
		k.SourceName = Other
	}
	if k.DestinationKind == KindExternal {
		k.DestinationName = Other
	}
}

// validUTF8 replaces invalid bytes by U+FFFD; valid strings (nearly all)
// are returned as they are, without allocating.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// series are one link's counters, resolved once so that observing a row
// costs a map lookup, not a label hash per counter.
type series struct {
	bytes, reverseBytes, packets, reversePackets prometheus.Counter
	connections, requests, http4xx, http5xx      prometheus.Counter
	dnsErrors                                    prometheus.Counter
	// values are the label values (to delete the series); lastSeen is
	// when the link last had a row (Unix ns, under Links.mu).
	values   []string
	lastSeen int64
}

// Links counts rows per link. It is safe for concurrent use.
type Links struct {
	max, maxExternal int
	idle             time.Duration
	now              func() time.Time

	bytes, reverseBytes, packets, reversePackets *prometheus.CounterVec
	connections, requests, http4xx, http5xx      *prometheus.CounterVec
	dnsErrors                                    *prometheus.CounterVec
	overflow                                     prometheus.Counter
	tracked                                      prometheus.Gauge
	dropped                                      *prometheus.CounterVec
	evicted                                      prometheus.Counter

	mu        sync.Mutex
	links     map[Key]*series
	externals int // links in links with an external end
	lastSweep int64
	other     *series
}

// New validates cfg and builds the counters, registered on reg (nil:
// counted, not registered).
func New(cfg Config, reg prometheus.Registerer) (*Links, error) {
	if cfg.MaxSeries == 0 {
		cfg.MaxSeries = DefaultMaxSeries
	}
	if cfg.MaxSeries < 1 || cfg.MaxSeries > MaxMaxSeries {
		return nil, fmt.Errorf("linkmetrics: MaxSeries %d: must be 1..%d", cfg.MaxSeries, MaxMaxSeries)
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.IdleTimeout < 0 {
		return nil, fmt.Errorf("linkmetrics: IdleTimeout %s: must not be negative", cfg.IdleTimeout)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	vec := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowlens_link_" + name, Help: help}, labelNames)
	}
	l := &Links{
		max:            cfg.MaxSeries,
		maxExternal:    max(cfg.MaxSeries/4, 1),
		idle:           cfg.IdleTimeout,
		now:            cfg.Now,
		bytes:          vec("bytes_total", "Bytes from source to destination (original direction) of the link's connections."),
		reverseBytes:   vec("reverse_bytes_total", "Bytes from destination to source (reply direction) of the link's connections."),
		packets:        vec("packets_total", "Packets from source to destination (original direction) of the link's connections."),
		reversePackets: vec("reverse_packets_total", "Packets from destination to source (reply direction) of the link's connections."),
		connections:    vec("connections_total", "Connections of the link, each counted once, at its first exported row."),
		requests:       vec("requests_total", "HTTP requests (transactions in httpVals) on the link."),
		http4xx:        vec("http_4xx_total", "HTTP responses with status 400-499 on the link."),
		http5xx:        vec("http_5xx_total", "HTTP responses with status 500 or more on the link."),
		dnsErrors:      vec("dns_errors_total", "DNS responses with a code other than NOERROR on the link."),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_link_series_overflow_total",
			Help: "Rows counted under the link labelled \"other\" because metrics.links.maxSeries links already had series.",
		}),
		tracked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_link_series",
			Help: "Links with series of their own (at most metrics.links.maxSeries).",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_link_dropped_total",
			Help: "Rows not counted in the flowlens_link_* counters, by reason (label: a label value the client library refused).",
		}, []string{"reason"}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_link_series_evicted_total",
			Help: "Links whose series were deleted after metrics.links idle time without rows, to make room for new links.",
		}),
		links: map[Key]*series{},
	}
	// Exported at 0 from the start, so an alert on it has a series.
	l.dropped.WithLabelValues("label")
	if reg != nil {
		for _, c := range []prometheus.Collector{l.bytes, l.reverseBytes, l.packets, l.reversePackets, l.connections,
			l.requests, l.http4xx, l.http5xx, l.dnsErrors, l.overflow, l.tracked, l.dropped, l.evicted} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("linkmetrics: register metrics: %w", err)
			}
		}
	}
	return l, nil
}

// newSeries resolves a link's counters. It fails only on label values
// client_golang refuses, which validUTF8 has already ruled out.
func (l *Links) newSeries(values []string) (*series, error) {
	s := &series{values: values}
	for _, c := range []struct {
		vec *prometheus.CounterVec
		dst *prometheus.Counter
	}{
		{l.bytes, &s.bytes}, {l.reverseBytes, &s.reverseBytes}, {l.packets, &s.packets}, {l.reversePackets, &s.reversePackets},
		{l.connections, &s.connections}, {l.requests, &s.requests}, {l.http4xx, &s.http4xx}, {l.http5xx, &s.http5xx},
		{l.dnsErrors, &s.dnsErrors},
	} {
		m, err := c.vec.GetMetricWithLabelValues(values...)
		if err != nil {
			l.deleteSeries(values)
			return nil, fmt.Errorf("link series %q: %w", values, err)
		}
		*c.dst = m
	}
	return s, nil
}

func (l *Links) deleteSeries(values []string) {
	for _, v := range []*prometheus.CounterVec{l.bytes, l.reverseBytes, l.packets, l.reversePackets, l.connections,
		l.requests, l.http4xx, l.http5xx, l.dnsErrors} {
		v.DeleteLabelValues(values...)
	}
}

// Observe counts one row the correlator exported.
func (l *Links) Observe(r *correlate.Record) {
	k := KeyOf(r)
	now := l.now().UnixNano()
	l.mu.Lock()
	s, err := l.seriesFor(k, now)
	l.mu.Unlock()
	if err != nil {
		l.dropped.WithLabelValues("label").Inc()
		return
	}

	s.bytes.Add(float64(r.FwdDelta.Bytes))
	s.reverseBytes.Add(float64(r.RevDelta.Bytes))
	s.packets.Add(float64(r.FwdDelta.Packets))
	s.reversePackets.Add(float64(r.RevDelta.Packets))
	if firstRow(r) {
		s.connections.Inc()
	}
	s.requests.Add(float64(r.L7Counts.HTTPRequests))
	s.http4xx.Add(float64(r.L7Counts.HTTP4xx))
	s.http5xx.Add(float64(r.L7Counts.HTTP5xx))
	s.dnsErrors.Add(float64(r.L7Counts.DNSErrors))
}

// seriesFor finds or makes k's series (under l.mu): its own, its
// external end collapsed, or "other".
func (l *Links) seriesFor(k Key, now int64) (*series, error) {
	if s, ok := l.links[k]; ok {
		s.lastSeen = now
		return s, nil
	}
	ext := k.external()
	if ext && l.externals >= l.maxExternal {
		k.collapseExternal()
		if s, ok := l.links[k]; ok {
			s.lastSeen = now
			return s, nil
		}
	}
	if len(l.links) >= l.max {
		l.evictIdle(now)
	}
	if len(l.links) < l.max {
		s, err := l.newSeries(k.labelValues())
		if err != nil {
			return nil, err
		}
		s.lastSeen = now
		l.links[k] = s
		if ext && k.SourceName != Other && k.DestinationName != Other {
			l.externals++
		}
		l.tracked.Set(float64(len(l.links)))
		return s, nil
	}
	if l.other == nil {
		o := make([]string, len(labelNames))
		for i := range o {
			o[i] = Other
		}
		s, err := l.newSeries(o)
		if err != nil {
			return nil, err
		}
		l.other = s
	}
	l.overflow.Inc()
	return l.other, nil
}

// evictIdle deletes the series of links without a row for l.idle. It
// runs only when the cap is reached and a new link arrives, at most once
// per idle/4 of the clock (a scan is O(links)), so it costs nothing in
// the steady state.
func (l *Links) evictIdle(now int64) {
	if now-l.lastSweep < int64(l.idle/4) {
		return
	}
	l.lastSweep = now
	cutoff := now - int64(l.idle)
	for k, s := range l.links {
		if s.lastSeen > cutoff {
			continue
		}
		l.deleteSeries(s.values)
		delete(l.links, k)
		if k.external() && k.SourceName != Other && k.DestinationName != Other {
			l.externals--
		}
		l.evicted.Inc()
	}
	l.tracked.Set(float64(len(l.links)))
}

// firstRow tells whether r is its connection's first row: its deltas are
// its totals (the first export carries everything since the start; later
// ones, after an interim or idle-timeout export, carry less than the
// totals). A row without totals counts at its final row instead, the
// one sound place without per-connection state.
func firstRow(r *correlate.Record) bool {
	if r.Fwd == (flow.Counters{}) && r.Rev == (flow.Counters{}) {
		return r.EndReason != flow.EndActiveTimeout
	}
	return r.Fwd.Packets <= r.FwdDelta.Packets && r.Rev.Packets <= r.RevDelta.Packets
}

// KeyOf is the link a row belongs to, its names valid UTF-8.
func KeyOf(r *correlate.Record) Key {
	k := Key{DestinationPort: r.Tuple.DstPort, Protocol: r.Tuple.Proto, AppProtocol: validUTF8(r.L7.AppProtocolName)}
	k.SourceNamespace, k.SourceKind, k.SourceName = end(&r.Source, "", func() string { return r.Tuple.Src().String() })
	k.DestinationNamespace, k.DestinationKind, k.DestinationName = end(&r.Destination, r.ServicePortName,
		func() string {
			if n := r.L7.TLSServerName; n != "" && len(n) <= maxNameLen {
				return n
			}
			return r.Tuple.Dst().String()
		})
	for _, v := range []*string{&k.SourceNamespace, &k.SourceKind, &k.SourceName,
		&k.DestinationNamespace, &k.DestinationKind, &k.DestinationName} {
		*v = validUTF8(*v)
	}
	return k
}

// end names one end as the map does: the Service (svc, "ns/name:port",
// for the destination), then workload, pod, node, external (addr, called
// only then: it allocates).
func end(e *flow.Endpoint, svc string, addr func() string) (ns, kind, name string) {
	if svc != "" {
		if sns, sname, ok := splitService(svc); ok {
			return sns, KindService, sname
		}
	}
	switch {
	case e.WorkloadName != "":
		return e.PodNamespace, e.WorkloadKind, e.WorkloadName
	case e.PodName != "":
		return e.PodNamespace, KindPod, e.PodName
	case e.NodeName != "":
		return "", KindNode, e.NodeName
	}
	return "", KindExternal, addr()
}

// splitService splits Antrea's "namespace/service:port" into the
// namespace and the Service name (the port is a label of its own).
func splitService(s string) (ns, name string, ok bool) {
	ns, rest, ok := strings.Cut(s, "/")
	if !ok || ns == "" {
		return "", "", false
	}
	if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		rest = rest[:i]
	}
	if rest == "" {
		return "", "", false
	}
	return ns, rest, true
}
