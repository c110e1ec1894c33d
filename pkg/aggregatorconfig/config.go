// Package aggregatorconfig loads and validates the flowlens-aggregator
// configuration (docs/examples/aggregator.yaml). It speaks the agent's
// dialect (pkg/agentconfig, through pkg/confutil): durations are written
// "10s" and a bare number is an error, unknown keys are errors, strings keep
// their literal text, and every bad field is reported at once, named the way
// it is written in the file ("correlation.activeTimeout").
package aggregatorconfig

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flowlens/flowlens/pkg/confutil"
	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/pkg/linkmetrics"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/jsonl"
	"github.com/flowlens/flowlens/pkg/wal"
)

// Duration is the configuration files' one duration type.
type Duration = confutil.Duration

// Config is the whole aggregator configuration. A file is read over
// Default, so it only lists what it changes.
type Config struct {
	// AggregatorID names this aggregator in stored rows; empty means the
	// host name (filled by Finish).
	AggregatorID string `yaml:"aggregatorID"`
	// Listen are the collector endpoints, scheme://host:port with scheme
	// tcp, udp or tls.
	Listen []string `yaml:"listen"`
	// TLS is used by every tls:// listener.
	TLS ListenTLS `yaml:"tls"`
	// Limits bound what one peer, or many, can make each listener hold.
	Limits Limits `yaml:"limits"`
	// MetricsAddress serves /metrics and /healthz; empty disables it.
	MetricsAddress string `yaml:"metricsAddress"`
	// InputQueue is how many decoded records may wait for the correlator;
	// when full, collectors wait (TCP pushes back on the agents).
	InputQueue int `yaml:"inputQueue"`
	// ShutdownTimeout bounds the whole graceful stop.
	ShutdownTimeout Duration    `yaml:"shutdownTimeout"`
	Health          Health      `yaml:"health"`
	Correlation     Correlation `yaml:"correlation"`
	WAL             WAL         `yaml:"wal"`
	Sinks           Sinks       `yaml:"sinks"`
	Metrics         Metrics     `yaml:"metrics"`
}

// Metrics configures metrics beyond the aggregator's own health.
type Metrics struct {
	Links LinkMetrics `yaml:"links"`
}

// LinkMetrics configures pkg/linkmetrics: flowlens_link_* counters per
// service link, served on metricsAddress with the other metrics.
type LinkMetrics struct {
	Enabled bool `yaml:"enabled"`
	// MaxSeries is how many links get series of their own; rows of
	// further links are counted under the link labelled "other".
	MaxSeries int `yaml:"maxSeries"`
}

// Limits are each listener's bounds (pkg/ipfixcollect); every refusal is
// counted in flowlens_ipfix_collector_*.
type Limits struct {
	// MaxConnections: TCP/TLS connections open at once; one more is closed.
	MaxConnections int `yaml:"maxConnections"`
	// MaxUDPSessions: UDP exporters whose templates are kept; past it the
	// least recently heard one is forgotten.
	MaxUDPSessions int `yaml:"maxUDPSessions"`
	// IdleTimeout closes a TCP/TLS connection that completed no message in
	// that time (the exporter reconnects and loses nothing).
	IdleTimeout Duration `yaml:"idleTimeout"`
	// MaxTemplatesPerSession and MaxTemplateFieldsPerSession bound the
	// templates one session keeps; past them a template is refused.
	MaxTemplatesPerSession      int `yaml:"maxTemplatesPerSession"`
	MaxTemplateFieldsPerSession int `yaml:"maxTemplateFieldsPerSession"`
	// MaxFieldsPerMessage bounds the fields decoded from one message.
	MaxFieldsPerMessage int `yaml:"maxFieldsPerMessage"`
}

// WAL configures the write-ahead log (pkg/wal) that keeps decoded records
// on disk until every sink has written them, so a crash loses nothing the
// aggregator held.
type WAL struct {
	Enabled bool `yaml:"enabled"`
	// Dir holds the segment files (made 0700; files 0600).
	Dir          string   `yaml:"dir"`
	SegmentBytes int64    `yaml:"segmentBytes"`
	MaxBytes     int64    `yaml:"maxBytes"`
	Sync         string   `yaml:"sync"`
	SyncInterval Duration `yaml:"syncInterval"`
}

