// Package agentconfig loads and validates the flowlens-agent configuration.
// A bad value fails at start-up with an error that names the field the way
// it is written in the YAML file (e.g. "connections.activeTimeout").
package agentconfig

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/flowlens/flowlens/pkg/confutil"
	"github.com/flowlens/flowlens/pkg/flow"
)

// Config is the whole agent configuration. Zero values are replaced by the
// defaults in Default before validation, so a file only lists what it changes.
type Config struct {
	// NodeName identifies this node in exported records; defaults to the
	// NODE_NAME environment variable (set from the downward API), else the
	// host name.
	NodeName string `yaml:"nodeName"`
	// ClusterID names the cluster in every record (Antrea's clusterId IE,
	// Theia's clusterUUID column), so one aggregator can tell clusters
	// apart. Empty with kubernetes.enabled: the UID of the kube-system
	// namespace, read once at start; empty otherwise: none.
	ClusterID   string      `yaml:"clusterID"`
	Conntrack   Conntrack   `yaml:"conntrack"`
	Counters    Counters    `yaml:"counters"`
	Connections Connections `yaml:"connections"`
	Export      Export      `yaml:"export"`
	Server      Server      `yaml:"server"`
	Kubernetes  Kubernetes  `yaml:"kubernetes"`
	Inventory   Inventory   `yaml:"inventory"`
	L7          L7          `yaml:"l7"`
	Mirror      Mirror      `yaml:"mirror"`
	Observe     Observe     `yaml:"observe"`
}

// Kubernetes enables enrichment from the API server.
type Kubernetes struct {
	Enabled bool `yaml:"enabled"`
	// Kubeconfig is a kubeconfig path; empty means in-cluster config.
	Kubeconfig string `yaml:"kubeconfig"`
	// OwnNodeOnly caches full pods of this node only; remote pods are known
	// through EndpointSlices (a remote pod no Service selects looks external).
	OwnNodeOnly bool `yaml:"ownNodeOnly"`
	// GracePeriod is how long a deleted pod's IP still names it for
	// connections that started while it lived.
	GracePeriod Duration `yaml:"gracePeriod"`
}

// Inventory enables enrichment from a watched YAML file, for hosts without
// Kubernetes (VMs, bare metal, the demo).
type Inventory struct {
	File string `yaml:"file"`
}

// L7 configures enrichment from Suricata EVE events.
type L7 struct {
	// EVE is where Suricata's eve-log goes; an empty source turns L7 off.
	EVE EVE `yaml:"eve"`
	// MaxTransactions and MaxHTTPValsBytes bound httpVals per record.
	MaxTransactions  int `yaml:"maxTransactions"`
	MaxHTTPValsBytes int `yaml:"maxHTTPValsBytes"`
	// PendingEvents and PendingMaxAge bound events that arrive before
	// conntrack reports their connection.
	PendingEvents int      `yaml:"pendingEvents"`
	PendingMaxAge Duration `yaml:"pendingMaxAge"`
	// CloseDelay holds a closed connection's final record back this long:
	// Suricata logs a transaction when it sees the connection end, which
	// can be after conntrack reported the close.
	CloseDelay Duration `yaml:"closeDelay"`
	// Privacy is what of an HTTP transaction may leave the node: Default
	// for every namespace, Namespaces overriding it per namespace.
	Privacy L7Privacy `yaml:"privacy"`
}

// EVE is the input of Suricata's eve-log.
type EVE struct {
	// Source is unix_stream (the agent listens, Suricata connects),
	// unix_dgram, or file (tail eve.json); empty disables L7.
	Source string `yaml:"source"`
	Path   string `yaml:"path"`
	// FromStart reads a file source from its beginning instead of its end.
	FromStart bool `yaml:"fromStart"`
	// MaxLineBytes bounds one EVE record; longer ones are counted and skipped.
	MaxLineBytes int `yaml:"maxLineBytes"`
	// MaxClients bounds the clients of a unix_stream socket; more are
	// refused and counted (eve.Config.MaxClients).
	MaxClients int `yaml:"maxClients"`
	// MaxBufferedBytes bounds the bytes of unfinished lines over all
	// clients of a unix_stream socket (eve.Config.MaxBufferedBytes).
	MaxBufferedBytes int `yaml:"maxBufferedBytes"`
}

