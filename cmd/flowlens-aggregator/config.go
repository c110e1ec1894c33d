package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/jsonl"
)

// Duration reads "10s"-style strings (and plain nanoseconds) from YAML.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("duration: want a string such as \"10s\", got %s", b)
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is the aggregator's configuration file (docs/examples/aggregator.yaml
// documents every field and its default).
type Config struct {
	// AggregatorID names this aggregator in stored rows (default: hostname).
	AggregatorID string `json:"aggregatorID,omitempty"`
	// Listen are the collector endpoints, scheme://host:port with scheme
	// tcp, udp or tls.
	Listen []string `json:"listen,omitempty"`
	// TLS is used by every tls:// listener.
	TLS ListenTLS `json:"tls,omitempty"`
	// MetricsAddress serves /metrics and /healthz; empty disables it.
	MetricsAddress string `json:"metricsAddress,omitempty"`
	// InputQueue is how many decoded records may wait for the correlator;
	// when full, collectors wait (TCP pushes back on the agents).
	InputQueue int `json:"inputQueue,omitempty"`
	// ShutdownTimeout bounds the whole graceful stop.
	ShutdownTimeout Duration    `json:"shutdownTimeout,omitempty"`
	Correlation     Correlation `json:"correlation,omitempty"`
	Sinks           Sinks       `json:"sinks,omitempty"`
}

// ListenTLS configures tls:// listeners.
type ListenTLS struct {
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
	// ClientCAFile, when set, requires agents to present a certificate
	// signed by it (mutual TLS).
	ClientCAFile string `json:"clientCAFile,omitempty"`
}

// Correlation configures pkg/correlate.
type Correlation struct {
	CorrelationWait Duration `json:"correlationWait,omitempty"`
	StartWindow     Duration `json:"startWindow,omitempty"`
	ActiveTimeout   Duration `json:"activeTimeout,omitempty"`
	InactiveTimeout Duration `json:"inactiveTimeout,omitempty"`
	MaxConnections  int      `json:"maxConnections,omitempty"`
}

// Queue configures one sink's buffering (pkg/sink).
type Queue struct {
	QueueRecords   int      `json:"queueRecords,omitempty"`
	MaxBatch       int      `json:"maxBatch,omitempty"`
	CommitInterval Duration `json:"commitInterval,omitempty"`
	RetryMin       Duration `json:"retryMin,omitempty"`
	RetryMax       Duration `json:"retryMax,omitempty"`
	FlushTimeout   Duration `json:"flushTimeout,omitempty"`
}

// Sinks lists the destinations; any number may be enabled at once.
type Sinks struct {
	ClickHouse *ClickHouseSink `json:"clickhouse,omitempty"`
	JSONL      *JSONLSink      `json:"jsonl,omitempty"`
	IPFIX      *IPFIXSink      `json:"ipfix,omitempty"`
}

// ClickHouseSink configures pkg/sink/clickhouse.
type ClickHouseSink struct {
	Enabled  bool   `json:"enabled"`
	Addr     string `json:"addr,omitempty"`
	Database string `json:"database,omitempty"`
	Table    string `json:"table,omitempty"`
	Username string `json:"username,omitempty"`
	// PasswordFile holds the password (kept out of the config file).
	PasswordFile string   `json:"passwordFile,omitempty"`
	DialTimeout  Duration `json:"dialTimeout,omitempty"`
	Compress     bool     `json:"compress,omitempty"`
	Queue        `json:",inline"`
}

// JSONLSink configures pkg/sink/jsonl.
type JSONLSink struct {
	Enabled  bool   `json:"enabled"`
	Path     string `json:"path,omitempty"`
	MaxBytes int64  `json:"maxBytes,omitempty"`
	MaxFiles int    `json:"maxFiles,omitempty"`
	Queue    `json:",inline"`
}

// IPFIXSink configures the re-export through pkg/ipfixexport.
type IPFIXSink struct {
	Enabled             bool   `json:"enabled"`
	Address             string `json:"address,omitempty"`
	Transport           string `json:"transport,omitempty"`
	ObservationDomainID uint32 `json:"observationDomainID,omitempty"`
	// L7DetailElements adds the DNS/TLS detail IEs (enterprise 32473) to
	// the templates; off keeps the Antrea-compatible set that go-ipfix
	// collectors in Strict mode accept.
	L7DetailElements bool   `json:"l7DetailElements,omitempty"`
	CAFile           string `json:"caFile,omitempty"`
	CertFile         string `json:"certFile,omitempty"`
	KeyFile          string `json:"keyFile,omitempty"`
	ServerName       string `json:"serverName,omitempty"`
	Queue            `json:",inline"`
}

// Defaults for the fields this file owns; the others are the packages'.
const (
	defaultListen          = "tcp://127.0.0.1:4739"
	defaultMetricsAddress  = "127.0.0.1:9391"
	defaultInputQueue      = 16384
	defaultShutdownTimeout = 60 * time.Second
)

