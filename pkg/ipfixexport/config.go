package ipfixexport

import (
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Transport is how messages reach the collector.
type Transport string

// Transports.
const (
	TCP Transport = "tcp"
	UDP Transport = "udp"
	TLS Transport = "tls"
)

// TLSConfig configures the TLS transport. CAFile verifies the collector;
// CertFile/KeyFile are an optional client certificate for collectors that
// require one.
type TLSConfig struct {
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string // defaults to the host part of Config.Address
}

// Config configures an Exporter. Zero durations and sizes take the defaults
// documented on each field.
type Config struct {
	// Address is the collector's host:port.
	Address   string
	Transport Transport
	TLS       TLSConfig

	ObservationDomainID uint32

	// L7DetailElements adds the DNS and TLS details of flow.L7 to both
	// templates as nine enterprise-specific IEs (enterprise 32473, see
	// docs/ipfix-elements.md). Off (the default), the templates hold only
	// IEs of go-ipfix's registry: a go-ipfix collector in Strict mode, that
	// library's default, rejects a whole template holding an IE it does not
	// know and so loses every record, not just the details. Antrea's Flow
	// Aggregator is not one (LenientKeepUnknown since Antrea v2.3), and
	// nfdump, tshark, goflow2 and nfacctd skip the details; turn it on for
	// flowlens-aggregator, which decodes them.
	L7DetailElements bool
	// HealthElements adds the connection's network health and its
	// destination's DNS name (flow.Record.Health, DestinationName) to both
	// templates: droppedPacketDeltaCount and its RFC 5103 reverse from
	// IANA, twelve enterprise-32473 IEs for the rest
	// (ipfixie.HealthElements, docs/ipfix-elements.md). The same caveat as
	// L7DetailElements: a Strict go-ipfix collector rejects the templates;
	// Antrea's Flow Aggregator decodes and ignores them.
	HealthElements bool

	// MaxMessageSize caps one IPFIX message. Default and maximum: 65535 for
	// TCP/TLS (the header's length field), PathMTU minus IP and UDP headers
	// for UDP, so a datagram is never fragmented.
	MaxMessageSize int
	// PathMTU is the path MTU towards a UDP collector (default 1500).
	PathMTU int

	// BufferRecords bounds how many records wait for the collector
	// (default 20000); beyond it Export refuses records, or drops and
	// counts them once the collector has been unreachable, or no record
	// has left the buffer, for BackpressureTimeout. It takes about 344 bytes a record at start
	// (pointer-free), growing with records whose strings are long (L7
	// fields) to at most about 1.2 KiB a record; records whose strings
	// do not fit count as beyond it.
	BufferRecords int
	// BackpressureTimeout is how long a full buffer refuses records while
	// the collector is unreachable or takes nothing (default 30s), so that
	// a short outage or a failover costs nothing (the producer holds the
	// records); after it, records beyond BufferRecords are dropped and
	// counted. Its clock runs from the first refusal since a record last
	// left the buffer, whether or not the collector is connected: one that
	// accepts connections but reads nothing (hung) is dropped after it
	// too. A collector that is only slow keeps records leaving the buffer
	// and is refused, not dropped; the gaps between them are at most
	// WriteTimeout (a blocked write fails then), so keep this above
	// WriteTimeout, as the defaults are, for that to hold.
	BackpressureTimeout time.Duration
	// FlushInterval is the longest a record waits for its message to fill
	// (default 500ms).
	FlushInterval time.Duration
	// TemplateRefreshInterval and TemplateRefreshMessages resend the
	// templates over UDP, whichever comes first: after TemplateRefreshInterval
	// (default 30s) or before the data message that follows
	// TemplateRefreshMessages data messages (default 20) since they last
	// went out (RFC 7011 section 8.4). A UDP collector that restarts has no
	// other way to learn them, and cannot decode anything until it does.
	TemplateRefreshInterval time.Duration
	TemplateRefreshMessages int

	// ReconnectMin/ReconnectMax bound the exponential backoff between
	// connection attempts (defaults 500ms and 30s).
	ReconnectMin time.Duration
	ReconnectMax time.Duration
	// DialTimeout bounds a connection attempt including the TLS handshake
	// (default 5s).
	DialTimeout time.Duration
	// WriteTimeout declares a collector dead when a message cannot be
	// written for this long (default 10s).
	WriteTimeout time.Duration
	// DrainTimeout is how long, when a TCP/TLS connection ends, the
	// exporter waits for the collector to acknowledge what was written
	// before giving up on it (default 2s).
	DrainTimeout time.Duration
}

const (
	ipfixHeaderLen = 16
	maxTCPMessage  = 65535
	ipv4UDPHeaders = 20 + 8
	ipv6UDPHeaders = 40 + 8
)

func (c *Config) withDefaults() Config {
	out := *c
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if out.PathMTU == 0 {
		out.PathMTU = 1500
	}
	if out.BufferRecords == 0 {
		out.BufferRecords = 20000
	}
	def(&out.FlushInterval, 500*time.Millisecond)
	def(&out.BackpressureTimeout, 30*time.Second)
	def(&out.TemplateRefreshInterval, 30*time.Second)
	if out.TemplateRefreshMessages == 0 {
		out.TemplateRefreshMessages = 20
	}
	def(&out.ReconnectMin, 500*time.Millisecond)
	def(&out.ReconnectMax, 30*time.Second)
	def(&out.DialTimeout, 5*time.Second)
	def(&out.WriteTimeout, 10*time.Second)
	def(&out.DrainTimeout, 2*time.Second)
	return out
}

// messageLimit validates the size settings and returns the largest message
// the exporter may send.
func (c *Config) messageLimit() (int, error) {
	limit := maxTCPMessage
	if c.Transport == UDP {
		if c.PathMTU < 576 || c.PathMTU > 65535 {
			return 0, fmt.Errorf("PathMTU %d: must be in [576, 65535]", c.PathMTU)
		}
		limit = c.PathMTU - udpOverhead(c.Address)
		if limit > maxTCPMessage {
			limit = maxTCPMessage
		}
	}
	switch {
	case c.MaxMessageSize == 0:
		return limit, nil
	case c.MaxMessageSize < 0 || c.MaxMessageSize > limit:
		return 0, fmt.Errorf("MaxMessageSize %d: must be in (0, %d] for %s to %s", c.MaxMessageSize, limit, c.Transport, c.Address)
	}
	return c.MaxMessageSize, nil
}

// udpOverhead is the IP+UDP header size towards addr; a host name may
// resolve to IPv6, so it gets the larger one.
func udpOverhead(addr string) int {
	host, _, err := net.SplitHostPort(addr)
	if err == nil {
		if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().Is4() {
			return ipv4UDPHeaders
		}
	}
	return ipv6UDPHeaders
}

func (c *Config) validate() error {
	if c.Address == "" {
		return fmt.Errorf("address: empty")
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		return fmt.Errorf("address %q: %w", c.Address, err)
	}
	switch c.Transport {
	case TCP, UDP, TLS:
	default:
		return fmt.Errorf("transport %q: must be tcp, udp or tls", c.Transport)
	}
	if c.Transport != TLS && c.TLS != (TLSConfig{}) {
		return fmt.Errorf("tls: set, but transport is %s", c.Transport)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return fmt.Errorf("tls: CertFile and KeyFile must be set together")
	}
	if c.BufferRecords < 0 {
		return fmt.Errorf("BufferRecords %d: must be positive", c.BufferRecords)
	}
	if c.TemplateRefreshMessages < 0 {
		return fmt.Errorf("TemplateRefreshMessages %d: must be positive", c.TemplateRefreshMessages)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"FlushInterval", c.FlushInterval}, {"BackpressureTimeout", c.BackpressureTimeout}, {"TemplateRefreshInterval", c.TemplateRefreshInterval},
		{"ReconnectMin", c.ReconnectMin}, {"ReconnectMax", c.ReconnectMax},
		{"DialTimeout", c.DialTimeout}, {"WriteTimeout", c.WriteTimeout}, {"DrainTimeout", c.DrainTimeout},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s %v: must not be negative", d.name, d.v)
		}
	}
	if c.ReconnectMax != 0 && c.ReconnectMin > c.ReconnectMax {
		return fmt.Errorf("ReconnectMin %v: larger than ReconnectMax %v", c.ReconnectMin, c.ReconnectMax)
	}
	return nil
}
