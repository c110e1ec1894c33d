// Package agentconfig loads and validates the flowlens-agent configuration.
// A bad value fails at start-up with an error that names the field the way
// it is written in the YAML file (e.g. "connections.activeTimeout").
package agentconfig

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Config is the whole agent configuration. Zero values are replaced by the
// defaults in Default before validation, so a file only lists what it changes.
type Config struct {
	// NodeName identifies this node in exported records; defaults to the
	// NODE_NAME environment variable (set from the downward API), else the
	// host name.
	NodeName    string      `json:"nodeName,omitempty"`
	Conntrack   Conntrack   `json:"conntrack"`
	Connections Connections `json:"connections"`
	Export      Export      `json:"export"`
	Server      Server      `json:"server"`
	Kubernetes  Kubernetes  `json:"kubernetes"`
	Inventory   Inventory   `json:"inventory"`
	L7          L7          `json:"l7"`
}

// Kubernetes enables enrichment from the API server.
type Kubernetes struct {
	Enabled bool `json:"enabled,omitempty"`
	// Kubeconfig is a kubeconfig path; empty means in-cluster config.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// OwnNodeOnly caches full pods of this node only; remote pods are known
	// through EndpointSlices (a remote pod no Service selects looks external).
	OwnNodeOnly bool `json:"ownNodeOnly,omitempty"`
	// GracePeriod is how long a deleted pod's IP still names it for
	// connections that started while it lived.
	GracePeriod Duration `json:"gracePeriod,omitempty"`
}

// Inventory enables enrichment from a watched YAML file, for hosts without
// Kubernetes (VMs, bare metal, the demo).
type Inventory struct {
	File string `json:"file,omitempty"`
}

// L7 configures enrichment from Suricata EVE events.
type L7 struct {
	// EVE is where Suricata's eve-log goes; an empty source turns L7 off.
	EVE EVE `json:"eve"`
	// MaxTransactions and MaxHTTPValsBytes bound httpVals per record.
	MaxTransactions  int `json:"maxTransactions,omitempty"`
	MaxHTTPValsBytes int `json:"maxHTTPValsBytes,omitempty"`
	// PendingEvents and PendingMaxAge bound events that arrive before
	// conntrack reports their connection.
	PendingEvents int      `json:"pendingEvents,omitempty"`
	PendingMaxAge Duration `json:"pendingMaxAge,omitempty"`
	// CloseDelay holds a closed connection's final record back this long:
	// Suricata logs a transaction when it sees the connection end, which
	// can be after conntrack reported the close.
	CloseDelay Duration `json:"closeDelay,omitempty"`
	// Privacy is what of an HTTP transaction may leave the node: Default
	// for every namespace, Namespaces overriding it per namespace.
	Privacy L7Privacy `json:"privacy"`
}

// EVE is the input of Suricata's eve-log.
type EVE struct {
	// Source is unix_stream (the agent listens, Suricata connects),
	// unix_dgram, or file (tail eve.json); empty disables L7.
	Source string `json:"source,omitempty"`
	Path   string `json:"path,omitempty"`
	// FromStart reads a file source from its beginning instead of its end.
	FromStart bool `json:"fromStart,omitempty"`
	// MaxLineBytes bounds one EVE record; longer ones are counted and skipped.
	MaxLineBytes int `json:"maxLineBytes,omitempty"`
}

// L7Privacy holds the default and per-namespace privacy settings.
type L7Privacy struct {
	Default    Privacy            `json:"default"`
	Namespaces map[string]Privacy `json:"namespaces,omitempty"`
}

// Privacy: the zero value drops query strings and keeps the rest.
type Privacy struct {
	KeepQuery     bool `json:"keepQuery,omitempty"`
	DropURL       bool `json:"dropURL,omitempty"`
	DropUserAgent bool `json:"dropUserAgent,omitempty"`
}

// Conntrack says where and how connections are read from the kernel.
type Conntrack struct {
	// NetNS is the path of the network namespace whose conntrack table is
	// read; empty means the agent's own (hostNetwork: the node's).
	NetNS string `json:"netns,omitempty"`
	// Zones limits the dump to these conntrack zones; empty means all.
	Zones []uint16 `json:"zones,omitempty"`
	// Mark and MarkMask keep only entries with (mark & MarkMask) == Mark;
	// MarkMask 0 disables the filter.
	Mark     uint32 `json:"mark,omitempty"`
	MarkMask uint32 `json:"markMask,omitempty"`
	// PollInterval is how often the whole table is dumped; events make
	// closes visible sooner, the dump keeps counters current.
	PollInterval Duration `json:"pollInterval,omitempty"`
	// Events enables the NEW/DESTROY listener.
	Events *bool `json:"events,omitempty"`
	// EnableAccounting turns on nf_conntrack_acct and nf_conntrack_timestamp
	// in the namespace; without them there are no counters or start times.
	EnableAccounting *bool `json:"enableAccounting,omitempty"`
}