// L7Privacy holds the default and per-namespace privacy settings.
type L7Privacy struct {
	Default    Privacy            `yaml:"default"`
	Namespaces map[string]Privacy `yaml:"namespaces"`
}

// Privacy: the zero value drops query strings and path parameters and
// keeps the rest (userinfo is always dropped; see l7.Privacy). It converts
// to l7.Privacy, so the fields must stay the same.
type Privacy struct {
	KeepQuery      bool `yaml:"keepQuery"`
	DropURL        bool `yaml:"dropURL"`
	DropUserAgent  bool `yaml:"dropUserAgent"`
	KeepPathParams bool `yaml:"keepPathParams"`
}

// Conntrack says where and how connections are read from the kernel.
type Conntrack struct {
	// NetNS is the path of the network namespace whose conntrack table is
	// read; empty means the agent's own (hostNetwork: the node's).
	NetNS string `yaml:"netns"`
	// Zones limits the dump to these conntrack zones; empty means all.
	Zones []uint16 `yaml:"zones"`
	// Mark and MarkMask keep only entries with (mark & MarkMask) == Mark;
	// MarkMask 0 disables the filter.
	Mark     uint32 `yaml:"mark"`
	MarkMask uint32 `yaml:"markMask"`
	// PollInterval is how often the whole table is dumped when counters
	// come from conntrack (counters.source conntrack, or auto without
	// eBPF): the dump keeps counters current, events make closes visible
	// sooner.
	PollInterval Duration `yaml:"pollInterval"`
	// ResyncInterval is how often the whole table is dumped when counters
	// come from eBPF: births, NAT and deaths come from events then, and the
	// dump only repairs what events could have missed (it also runs at
	// once after an event overrun). A dump costs ~4-10 µs per entry, so on
	// a 1M-entry table this interval is what the idle agent spends.
	ResyncInterval Duration `yaml:"resyncInterval"`
	// Events enables the NEW/DESTROY listener.
	Events *bool `yaml:"events"`
	// EnableAccounting turns on nf_conntrack_acct and nf_conntrack_timestamp
	// in the namespace; without them there are no counters or start times.
	EnableAccounting *bool `yaml:"enableAccounting"`
}

// Counters says where packet and byte counters come from.
type Counters struct {
	// Source is auto (default: an eBPF program on the pods' interfaces
	// counts what it sees from the first packet, conntrack the rest; where
	// the program cannot load, the agent logs which and why and polls
	// conntrack instead), ebpf (the same, but failing to load is fatal) or
	// conntrack (poll the table every conntrack.pollInterval).
	Source string `yaml:"source"`
	// MapEntries bounds the eBPF flow table: one entry per direction of a
	// connection as one interface sees it. When it is full, connections
	// that lose packets to it are counted by conntrack instead (counted:
	// flowlens_agent_counter_source_switches_total).
	MapEntries int `yaml:"mapEntries"`
	// Attach is how the program is attached: auto (TCX, else a tc clsact
	// filter), tcx or tc.
	Attach string `yaml:"attach"`
	// CrossCheck compares the eBPF totals of each connection with
	// conntrack's when it ends, and logs and counts disagreements beyond
	// the tolerances (flowlens_agent_counter_crosscheck_total).
	CrossCheck CrossCheck `yaml:"crossCheck"`
}

// CrossCheck is counters.crossCheck; tolerances are absolute, per direction.
type CrossCheck struct {
	Enabled          bool   `yaml:"enabled"`
	TolerancePackets uint64 `yaml:"tolerancePackets"`
	ToleranceBytes   uint64 `yaml:"toleranceBytes"`
}

// Values of Counters.Source and Counters.Attach.
const (
	CountersAuto      = "auto"
	CountersEBPF      = "ebpf"
	CountersConntrack = "conntrack"
	AttachAuto        = "auto"
	AttachTCX         = "tcx"
	AttachTC          = "tc"
	// MaxCounterMapEntries keeps the kernel table within reason (~160 B
	// of kernel memory per entry).
	MaxCounterMapEntries = 1 << 24
)