// Health configures what /healthz reports as unhealthy.
type Health struct {
	// SinkFailureTimeout: a sink whose every write has failed for longer
	// makes /healthz answer 503 (a dead listener does at once).
	SinkFailureTimeout Duration `yaml:"sinkFailureTimeout"`
}

// ListenTLS configures tls:// listeners.
type ListenTLS struct {
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// ClientCAFile, when set, requires agents to present a certificate
	// signed by it (mutual TLS).
	ClientCAFile string `yaml:"clientCAFile"`
}

// Correlation configures pkg/correlate.
type Correlation struct {
	CorrelationWait Duration `yaml:"correlationWait"`
	StartWindow     Duration `yaml:"startWindow"`
	ActiveTimeout   Duration `yaml:"activeTimeout"`
	InactiveTimeout Duration `yaml:"inactiveTimeout"`
	MaxConnections  int      `yaml:"maxConnections"`
}

// Queue configures one sink's buffering (pkg/sink).
type Queue struct {
	QueueRecords   int      `yaml:"queueRecords"`
	MaxBatch       int      `yaml:"maxBatch"`
	CommitInterval Duration `yaml:"commitInterval"`
	RetryMin       Duration `yaml:"retryMin"`
	RetryMax       Duration `yaml:"retryMax"`
	FlushTimeout   Duration `yaml:"flushTimeout"`
	// MaxBlock is how long a full queue may hold the collectors back
	// (TCP then pushes back on the agents) before records are dropped.
	MaxBlock Duration `yaml:"maxBlock"`
	// Spool parks batches the destination rejected for good (a schema
	// that cannot take them) instead of dropping them.
	Spool Spool `yaml:"spool"`
}

// Spool is a sink's file for undeliverable batches (JSON lines in the
// table's columns, loadable with INSERT ... FORMAT JSONEachRow).
type Spool struct {
	// Path of the file; empty disables parking (such records are dropped
	// and counted).
	Path     string `yaml:"path"`
	MaxBytes int64  `yaml:"maxBytes"`
}

// Sinks lists the destinations; any number may be enabled at once.
type Sinks struct {
	ClickHouse ClickHouseSink `yaml:"clickhouse"`
	JSONL      JSONLSink      `yaml:"jsonl"`
	IPFIX      IPFIXSink      `yaml:"ipfix"`
}

// ClickHouseSink configures pkg/sink/clickhouse.
type ClickHouseSink struct {
	Enabled bool `yaml:"enabled"`
	// Addr is the native-protocol host:port.
	Addr     string `yaml:"addr"`
	Database string `yaml:"database"`
	Table    string `yaml:"table"`
	Username string `yaml:"username"`
	// PasswordFile holds the password (kept out of the config file).
	PasswordFile string   `yaml:"passwordFile"`
	DialTimeout  Duration `yaml:"dialTimeout"`
	Compress     bool     `yaml:"compress"`
	// Cluster, when set, writes to a sharded cluster instead of Addr: see
	// ClickHouseCluster.
	Cluster *ClickHouseCluster `yaml:"cluster"`
	// Rollup is the service map's per-minute rollup (docs/ui.md).
	Rollup ClickHouseRollup `yaml:"rollup"`
	// Queue applies to each shard of a cluster (its own queue, retries
	// and spool file).
	Queue `yaml:",inline"`
}

// ClickHouseCluster makes the sink write to a cluster of non-replicated
// shards: a local MergeTree table on every shard and a Distributed table
// (named Table) over them, which is what queries read. Each row goes
// straight to the local table of shard connectionKey % len(Shards), the
// shard the Distributed table's sharding key picks too.
type ClickHouseCluster struct {
	// Name is the cluster in the servers' remote_servers configuration.
	Name string `yaml:"name"`
	// Shards are the shards' native-protocol host:port, in the order of
	// the remote_servers definition (the aggregator checks it at start).
	Shards []string `yaml:"shards"`
	// LocalTable is each shard's MergeTree table (default <table>_local).
	LocalTable string `yaml:"localTable"`
	// CheckShardAddresses (default true) makes the start-up check also
	// match Shards[i] against the address remote_servers gives shard i+1.
	// Set it false when the aggregator reaches the shards through other
	// addresses (port-forward, proxy, NAT); the shard count, replica and
	// weight checks stay. Read it with CheckAddresses.
	CheckShardAddresses *bool `yaml:"checkShardAddresses"`
}