// Connections bounds the store and sets the export cadence.
type Connections struct {
	MaxConnections int      `json:"maxConnections,omitempty"`
	ActiveTimeout  Duration `json:"activeTimeout,omitempty"`
	IdleTimeout    Duration `json:"idleTimeout,omitempty"`
	// TickInterval is how often due connections are exported.
	TickInterval Duration `json:"tickInterval,omitempty"`
}

// Export describes the IPFIX collector.
type Export struct {
	Collector string `json:"collector,omitempty"`
	Transport string `json:"transport,omitempty"` // tcp, udp or tls
	TLS       TLS    `json:"tls,omitempty"`
	// ObservationDomainID defaults to a hash of the node name so that
	// a collector can tell agents apart.
	ObservationDomainID uint32 `json:"observationDomainID,omitempty"`
	// PathMTU bounds UDP messages; TCP and TLS messages stay within the
	// 65535-byte IPFIX length limit.
	PathMTU int `json:"pathMTU,omitempty"`
	// BufferRecords bounds what is kept while the collector is away;
	// records beyond it are dropped and counted.
	BufferRecords int `json:"bufferRecords,omitempty"`
	// FlushInterval is the longest a record waits for a fuller message.
	FlushInterval Duration `json:"flushInterval,omitempty"`
	// TemplateRefresh resends templates over UDP, where a collector that
	// restarts cannot ask for them.
	TemplateRefresh Duration `json:"templateRefresh,omitempty"`
	// L7DetailElements exports flow.L7's DNS/TLS details as nine extra
	// enterprise-32473 IEs (ipfixexport.Config.L7DetailElements). Off by
	// default: a go-ipfix collector in Strict mode, such as Antrea's Flow
	// Aggregator, rejects templates holding IEs it does not know.
	L7DetailElements bool `json:"l7DetailElements,omitempty"`
}

// TLS configures the tls transport.
type TLS struct {
	CAFile     string `json:"caFile,omitempty"`
	CertFile   string `json:"certFile,omitempty"`
	KeyFile    string `json:"keyFile,omitempty"`
	ServerName string `json:"serverName,omitempty"`
}

// Server is the agent's HTTP endpoint for /metrics and /healthz.
type Server struct {
	Listen string `json:"listen,omitempty"`
}