// Connections bounds the store and sets the export cadence.
type Connections struct {
	MaxConnections int      `yaml:"maxConnections"`
	ActiveTimeout  Duration `yaml:"activeTimeout"`
	IdleTimeout    Duration `yaml:"idleTimeout"`
	// TickInterval is how often due connections are exported.
	TickInterval Duration `yaml:"tickInterval"`
}

// Export describes the IPFIX collector.
type Export struct {
	Collector string `yaml:"collector"`
	Transport string `yaml:"transport"` // tcp, udp or tls
	TLS       TLS    `yaml:"tls"`
	// Collectors and CollectorDNS shard the records over several
	// aggregator replicas instead ("host:port" each, or one DNS name of a
	// headless Service with the port, re-resolved every ResolveInterval):
	// each connection goes to one replica chosen by rendezvous hashing of
	// the connection, the same on every node. Only one of collector,
	// collectors and collectorDNS may be set; a file that sets collectors
	// or collectorDNS does not get the default collector.
	Collectors   []string `yaml:"collectors"`
	CollectorDNS string   `yaml:"collectorDNS"`
	// ResolveInterval is how often CollectorDNS is resolved again.
	ResolveInterval Duration `yaml:"resolveInterval"`
	// FailoverAfter takes a replica that has been unreachable this long out
	// of the ring: its connections go to the others until it is back.
	FailoverAfter Duration `yaml:"failoverAfter"`
	// ReconnectMax caps the backoff between attempts to reach a collector
	// that went away. It is also how late, at worst, a replica that came
	// back gets its share of the connections again.
	ReconnectMax Duration `yaml:"reconnectMax"`
	// ObservationDomainID defaults to a hash of the node name so that
	// a collector can tell agents apart.
	ObservationDomainID uint32 `yaml:"observationDomainID"`
	// PathMTU bounds UDP messages; TCP and TLS messages stay within the
	// 65535-byte IPFIX length limit.
	PathMTU int `yaml:"pathMTU"`
	// BufferRecords bounds the records waiting to be sent. When it is
	// full the agent keeps the rest in its connection store and offers
	// them again (backpressure, nothing lost); only once the collector has
	// been unreachable for 30 s are records beyond it dropped and counted.
	BufferRecords int `yaml:"bufferRecords"`
	// FlushInterval is the longest a record waits for a fuller message.
	FlushInterval Duration `yaml:"flushInterval"`
	// TemplateRefresh and TemplateRefreshMessages resend templates over
	// UDP, where a collector that restarts cannot ask for them, whichever
	// comes first: after this long, or after this many data messages since
	// they last went out (RFC 7011 section 8.4). Until then such a
	// collector drops every record.
	TemplateRefresh         Duration `yaml:"templateRefresh"`
	TemplateRefreshMessages int      `yaml:"templateRefreshMessages"`
	// L7DetailElements exports flow.L7's DNS/TLS details and both ends'
	// workloads as enterprise-32473 IEs (ipfixexport.Config.L7DetailElements).
	// Unset, it follows CollectorKind: on for flowlens (flowlens-aggregator
	// reads them: its service map groups pods by workload), off for antrea.
	// A go-ipfix collector in Strict mode (that library's default) rejects
	// templates holding IEs it does not know, with every record: set false
	// for one (docs/ipfix-elements.md). After validation it is never nil.
	L7DetailElements *bool `yaml:"l7DetailElements"`
	// HealthElements exports each connection's network health (RTT,
	// retransmissions, resets, time to establish, zero windows, drops and
	// their reason) and its destination's DNS name
	// (ipfixexport.Config.HealthElements). Unset, it follows
	// CollectorKind: on for flowlens, which stores them; off for antrea:
	// Antrea's Flow Aggregator (v2.3 onwards) decodes unknown IEs
	// leniently and so accepts the templates, but has no field for them
	// and drops them. The Strict go-ipfix caveat of L7DetailElements
	// applies. After validation it is never nil.
	HealthElements *bool `yaml:"healthElements"`
	// CollectorKind is what reads the records: CollectorFlowlens (both
	// ends' pods in every record; flowlens-aggregator tells halves by
	// observation domain) or CollectorAntrea (only this node's pods, the
	// halves Antrea's Flow Aggregator expects; docs/antrea-compatibility.md).
	// IPFIX gives an exporter no way to ask, hence a setting. Any case
	// in the file; Load lower-cases it.
	CollectorKind string `yaml:"collectorKind"`
}