// CheckAddresses is CheckShardAddresses, true when unset.
func (cl *ClickHouseCluster) CheckAddresses() bool {
	return cl.CheckShardAddresses == nil || *cl.CheckShardAddresses
}

// ClickHouseRollup makes the sink keep a per-minute rollup of the
// service map (source and destination node, port, protocol, app
// protocol), filled by a materialized view, which `flowlens ui` reads
// instead of raw rows (docs/ui.md).
type ClickHouseRollup struct {
	Enabled bool `yaml:"enabled"`
	// Retention is how long rollup rows are kept; "0s" keeps them. On a
	// server without TTL (before 19.6) whole days are dropped by the
	// aggregator once they have expired.
	Retention Duration `yaml:"retention"`
}

// MaxRollupRetention bounds sinks.clickhouse.rollup.retention (10 years).
const MaxRollupRetention = 10 * 365 * 24 * time.Hour

// DefaultRollupRetention is sinks.clickhouse.rollup.retention's default.
const DefaultRollupRetention = 30 * 24 * time.Hour

// JSONLSink configures pkg/sink/jsonl.
type JSONLSink struct {
	Enabled bool `yaml:"enabled"`
	// Path is the file to append to; "-" is standard output.
	Path     string `yaml:"path"`
	MaxBytes int64  `yaml:"maxBytes"`
	MaxFiles int    `yaml:"maxFiles"`
	// FileMode is the octal mode of the files the sink creates (and its
	// rotations): rows hold URLs, hosts and pod names.
	FileMode string `yaml:"fileMode"`
	Queue    `yaml:",inline"`
}

// Mode parses FileMode; Validate has checked it.
func (s JSONLSink) Mode() os.FileMode {
	m, _ := strconv.ParseUint(s.FileMode, 8, 32)
	return os.FileMode(m)
}

// IPFIXSink configures the re-export through pkg/ipfixexport.
type IPFIXSink struct {
	Enabled             bool   `yaml:"enabled"`
	Address             string `yaml:"address"`
	Transport           string `yaml:"transport"`
	ObservationDomainID uint32 `yaml:"observationDomainID"`
	// L7DetailElements adds the DNS/TLS detail IEs (enterprise 32473) to
	// the templates; off keeps to IEs of go-ipfix's registry, which its
	// collectors accept in Strict mode from go-ipfix v0.17.0.
	L7DetailElements bool `yaml:"l7DetailElements"`
	// HealthElements adds the network health and destination-name IEs
	// (droppedPacketDeltaCount and its reverse, the rest enterprise
	// 32473); off for the same reason.
	HealthElements bool   `yaml:"healthElements"`
	CAFile         string `yaml:"caFile"`
	CertFile       string `yaml:"certFile"`
	KeyFile        string `yaml:"keyFile"`
	ServerName     string `yaml:"serverName"`
	Queue          `yaml:",inline"`
}

// Upper bounds of the size and count options. Each is stated in the
// validation error and in docs/examples/aggregator.yaml; they keep a typo
// (an extra zero or three) from becoming an out-of-memory kill.
const (
	// MaxListenerConnections bounds limits.maxConnections and
	// limits.maxUDPSessions: each session may hold its templates (up to
	// maxTemplateFieldsPerSession x ~50 bytes) and a 64 KiB message.
	MaxListenerConnections = 65536
	// MaxTemplatesPerSession and MaxTemplateFieldsPerSession bound the
	// per-session template limits (an IPFIX exporter uses a handful).
	MaxTemplatesPerSession      = 65536
	MaxTemplateFieldsPerSession = 1 << 20
	// MaxInputQueue: the queue is allocated at start, ~550 bytes a slot.
	MaxInputQueue = 1 << 20
	// MaxCorrelationConnections: ~2 KiB per connection held (1.7 KiB RSS measured, docs/sizing.md).
	MaxCorrelationConnections = 1 << 24
	// MaxQueueRecords: records held per sink, ~1 KiB each when full.
	MaxQueueRecords = 10_000_000
	// MaxBatchRecords bounds one write (and the memory it builds).
	MaxBatchRecords = 1_000_000
	// JSONL rotation size and number of rotated files kept.
	MinJSONLMaxBytes = 4096
	MaxJSONLMaxBytes = 1 << 40
	MaxJSONLMaxFiles = 1000
	// Spool file size bounds.
	MinSpoolBytes = 4096
	MaxSpoolBytes = 1 << 40
	// WAL segment size bounds.
	MinWALSegmentBytes = 4096
	MaxWALSegmentBytes = 1 << 40
)