// Default returns the configuration used for every field a file leaves out.
func Default() Config {
	yes := true
	return Config{
		Conntrack: Conntrack{
			PollInterval:     Duration(time.Second),
			Events:           &yes,
			EnableAccounting: &yes,
		},
		Connections: Connections{
			MaxConnections: 262144,
			ActiveTimeout:  Duration(5 * time.Second),
			IdleTimeout:    Duration(15 * time.Second),
			TickInterval:   Duration(100 * time.Millisecond),
		},
		Export: Export{
			Collector:       "127.0.0.1:4739",
			Transport:       "tcp",
			PathMTU:         1500,
			BufferRecords:   100000,
			FlushInterval:   Duration(time.Second),
			TemplateRefresh: Duration(10 * time.Minute),
		},
		Server: Server{Listen: "127.0.0.1:9560"},
		Kubernetes: Kubernetes{
			GracePeriod: Duration(5 * time.Minute),
		},
		L7: L7{
			EVE:              EVE{Path: "/run/flowlens/eve.sock", MaxLineBytes: 16 << 20},
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
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return Config{}, fmt.Errorf("parse config %s: %w", path, err)
	}
	if err := cfg.fillAndValidate(); err != nil {
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

func (c *Config) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	positive := func(field string, d Duration) {
		if d <= 0 {
			bad(field, "must be a positive duration, got %q", d.D().String())
		}
	}
	if c.Conntrack.NetNS != "" {
		if _, err := os.Stat(c.Conntrack.NetNS); err != nil {
			bad("conntrack.netns", "%v", err)
		}
	}
	if c.Conntrack.Mark&^c.Conntrack.MarkMask != 0 {
		bad("conntrack.mark", "0x%x has bits outside conntrack.markMask 0x%x, so nothing would match", c.Conntrack.Mark, c.Conntrack.MarkMask)
	}
	positive("conntrack.pollInterval", c.Conntrack.PollInterval)
	if c.Connections.MaxConnections <= 0 {
		bad("connections.maxConnections", "must be > 0, got %d", c.Connections.MaxConnections)
	}
	positive("connections.activeTimeout", c.Connections.ActiveTimeout)
	positive("connections.idleTimeout", c.Connections.IdleTimeout)
	positive("connections.tickInterval", c.Connections.TickInterval)
	if c.Connections.TickInterval > c.Connections.ActiveTimeout {
		bad("connections.tickInterval", "%s is longer than connections.activeTimeout %s", c.Connections.TickInterval.D(), c.Connections.ActiveTimeout.D())
	}
	if _, _, err := net.SplitHostPort(c.Export.Collector); err != nil {
		bad("export.collector", "want host:port, got %q", c.Export.Collector)
	}
	switch strings.ToLower(c.Export.Transport) {
	case "tcp", "udp":
		if c.Export.TLS != (TLS{}) {
			bad("export.tls", "set, but export.transport is %q (want \"tls\")", c.Export.Transport)
		}
	case "tls":
		if (c.Export.TLS.CertFile == "") != (c.Export.TLS.KeyFile == "") {
			bad("export.tls.certFile", "certFile and keyFile go together")
		}
		for _, f := range []struct{ field, path string }{
			{"export.tls.caFile", c.Export.TLS.CAFile},
			{"export.tls.certFile", c.Export.TLS.CertFile},
			{"export.tls.keyFile", c.Export.TLS.KeyFile},
		} {
			if f.path == "" {
				continue
			}
			if _, err := os.Stat(f.path); err != nil {
				bad(f.field, "%v", err)
			}
		}
	default:
		bad("export.transport", "want tcp, udp or tls, got %q", c.Export.Transport)
	}
	c.Export.Transport = strings.ToLower(c.Export.Transport)
	// 576 is the minimum IPv4 datagram every host must accept; below it a
	// record with long names may not fit at all.
	if c.Export.PathMTU < 576 || c.Export.PathMTU > 65535 {
		bad("export.pathMTU", "must be within 576..65535, got %d", c.Export.PathMTU)
	}
	if c.Export.BufferRecords <= 0 {
		bad("export.bufferRecords", "must be > 0, got %d", c.Export.BufferRecords)
	}
	positive("export.flushInterval", c.Export.FlushInterval)
	positive("export.templateRefresh", c.Export.TemplateRefresh)
	if _, _, err := net.SplitHostPort(c.Server.Listen); err != nil {
		bad("server.listen", "want host:port, got %q", c.Server.Listen)
	}
	if c.Kubernetes.Enabled && c.Inventory.File != "" {
		bad("inventory.file", "set together with kubernetes.enabled; choose one source of context")
	}
	positive("kubernetes.gracePeriod", c.Kubernetes.GracePeriod)
	if c.Inventory.File != "" {
		if _, err := os.Stat(c.Inventory.File); err != nil {
			bad("inventory.file", "%v", err)
		}
	}
	switch c.L7.EVE.Source {
	case "":
	case "unix_stream", "unix_dgram", "file":
		if c.L7.EVE.Path == "" {
			bad("l7.eve.path", "empty")
		}
		// The opt-in annotation lives on pods and namespaces: without a
		// source of context no connection can be opted in.
		if !c.Kubernetes.Enabled && c.Inventory.File == "" {
			bad("l7.eve.source", "%q needs kubernetes.enabled or inventory.file for the visibility.antrea.io/l7-export opt-in", c.L7.EVE.Source)
		}
	default:
		bad("l7.eve.source", "want unix_stream, unix_dgram, file or empty, got %q", c.L7.EVE.Source)
	}
	if c.L7.EVE.MaxLineBytes < 4096 {
		bad("l7.eve.maxLineBytes", "must be >= 4096, got %d", c.L7.EVE.MaxLineBytes)
	}
	for _, f := range []struct {
		field string
		v     int
	}{
		{"l7.maxTransactions", c.L7.MaxTransactions},
		{"l7.maxHTTPValsBytes", c.L7.MaxHTTPValsBytes},
		{"l7.pendingEvents", c.L7.PendingEvents},
	} {
		if f.v <= 0 {
			bad(f.field, "must be > 0, got %d", f.v)
		}
	}
	positive("l7.pendingMaxAge", c.L7.PendingMaxAge)
	if c.L7.CloseDelay < 0 || c.L7.CloseDelay.D() > c.Connections.IdleTimeout.D() {
		bad("l7.closeDelay", "must be within 0..connections.idleTimeout, got %s", c.L7.CloseDelay.D())
	}
	return errors.Join(errs...)
}