// Values of Export.CollectorKind.
const (
	CollectorFlowlens = "flowlens"
	CollectorAntrea   = "antrea"
)

// TLS configures the tls transport.
type TLS struct {
	CAFile     string `yaml:"caFile"`
	CertFile   string `yaml:"certFile"`
	KeyFile    string `yaml:"keyFile"`
	ServerName string `yaml:"serverName"`
}

// Server is the agent's HTTP endpoint for /metrics and /healthz.
type Server struct {
	Listen string `yaml:"listen"`
}

// Default returns the configuration used for every field a file leaves out.
func Default() Config {
	// One variable per pointer: the YAML decoder writes through a non-nil
	// pointer, so a shared one made `enableAccounting: false` turn
	// conntrack.events off too.
	events, accounting := true, true
	return Config{
		Conntrack: Conntrack{
			PollInterval:     Duration(time.Second),
			ResyncInterval:   Duration(5 * time.Minute),
			Events:           &events,
			EnableAccounting: &accounting,
		},
		Counters: Counters{
			Source:     CountersAuto,
			MapEntries: 262144,
			Attach:     AttachAuto,
		},
		Connections: Connections{
			MaxConnections: 262144,
			ActiveTimeout:  Duration(5 * time.Second),
			IdleTimeout:    Duration(15 * time.Second),
			TickInterval:   Duration(100 * time.Millisecond),
		},
		Export: Export{
			Collector:               "127.0.0.1:4739",
			ResolveInterval:         Duration(30 * time.Second),
			FailoverAfter:           Duration(15 * time.Second),
			ReconnectMax:            Duration(30 * time.Second),
			Transport:               "tcp",
			PathMTU:                 1500,
			BufferRecords:           100000,
			FlushInterval:           Duration(500 * time.Millisecond),
			TemplateRefresh:         Duration(30 * time.Second),
			TemplateRefreshMessages: 20,
			CollectorKind:           CollectorFlowlens,
		},
		Server:  Server{Listen: "127.0.0.1:9560"},
		Mirror:  defaultMirror(),
		Observe: defaultObserve(),
		Kubernetes: Kubernetes{
			GracePeriod: Duration(5 * time.Minute),
		},
		L7: L7{
			EVE:              EVE{Path: "/run/flowlens/eve.sock", MaxLineBytes: 16 << 20, MaxClients: 16, MaxBufferedBytes: 64 << 20},
			MaxTransactions:  32,
			MaxHTTPValsBytes: 16 << 10,
			PendingEvents:    4096,
			PendingMaxAge:    Duration(5 * time.Second),
			CloseDelay:       Duration(time.Second),
		},
	}
}