// DefaultQueue is every sink's queue unless the file says otherwise.
func DefaultQueue() Queue {
	return Queue{
		QueueRecords:   sink.DefaultQueueRecords,
		MaxBatch:       sink.DefaultMaxBatch,
		CommitInterval: Duration(sink.DefaultCommitInterval),
		RetryMin:       Duration(sink.DefaultRetryMin),
		RetryMax:       Duration(sink.DefaultRetryMax),
		FlushTimeout:   Duration(sink.DefaultFlushTimeout),
		MaxBlock:       Duration(sink.DefaultMaxBlock),
		Spool:          Spool{MaxBytes: sink.DefaultSpoolMaxBytes},
	}
}

// Default returns the configuration used for every field a file leaves
// out. It enables no sink: one must be chosen (file or flag).
func Default() Config {
	return Config{
		Listen:         []string{"tcp://127.0.0.1:4739"},
		MetricsAddress: "127.0.0.1:9391",
		InputQueue:     16384,
		Limits: Limits{
			MaxConnections:              ipfixcollect.DefaultMaxConnections,
			MaxUDPSessions:              ipfixcollect.DefaultMaxUDPSessions,
			IdleTimeout:                 Duration(ipfixcollect.DefaultIdleTimeout),
			MaxTemplatesPerSession:      ipfixcollect.DefaultMaxTemplatesPerSession,
			MaxTemplateFieldsPerSession: ipfixcollect.DefaultMaxTemplateFieldsPerSession,
			MaxFieldsPerMessage:         ipfixcollect.DefaultMaxFieldsPerMessage,
		},
		ShutdownTimeout: Duration(60 * time.Second),
		Health:          Health{SinkFailureTimeout: Duration(sink.DefaultUnhealthyAfter)},
		Correlation: Correlation{
			CorrelationWait: Duration(correlate.DefaultCorrelationWait),
			StartWindow:     Duration(correlate.DefaultStartWindow),
			ActiveTimeout:   Duration(correlate.DefaultActiveTimeout),
			InactiveTimeout: Duration(correlate.DefaultInactiveTimeout),
			MaxConnections:  correlate.DefaultMaxConnections,
		},
		WAL: WAL{
			Dir:          "/var/lib/flowlens-aggregator/wal",
			SegmentBytes: wal.DefaultSegmentBytes,
			MaxBytes:     wal.DefaultMaxBytes,
			Sync:         string(wal.DefaultSync),
			SyncInterval: Duration(wal.DefaultSyncInterval),
		},
		Metrics: Metrics{Links: LinkMetrics{Enabled: true, MaxSeries: linkmetrics.DefaultMaxSeries}},
		Sinks: Sinks{
			ClickHouse: ClickHouseSink{
				Addr: "127.0.0.1:9000", Database: "default", Table: "flows", Username: "default",
				DialTimeout: Duration(5 * time.Second), Queue: DefaultQueue(),
				Rollup: ClickHouseRollup{Enabled: true, Retention: Duration(DefaultRollupRetention)},
			},
			JSONL: JSONLSink{Path: "-", MaxBytes: jsonl.DefaultMaxBytes, MaxFiles: jsonl.DefaultMaxFiles, FileMode: "0600", Queue: DefaultQueue()},
			IPFIX: IPFIXSink{Transport: "tcp", Queue: DefaultQueue()},
		},
	}
}

// Load reads a YAML file over the defaults and validates the result; an
// empty path yields the defaults. See LoadWith.
func Load(path string) (Config, error) { return LoadWith(path, nil) }