// LoadConfig reads a YAML file; unknown fields are errors so a typo does
// not silently fall back to a default.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig parses YAML configuration and applies defaults.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	c.setDefaults()
	return &c, nil
}

func (c *Config) setDefaults() {
	if c.AggregatorID == "" {
		if h, err := os.Hostname(); err == nil {
			c.AggregatorID = h
		}
	}
	if len(c.Listen) == 0 {
		c.Listen = []string{defaultListen}
	}
	if c.InputQueue == 0 {
		c.InputQueue = defaultInputQueue
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = Duration(defaultShutdownTimeout)
	}
}

// Validate checks every field at start-up and names the first bad one by
// its path in the file.
func (c *Config) Validate() error {
	if c.AggregatorID == "" {
		return errors.New("aggregatorID: must be set (no hostname to default to)")
	}
	if len(c.Listen) == 0 {
		return errors.New("listen: at least one endpoint is needed")
	}
	seen := map[string]bool{}
	for i, l := range c.Listen {
		if seen[l] {
			return fmt.Errorf("listen[%d]: %s listed twice", i, l)
		}
		seen[l] = true
		network, _, err := ipfixcollect.ParseListen(l)
		if err != nil {
			return fmt.Errorf("listen[%d]: %w", i, err)
		}
		if network == ipfixcollect.TLS && (c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
			return fmt.Errorf("tls.certFile/tls.keyFile: needed by listen[%d] %s", i, l)
		}
	}
	if c.InputQueue < 0 {
		return fmt.Errorf("inputQueue: must be positive, got %d", c.InputQueue)
	}
	if c.ShutdownTimeout < 0 {
		return fmt.Errorf("shutdownTimeout: must be positive, got %s", c.ShutdownTimeout.D())
	}
	if err := c.correlateConfig(nil).Validate(); err != nil {
		return fmt.Errorf("correlation.%w", err)
	}
	enabled := 0
	if s := c.Sinks.ClickHouse; s != nil && s.Enabled {
		enabled++
		if s.Addr == "" {
			return errors.New("sinks.clickhouse.addr: must be set")
		}
		if err := s.Queue.validate("clickhouse"); err != nil {
			return err
		}
	}
	if s := c.Sinks.JSONL; s != nil && s.Enabled {
		enabled++
		if err := (jsonl.Config{Path: s.Path, MaxBytes: s.MaxBytes, MaxFiles: s.MaxFiles}).Validate(); err != nil {
			return fmt.Errorf("sinks.jsonl.%w", err)
		}
		if err := s.Queue.validate("jsonl"); err != nil {
			return err
		}
	}
	if s := c.Sinks.IPFIX; s != nil && s.Enabled {
		enabled++
		if s.Address == "" {
			return errors.New("sinks.ipfix.address: must be set")
		}
		switch ipfixexport.Transport(s.Transport) {
		case "", ipfixexport.TCP, ipfixexport.UDP, ipfixexport.TLS:
		default:
			return fmt.Errorf("sinks.ipfix.transport: must be tcp, udp or tls, got %q", s.Transport)
		}
		if err := s.Queue.validate("ipfix"); err != nil {
			return err
		}
	}
	if enabled == 0 {
		return errors.New("sinks: enable at least one of clickhouse, jsonl, ipfix")
	}
	return nil
}

func (q Queue) validate(name string) error {
	cfg := q.sinkConfig(name, nopWriter{}, nil)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("sinks.%s.%w", name, err)
	}
	return nil
}

func (q Queue) sinkConfig(name string, w sink.Writer, m *sink.Metrics) sink.Config {
	return sink.Config{
		Name: name, Writer: w, Metrics: m,
		QueueRecords: q.QueueRecords, MaxBatch: q.MaxBatch,
		CommitInterval: q.CommitInterval.D(), RetryMin: q.RetryMin.D(), RetryMax: q.RetryMax.D(),
		FlushTimeout: q.FlushTimeout.D(),
	}
}

func (c *Config) correlateConfig(m *correlate.Metrics) correlate.Config {
	return correlate.Config{
		CorrelationWait: c.Correlation.CorrelationWait.D(),
		StartWindow:     c.Correlation.StartWindow.D(),
		ActiveTimeout:   c.Correlation.ActiveTimeout.D(),
		InactiveTimeout: c.Correlation.InactiveTimeout.D(),
		MaxConnections:  c.Correlation.MaxConnections,
		Metrics:         m,
	}
}

func (s *IPFIXSink) exportConfig() ipfixexport.Config {
	t := ipfixexport.Transport(s.Transport)
	if t == "" {
		t = ipfixexport.TCP
	}
	return ipfixexport.Config{
		Address: s.Address, Transport: t, ObservationDomainID: s.ObservationDomainID,
		L7DetailElements: s.L7DetailElements,
		TLS:              ipfixexport.TLSConfig{CAFile: s.CAFile, CertFile: s.CertFile, KeyFile: s.KeyFile, ServerName: s.ServerName},
	}
}

func readSecret(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}