// Load reads a YAML file over the defaults and validates the result. An
// empty path yields the defaults. Unknown fields are errors: a misspelt
// option silently ignored is a default the user did not choose.
func Load(path string) (Config, error) {
	cfg := Default()
	if path == "" {
		return cfg, cfg.fillAndValidate()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	doc, err := confutil.Decode(data, &cfg)
	if err != nil && len(confutil.Fields(err)) == 0 {
		return Config{}, fmt.Errorf("config %s: %w", path, err) // not YAML
	}
	// The default collector is for a file that names none.
	if (doc.Has("export", "collectors") || doc.Has("export", "collectorDNS")) && !doc.Has("export", "collector") {
		cfg.Export.Collector = ""
	}
	// What could be read is validated too: every problem in one run.
	var p confutil.Problems
	p.AddErr(err)
	p.AddErr(cfg.fillAndValidate())
	if err := p.Err(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Finish fills derived defaults and validates; call it after flags have
// overridden file values.
func (c *Config) Finish() error { return c.fillAndValidate() }

func (c *Config) fillAndValidate() error {
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("nodeName: not set and host name unknown: %w", err)
		}
		c.NodeName = h
	}
	if c.Export.ObservationDomainID == 0 {
		c.Export.ObservationDomainID = flow.DefaultObservationDomainID(c.NodeName)
	}
	return c.validate()
}

// Upper bounds of the size and count options, stated in the errors and in
// docs/examples/agent.yaml: past them a typo becomes an out-of-memory kill
// (export.bufferRecords: 2000000000 did, issue 9 item 11) instead of an
// error naming the option.
const (
	// MaxConnections: ~270 bytes per tracked connection.
	MaxConnections = 1 << 24
	// MaxBufferRecords: the export buffer is allocated at start, ~344
	// bytes a record (a pointer-free slot and 128 B of strings).
	MaxBufferRecords = 1_000_000
	// MaxCollectors bounds the aggregator replicas (export.collectors, or
	// the addresses export.collectorDNS resolves to: beyond it the lowest
	// MaxCollectors in sorted order are used, the same on every agent).
	// Every replica's exporter allocates its own buffer, so the export
	// buffers take up to replicas × bufferRecords × ~344 bytes: 64 ×
	// 100000 × 344 B ≈ 2.2 GB at the bound with the default bufferRecords.
	MaxCollectors = 64
	// MaxEVELineBytes bounds the memory one EVE record can take.
	MaxEVELineBytes = 1 << 28
	// MaxEVEClients and MaxEVEBufferedBytes bound the EVE socket's memory.
	MaxEVEClients       = 1024
	MaxEVEBufferedBytes = 1 << 30
	// MaxHTTPValsBytes: httpVals is one IPFIX variable-length field.
	MaxHTTPValsBytes = 65535
	MaxTransactions  = 4096
	MaxPendingEvents = 1 << 20
	// MaxTemplateRefreshMessages: past it the count never triggers in
	// practice and only export.templateRefresh would, which is what the
	// option is there to improve on.
	MaxTemplateRefreshMessages = 100_000
)

func (c *Config) validate() error {
	var p confutil.Problems
	p.FileExists("conntrack.netns", c.Conntrack.NetNS)
	if c.Conntrack.Mark&^c.Conntrack.MarkMask != 0 {
		p.Addf("conntrack.mark", "0x%x has bits outside conntrack.markMask 0x%x, so nothing would match", c.Conntrack.Mark, c.Conntrack.MarkMask)
	}
	validateClusterID(&p, c.ClusterID)
	p.PositiveDuration("conntrack.pollInterval", c.Conntrack.PollInterval)
	p.PositiveDuration("conntrack.resyncInterval", c.Conntrack.ResyncInterval)
	c.Counters.Source = strings.ToLower(c.Counters.Source)
	switch c.Counters.Source {
	case CountersAuto, CountersConntrack:
	case CountersEBPF:
		if !*c.Conntrack.Events {
			p.Addf("counters.source", "ebpf needs conntrack.events (connections are born from NEW events)")
		}
	default:
		p.Addf("counters.source", "want auto, ebpf or conntrack, got %q", c.Counters.Source)
	}
	confutil.Range(&p, "counters.mapEntries", c.Counters.MapEntries, 1024, MaxCounterMapEntries)
	c.Counters.Attach = strings.ToLower(c.Counters.Attach)
	switch c.Counters.Attach {
	case AttachAuto, AttachTCX, AttachTC:
	default:
		p.Addf("counters.attach", "want auto, tcx or tc, got %q", c.Counters.Attach)
	}
	confutil.Range(&p, "connections.maxConnections", c.Connections.MaxConnections, 1, MaxConnections)
	p.PositiveDuration("connections.activeTimeout", c.Connections.ActiveTimeout)
	p.PositiveDuration("connections.idleTimeout", c.Connections.IdleTimeout)
	p.PositiveDuration("connections.tickInterval", c.Connections.TickInterval)
	if c.Connections.TickInterval > c.Connections.ActiveTimeout {
		p.Addf("connections.tickInterval", "%s is longer than connections.activeTimeout %s", c.Connections.TickInterval, c.Connections.ActiveTimeout)
	}
	c.validateReplicas(&p)
	switch strings.ToLower(c.Export.Transport) {
	case "tcp", "udp":
		if c.Export.TLS != (TLS{}) {
			p.Addf("export.tls", "set, but export.transport is %q (want \"tls\")", c.Export.Transport)
		}
	case "tls":
		if (c.Export.TLS.CertFile == "") != (c.Export.TLS.KeyFile == "") {
			p.Addf("export.tls.certFile", "certFile and keyFile go together")
		}
		p.FileExists("export.tls.caFile", c.Export.TLS.CAFile)
		p.FileExists("export.tls.certFile", c.Export.TLS.CertFile)
		p.FileExists("export.tls.keyFile", c.Export.TLS.KeyFile)
	default:
		p.Addf("export.transport", "want tcp, udp or tls, got %q", c.Export.Transport)
	}
	c.Export.Transport = strings.ToLower(c.Export.Transport)
	// 576 is the minimum IPv4 datagram every host must accept; below it a
	// record with long names may not fit at all.
	confutil.Range(&p, "export.pathMTU", c.Export.PathMTU, 576, 65535)
	confutil.Range(&p, "export.bufferRecords", c.Export.BufferRecords, 1, MaxBufferRecords)
	p.PositiveDuration("export.flushInterval", c.Export.FlushInterval)
	p.PositiveDuration("export.templateRefresh", c.Export.TemplateRefresh)
	confutil.Range(&p, "export.templateRefreshMessages", c.Export.TemplateRefreshMessages, 1, MaxTemplateRefreshMessages)
	// Case-insensitive like export.transport: "Antrea" is not worth a
	// failed start. Normalised here so the agent compares exact values.
	switch kind := strings.ToLower(c.Export.CollectorKind); kind {
	case CollectorFlowlens, CollectorAntrea:
		c.Export.CollectorKind = kind
		// Antrea's records are told apart by pod names: with no source of
		// context every record would be nameless and dropped as one whose
		// source is not a pod.
		if kind == CollectorAntrea && !c.Kubernetes.Enabled && c.Inventory.File == "" {
			p.Addf("export.collectorKind", "%q needs kubernetes.enabled or inventory.file to know which ends are this node's pods", CollectorAntrea)
		}
		if c.Export.L7DetailElements == nil {
			on := kind == CollectorFlowlens
			c.Export.L7DetailElements = &on
		}
		if c.Export.HealthElements == nil {
			on := kind == CollectorFlowlens
			c.Export.HealthElements = &on
		}
	default:
		p.Addf("export.collectorKind", "want %q or %q, got %q", CollectorFlowlens, CollectorAntrea, c.Export.CollectorKind)
	}
	p.HostPort("server.listen", c.Server.Listen, true)
	if c.Kubernetes.Enabled && c.Inventory.File != "" {
		p.Addf("inventory.file", "set together with kubernetes.enabled; choose one source of context")
	}
	p.PositiveDuration("kubernetes.gracePeriod", c.Kubernetes.GracePeriod)
	p.FileExists("inventory.file", c.Inventory.File)
	switch c.L7.EVE.Source {
	case "":
	case "unix_stream", "unix_dgram", "file":
		if c.L7.EVE.Path == "" {
			p.Addf("l7.eve.path", "empty")
		}
		// The opt-in annotation lives on pods and namespaces: without a
		// source of context no connection can be opted in.
		if !c.Kubernetes.Enabled && c.Inventory.File == "" {
			p.Addf("l7.eve.source", "%q needs kubernetes.enabled or inventory.file for the visibility.antrea.io/l7-export opt-in", c.L7.EVE.Source)
		}
	default:
		p.Addf("l7.eve.source", "want unix_stream, unix_dgram, file or empty, got %q", c.L7.EVE.Source)
	}
	confutil.Range(&p, "l7.eve.maxLineBytes", c.L7.EVE.MaxLineBytes, 4096, MaxEVELineBytes)
	confutil.Range(&p, "l7.eve.maxClients", c.L7.EVE.MaxClients, 1, MaxEVEClients)
	if c.L7.EVE.MaxBufferedBytes < c.L7.EVE.MaxLineBytes {
		p.Addf("l7.eve.maxBufferedBytes", "must be at least l7.eve.maxLineBytes (%d), got %d", c.L7.EVE.MaxLineBytes, c.L7.EVE.MaxBufferedBytes)
	} else {
		confutil.Range(&p, "l7.eve.maxBufferedBytes", c.L7.EVE.MaxBufferedBytes, 4096, MaxEVEBufferedBytes)
	}
	confutil.Range(&p, "l7.maxTransactions", c.L7.MaxTransactions, 1, MaxTransactions)
	// pkg/l7 checks this bound too, but names its Go field; the user wrote
	// l7.maxHTTPValsBytes.
	confutil.Range(&p, "l7.maxHTTPValsBytes", c.L7.MaxHTTPValsBytes, 1, MaxHTTPValsBytes)
	confutil.Range(&p, "l7.pendingEvents", c.L7.PendingEvents, 1, MaxPendingEvents)
	p.PositiveDuration("l7.pendingMaxAge", c.L7.PendingMaxAge)
	if c.L7.CloseDelay < 0 || c.L7.CloseDelay > c.Connections.IdleTimeout {
		p.Addf("l7.closeDelay", "must be within 0..connections.idleTimeout, got %s", c.L7.CloseDelay)
	}
	c.validateMirror(&p)
	c.validateObserve(&p)
	return p.Err()
}

// validateReplicas checks export.collector, export.collectors and
// export.collectorDNS: exactly one of them names where records go.
func (c *Config) validateReplicas(p *confutil.Problems) {
	e := &c.Export
	p.PositiveDuration("export.resolveInterval", e.ResolveInterval)
	p.PositiveDuration("export.failoverAfter", e.FailoverAfter)
	p.PositiveDuration("export.reconnectMax", e.ReconnectMax)
	set := 0
	for _, v := range []bool{e.Collector != "", len(e.Collectors) > 0, e.CollectorDNS != ""} {
		if v {
			set++
		}
	}
	switch {
	case set > 1:
		p.Addf("export.collectors", "collector %q, collectors %q and collectorDNS %q: set only one", e.Collector, e.Collectors, e.CollectorDNS)
		return
	case len(e.Collectors) > MaxCollectors:
		p.Addf("export.collectors", "%d collectors, at most %d (each replica's exporter allocates bufferRecords records)", len(e.Collectors), MaxCollectors)
	case len(e.Collectors) > 0:
		seen := map[string]bool{}
		for i, hp := range e.Collectors {
			field := fmt.Sprintf("export.collectors[%d]", i)
			p.HostPort(field, hp, false)
			if seen[hp] {
				p.Addf(field, "%q is listed twice", hp)
			}
			seen[hp] = true
		}
	case e.CollectorDNS != "":
		p.HostPort("export.collectorDNS", e.CollectorDNS, false)
		if host, _, err := net.SplitHostPort(e.CollectorDNS); err == nil && host == "" {
			p.Addf("export.collectorDNS", "want name:port, got %q", e.CollectorDNS)
		}
	default:
		p.HostPort("export.collector", e.Collector, false)
	}
}

// MaxClusterIDBytes bounds clusterID: a UUID is 36 bytes, a DNS name at
// most 253, and the value travels in every record.
const MaxClusterIDBytes = 253

// validateClusterID refuses what would make the cluster column unusable
// as a filter: control characters, invalid UTF-8, surrounding spaces.
func validateClusterID(p *confutil.Problems, id string) {
	switch {
	case len(id) > MaxClusterIDBytes:
		p.Addf("clusterID", "%d bytes, at most %d", len(id), MaxClusterIDBytes)
	case !utf8.ValidString(id):
		p.Addf("clusterID", "not valid UTF-8")
	case strings.TrimSpace(id) != id:
		p.Addf("clusterID", "%q has leading or trailing spaces", id)
	case strings.IndexFunc(id, unicode.IsControl) >= 0:
		p.Addf("clusterID", "%q has control characters", id)
	}
}