// LoadWith is Load with override applied between reading the file and
// validating (command-line flags override the file). Every problem is
// reported at once: those of the file itself (unknown keys, values of the
// wrong type, a sink block that does not say whether it is enabled) and
// those of the values, each naming its field.
func LoadWith(path string, override func(*Config)) (Config, error) {
	if path == "" {
		return finish(Default(), nil, override)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	cfg, err := finish(Default(), data, override)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse is Load for a configuration held in memory.
func Parse(data []byte) (Config, error) { return finish(Default(), data, nil) }

func finish(cfg Config, data []byte, override func(*Config)) (Config, error) {
	var p confutil.Problems
	if data != nil {
		err := cfg.decode(data)
		if err != nil && len(confutil.Fields(err)) == 0 {
			return Config{}, err // not YAML: nothing more to say
		}
		// What could be read is validated too: the user learns every
		// problem in one run.
		p.AddErr(err)
	}
	if override != nil {
		override(&cfg)
	}
	p.AddErr(cfg.Finish())
	if err := p.Err(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// decode reads data over c and reports every problem of the file's shape
// at once (validation, which flags may still affect, is Finish's).
func (c *Config) decode(data []byte) error {
	var p confutil.Problems
	doc, err := confutil.Decode(data, c)
	if doc == nil {
		return err
	}
	p.AddErr(err)
	// A sink block is most often copied from the example and edited; one
	// without `enabled` would silently stay off.
	for _, name := range []string{"clickhouse", "jsonl", "ipfix"} {
		if doc.Has("sinks", name) && !doc.Has("sinks", name, "enabled") {
			p.Addf("sinks."+name+".enabled", "missing: a sinks.%s block must say enabled: true or false", name)
		}
	}
	// A cluster replaces the single server: the default addr does not
	// apply, one the file sets is reported by Validate.
	if doc.Has("sinks", "clickhouse", "cluster") && !doc.Has("sinks", "clickhouse", "addr") {
		c.Sinks.ClickHouse.Addr = ""
	}
	return p.Err()
}

// Finish fills derived defaults (the aggregator ID) and validates; call it
// after flags have overridden file values.
func (c *Config) Finish() error {
	if c.AggregatorID == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("aggregatorID: not set and host name unknown: %w", err)
		}
		c.AggregatorID = h
	}
	c.Sinks.IPFIX.Transport = strings.ToLower(c.Sinks.IPFIX.Transport)
	if cl := c.Sinks.ClickHouse.Cluster; cl != nil && cl.LocalTable == "" && c.Sinks.ClickHouse.Table != "" {
		cl.LocalTable = c.Sinks.ClickHouse.Table + "_local"
	}
	return c.Validate()
}

// Validate reports every invalid field, each named by its path in the
// file.
func (c *Config) Validate() error {
	var p confutil.Problems
	if c.AggregatorID == "" {
		p.Addf("aggregatorID", "must be set")
	}
	if len(c.Listen) == 0 {
		p.Addf("listen", "at least one endpoint is needed")
	}
	seen := map[string]int{}
	tlsListeners := 0
	for i, l := range c.Listen {
		field := fmt.Sprintf("listen[%d]", i)
		if j, dup := seen[l]; dup {
			p.Addf(field, "%s is listen[%d] already", l, j)
			continue
		}
		seen[l] = i
		network, addr, err := ipfixcollect.ParseListen(l)
		if err != nil {
			p.Addf(field, "%v", err)
			continue
		}
		if err := confutil.CheckHostPort(addr, true); err != nil {
			p.Addf(field, "%v", err)
		}
		if network == ipfixcollect.TLS {
			tlsListeners++
		}
	}
	if tlsListeners > 0 {
		if c.TLS.CertFile == "" {
			p.Addf("tls.certFile", "must be set: a listen endpoint is tls://")
		}
		if c.TLS.KeyFile == "" {
			p.Addf("tls.keyFile", "must be set: a listen endpoint is tls://")
		}
		p.FileExists("tls.certFile", c.TLS.CertFile)
		p.FileExists("tls.keyFile", c.TLS.KeyFile)
		p.FileExists("tls.clientCAFile", c.TLS.ClientCAFile)
	} else if c.TLS != (ListenTLS{}) {
		p.Addf("tls", "set, but no listen endpoint is tls://, so it would not be used")
	}
	if c.MetricsAddress != "" {
		p.HostPort("metricsAddress", c.MetricsAddress, true)
	}
	confutil.Range(&p, "inputQueue", c.InputQueue, 1, MaxInputQueue)
	confutil.Range(&p, "limits.maxConnections", c.Limits.MaxConnections, 1, MaxListenerConnections)
	confutil.Range(&p, "limits.maxUDPSessions", c.Limits.MaxUDPSessions, 1, MaxListenerConnections)
	p.PositiveDuration("limits.idleTimeout", c.Limits.IdleTimeout)
	confutil.Range(&p, "limits.maxTemplatesPerSession", c.Limits.MaxTemplatesPerSession, 1, MaxTemplatesPerSession)
	confutil.Range(&p, "limits.maxTemplateFieldsPerSession", c.Limits.MaxTemplateFieldsPerSession, 1, MaxTemplateFieldsPerSession)
	confutil.Range(&p, "limits.maxFieldsPerMessage", c.Limits.MaxFieldsPerMessage, 1, ipfixcollect.DefaultMaxFieldsPerMessage)
	p.PositiveDuration("shutdownTimeout", c.ShutdownTimeout)
	p.PositiveDuration("health.sinkFailureTimeout", c.Health.SinkFailureTimeout)

	p.PositiveDuration("correlation.correlationWait", c.Correlation.CorrelationWait)
	p.PositiveDuration("correlation.startWindow", c.Correlation.StartWindow)
	p.PositiveDuration("correlation.activeTimeout", c.Correlation.ActiveTimeout)
	p.PositiveDuration("correlation.inactiveTimeout", c.Correlation.InactiveTimeout)
	confutil.Range(&p, "correlation.maxConnections", c.Correlation.MaxConnections, 1, MaxCorrelationConnections)
	if c.Metrics.Links.Enabled {
		confutil.Range(&p, "metrics.links.maxSeries", c.Metrics.Links.MaxSeries, 1, linkmetrics.MaxMaxSeries)
	}

	if w := c.WAL; w.Enabled {
		if w.Dir == "" {
			p.Addf("wal.dir", "must be set when wal.enabled")
		}
		confutil.Range(&p, "wal.segmentBytes", w.SegmentBytes, MinWALSegmentBytes, MaxWALSegmentBytes)
		if w.MaxBytes < 2*w.SegmentBytes {
			p.Addf("wal.maxBytes", "must be at least twice wal.segmentBytes (%d), got %d", 2*w.SegmentBytes, w.MaxBytes)
		}
		switch wal.SyncPolicy(w.Sync) {
		case wal.SyncAlways, wal.SyncInterval, wal.SyncNever:
		default:
			p.Addf("wal.sync", "want always, interval or never, got %q", w.Sync)
		}
		p.PositiveDuration("wal.syncInterval", w.SyncInterval)
	}

	enabled := 0
	if s := c.Sinks.ClickHouse; s.Enabled {
		enabled++
		if s.Cluster == nil {
			p.HostPort("sinks.clickhouse.addr", s.Addr, false)
		} else {
			s.Cluster.validate(&p, s)
		}
		for _, f := range []struct{ field, v string }{
			{"sinks.clickhouse.database", s.Database},
			{"sinks.clickhouse.table", s.Table},
			{"sinks.clickhouse.username", s.Username},
		} {
			if f.v == "" {
				p.Addf(f.field, "must be set")
			}
		}
		p.FileExists("sinks.clickhouse.passwordFile", s.PasswordFile)
		p.PositiveDuration("sinks.clickhouse.dialTimeout", s.DialTimeout)
		if r := s.Rollup.Retention.D(); s.Rollup.Enabled && (r < 0 || r > 0 && r < time.Hour || r > MaxRollupRetention) {
			p.Addf("sinks.clickhouse.rollup.retention", "must be 0s (keep) or within 1h..%s, got %q", MaxRollupRetention, s.Rollup.Retention.String())
		}
		s.Queue.validate(&p, "sinks.clickhouse.")
	}
	if s := c.Sinks.JSONL; s.Enabled {
		enabled++
		if s.Path == "" {
			p.Addf("sinks.jsonl.path", `must be set ("-" for standard output)`)
		}
		confutil.Range(&p, "sinks.jsonl.maxBytes", s.MaxBytes, MinJSONLMaxBytes, MaxJSONLMaxBytes)
		confutil.Range(&p, "sinks.jsonl.maxFiles", s.MaxFiles, 1, MaxJSONLMaxFiles)
		if m, err := strconv.ParseUint(s.FileMode, 8, 32); err != nil || m > 0o777 || m&0o600 != 0o600 {
			p.Addf("sinks.jsonl.fileMode", "want octal permission bits that let the owner read and write (e.g. \"0600\"), got %q", s.FileMode)
		}
		s.Queue.validate(&p, "sinks.jsonl.")
	}
	if s := c.Sinks.IPFIX; s.Enabled {
		enabled++
		p.HostPort("sinks.ipfix.address", s.Address, false)
		switch strings.ToLower(s.Transport) {
		case "tcp", "udp":
			if s.CAFile != "" || s.CertFile != "" || s.KeyFile != "" || s.ServerName != "" {
				p.Addf("sinks.ipfix.transport", "is %q, but caFile/certFile/keyFile/serverName are set (want \"tls\")", s.Transport)
			}
		case "tls":
			if (s.CertFile == "") != (s.KeyFile == "") {
				p.Addf("sinks.ipfix.certFile", "certFile and keyFile go together")
			}
			p.FileExists("sinks.ipfix.caFile", s.CAFile)
			p.FileExists("sinks.ipfix.certFile", s.CertFile)
			p.FileExists("sinks.ipfix.keyFile", s.KeyFile)
		default:
			p.Addf("sinks.ipfix.transport", "want tcp, udp or tls, got %q", s.Transport)
		}
		s.Queue.validate(&p, "sinks.ipfix.")
	}
	if enabled == 0 {
		p.Addf("sinks", "enable at least one of clickhouse, jsonl, ipfix")
	}
	return p.Err()
}

func (cl *ClickHouseCluster) validate(p *confutil.Problems, s ClickHouseSink) {
	const prefix = "sinks.clickhouse.cluster."
	if s.Addr != "" {
		p.Addf("sinks.clickhouse.addr", "must be empty when sinks.clickhouse.cluster is set (the shards are %sshards), got %q", prefix, s.Addr)
	}
	if cl.Name == "" {
		p.Addf(prefix+"name", "must be set: the cluster's name in the servers' remote_servers")
	} else if strings.ContainsFunc(cl.Name, func(r rune) bool { return r < 0x21 || r > 0x7e || r == '\'' || r == '\\' }) {
		p.Addf(prefix+"name", "want a remote_servers cluster name (printable, no spaces or quotes), got %q", cl.Name)
	}
	if len(cl.Shards) == 0 {
		p.Addf(prefix+"shards", "at least one shard is needed")
	}
	seen := map[string]int{}
	for i, a := range cl.Shards {
		field := fmt.Sprintf("%sshards[%d]", prefix, i)
		if j, dup := seen[a]; dup {
			p.Addf(field, "%s is shards[%d] already", a, j)
			continue
		}
		seen[a] = i
		p.HostPort(field, a, false)
	}
	if cl.LocalTable == "" {
		p.Addf(prefix+"localTable", "must be set")
	} else if cl.LocalTable == s.Table {
		p.Addf(prefix+"localTable", "must differ from sinks.clickhouse.table %q (that is the Distributed table)", s.Table)
	}
}

func (q Queue) validate(p *confutil.Problems, prefix string) {
	confutil.Range(p, prefix+"queueRecords", q.QueueRecords, 1, MaxQueueRecords)
	confutil.Range(p, prefix+"maxBatch", q.MaxBatch, 1, MaxBatchRecords)
	if q.MaxBatch > q.QueueRecords && q.QueueRecords > 0 {
		p.Addf(prefix+"maxBatch", "%d exceeds %squeueRecords %d", q.MaxBatch, prefix, q.QueueRecords)
	}
	p.PositiveDuration(prefix+"commitInterval", q.CommitInterval)
	p.PositiveDuration(prefix+"retryMin", q.RetryMin)
	p.PositiveDuration(prefix+"retryMax", q.RetryMax)
	if q.RetryMax < q.RetryMin {
		p.Addf(prefix+"retryMax", "%s is shorter than %sretryMin %s", q.RetryMax, prefix, q.RetryMin)
	}
	p.PositiveDuration(prefix+"flushTimeout", q.FlushTimeout)
	p.PositiveDuration(prefix+"maxBlock", q.MaxBlock)
	confutil.Range(p, prefix+"spool.maxBytes", q.Spool.MaxBytes, MinSpoolBytes, MaxSpoolBytes)
}
