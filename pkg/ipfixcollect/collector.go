// Package ipfixcollect receives IPFIX (RFC 7011) over TCP, UDP or TLS from
// any number of exporters and hands each data record to a callback, both
// as an ordered list of named fields (Record, JSON-ready) and, through
// Record.FlowRecord, as a flow.Record.
//
// Each TCP/TLS connection and each UDP source address is its own session
// with its own templates, so an exporter that reconnects with different
// templates is decoded with the new ones. Malformed messages, unknown
// templates and unknown IEs are counted and survived: a TCP stream whose
// framing is broken is closed, since nothing after it can be trusted.
//
// On shutdown the collector closes its sending side first and keeps reading
// until each exporter's EOF (at most DrainTimeout), so an exporter that
// stops on EOF, as ipfixexport does, loses nothing.
package ipfixcollect

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// Networks a collector listens on.
const (
	TCP = "tcp"
	UDP = "udp"
	TLS = "tls"
)

// TLSConfig configures the TLS listener. ClientCAFile, when set, makes
// client certificates mandatory and verifies them against it.
type TLSConfig struct {
	CertFile     string
	KeyFile      string
	ClientCAFile string
}

// Config configures a Collector.
type Config struct {
	Network string // tcp, udp or tls
	Address string // host:port; port 0 picks a free one (see Addr)
	TLS     TLSConfig
	// DrainTimeout bounds how long shutdown waits for exporters to close
	// after the collector closed its side (default 2s).
	DrainTimeout time.Duration
	// HandshakeTimeout bounds a TLS handshake (default 10s).
	HandshakeTimeout time.Duration
	// MaxUDPSessions bounds the UDP exporters whose templates are kept
	// (default 4096); beyond it the oldest-seen one is forgotten and
	// counted (udp_sessions_evicted_total).
	MaxUDPSessions int

	// The bounds below keep what one peer can cost finite. A session is a
	// TCP/TLS connection or a UDP source address; in the worst case a
	// listener holds MaxConnections (or MaxUDPSessions) sessions, each
	// with MaxTemplateFieldsPerSession template fields (about 50 bytes
	// each), a 16 KiB read buffer and a message buffer of up to 64 KiB.
	// With the defaults: about 1.1 GiB over TCP, 0.8 GiB over UDP.

	// MaxConnections bounds the TCP/TLS connections open at once on this
	// listener (default 4096: one per agent, so raise it for larger
	// clusters). A connection beyond it is closed at once and counted
	// (refused_total{reason="connection_limit"}); the exporter retries.
	MaxConnections int
	// IdleTimeout closes a TCP/TLS connection that sent nothing for this
	// long, or that has not finished a message it started this long ago
	// (default 5m). The close is orderly, as on shutdown: the collector
	// closes its side and reads what the exporter sent until its EOF, at
	// most DrainTimeout, so an exporter that reconnects on EOF loses
	// nothing. Counted in idle_closed_total.
	IdleTimeout time.Duration
	// MaxTemplatesPerSession bounds the templates one session keeps
	// (default 256). A template beyond it is not kept and is counted
	// (refused_total{reason="template_limit"}); its data sets then count
	// as unknown_template. Redefining a kept template, or withdrawing
	// one, is always possible.
	MaxTemplatesPerSession int
	// MaxTemplateFieldsPerSession bounds the field specifiers over all of
	// one session's templates (default 4096; a flowlens agent uses about
	// 120), i.e. their memory. Beyond it a template is refused as above
	// (reason="template_field_limit").
	MaxTemplateFieldsPerSession int
	// MaxFieldsPerMessage bounds the fields decoded from one message
	// (default 65535). Since no field can be of length 0, a message cannot
	// decode into more fields than it has bytes, so the default only
	// restates that; lower it to bound the work per message further. The
	// records past the bound are not decoded and the message is counted
	// (errors_total{reason="field_limit"}).
	MaxFieldsPerMessage int
}

// Defaults of the Config bounds.
const (
	DefaultMaxUDPSessions              = 4096
	DefaultMaxConnections              = 4096
	DefaultIdleTimeout                 = 5 * time.Minute
	DefaultMaxTemplatesPerSession      = 256
	DefaultMaxTemplateFieldsPerSession = 4096
	DefaultMaxFieldsPerMessage         = maxMessageLength
)

// ParseListen splits a listen URL such as tcp://127.0.0.1:4739 into network
// and address.
func ParseListen(s string) (network, address string, err error) {
	if !strings.Contains(s, "://") {
		return "", "", fmt.Errorf("listen address %q: want scheme://host:port, scheme tcp, udp or tls", s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("listen address %q: %w", s, err)
	}
	switch u.Scheme {
	case TCP, UDP, TLS:
	default:
		return "", "", fmt.Errorf("listen address %q: scheme must be tcp, udp or tls", s)
	}
	if u.Host == "" || u.Path != "" || u.RawQuery != "" {
		return "", "", fmt.Errorf("listen address %q: want scheme://host:port", s)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return "", "", fmt.Errorf("listen address %q: %w", s, err)
	}
	return u.Scheme, u.Host, nil
}

// Collector receives IPFIX messages.
type Collector struct {
	cfg     Config
	ln      net.Listener // TCP and TLS
	pc      *net.UDPConn // UDP
	tlsConf *tls.Config
	m       *metrics
	running atomic.Bool
	emitMu  sync.Mutex
}

// New validates cfg, binds the listening socket (so Addr is known at once)
// and registers metrics on reg when it is not nil. Call Run, or Close to
// release the socket without running.
func New(cfg Config, reg prometheus.Registerer) (*Collector, error) {
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 2 * time.Second
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	for _, b := range []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxUDPSessions", &cfg.MaxUDPSessions, DefaultMaxUDPSessions},
		{"MaxConnections", &cfg.MaxConnections, DefaultMaxConnections},
		{"MaxTemplatesPerSession", &cfg.MaxTemplatesPerSession, DefaultMaxTemplatesPerSession},
		{"MaxTemplateFieldsPerSession", &cfg.MaxTemplateFieldsPerSession, DefaultMaxTemplateFieldsPerSession},
		{"MaxFieldsPerMessage", &cfg.MaxFieldsPerMessage, DefaultMaxFieldsPerMessage},
	} {
		if *b.v == 0 {
			*b.v = b.def
		}
		if *b.v < 0 {
			return nil, fmt.Errorf("ipfixcollect config: %s %d must not be negative", b.name, *b.v)
		}
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"DrainTimeout", cfg.DrainTimeout}, {"HandshakeTimeout", cfg.HandshakeTimeout}, {"IdleTimeout", cfg.IdleTimeout}} {
		if d.v < 0 {
			return nil, fmt.Errorf("ipfixcollect config: %s %s must not be negative", d.name, d.v)
		}
	}
	if _, _, err := net.SplitHostPort(cfg.Address); err != nil {
		return nil, fmt.Errorf("ipfixcollect config: Address %q: %w", cfg.Address, err)
	}
	c := &Collector{cfg: cfg}
	var err error
	switch cfg.Network {
	case TLS:
		if c.tlsConf, err = serverTLS(cfg.TLS); err != nil {
			return nil, fmt.Errorf("ipfixcollect config: TLS: %w", err)
		}
		fallthrough
	case TCP:
		if c.ln, err = net.Listen("tcp", cfg.Address); err != nil {
			return nil, fmt.Errorf("ipfixcollect: listen: %w", err)
		}
	case UDP:
		pc, err := net.ListenPacket("udp", cfg.Address)
		if err != nil {
			return nil, fmt.Errorf("ipfixcollect: listen: %w", err)
		}
		c.pc = pc.(*net.UDPConn)
	default:
		return nil, fmt.Errorf("ipfixcollect config: Network %q: must be tcp, udp or tls", cfg.Network)
	}
	if c.m, err = newMetrics(reg); err != nil {
		c.Close()
		return nil, err
	}
	if c.pc != nil && reg != nil {
		d := &dropCounter{pc: c.pc}
		drops := prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "flowlens_ipfix_collector_udp_receive_drops_total",
			Help: "Datagrams the kernel dropped on the UDP listener, mostly because its receive buffer was full " +
				"(the collector did not read fast enough): records lost before the collector saw them.",
		}, d.value)
		if err := reg.Register(drops); err != nil {
			c.Close()
			return nil, fmt.Errorf("register collector metrics: %w", err)
		}
	}
	return c, nil
}

// dropCounter turns the kernel's wrapping 32-bit count of datagrams dropped
// on the socket into a monotonic total. It is read when scraped, so drops
// show even while nothing else arrives.
type dropCounter struct {
	pc    *net.UDPConn
	mu    sync.Mutex
	last  uint32
	total uint64
}

func (d *dropCounter) value() float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	// After Close the socket cannot be read: keep the last total.
	if n, err := socketDrops(d.pc); err == nil {
		d.total += uint64(n - d.last)
		d.last = n
	}
	return float64(d.total)
}

func serverTLS(cfg TLSConfig) (*tls.Config, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("CertFile and KeyFile are required")
	}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("CertFile/KeyFile: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if cfg.ClientCAFile != "" {
		pem, err := os.ReadFile(cfg.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("ClientCAFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ClientCAFile %q: no PEM certificate found", cfg.ClientCAFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// Addr is the address the collector listens on.
func (c *Collector) Addr() net.Addr {
	if c.pc != nil {
		return c.pc.LocalAddr()
	}
	return c.ln.Addr()
}

// Close releases the listening socket; Run does it itself when it returns.
func (c *Collector) Close() error {
	if c.pc != nil {
		return c.pc.Close()
	}
	return c.ln.Close()
}

// Run receives until ctx ends and calls fn for every data record. fn is
// never called concurrently; the Record it gets is reused after it returns.
// Run returns after every connection has been drained and closed.
func (c *Collector) Run(ctx context.Context, fn func(Record)) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("ipfixcollect: Run called twice")
	}
	emit := func(r *Record) {
		c.emitMu.Lock()
		defer c.emitMu.Unlock()
		fn(*r)
	}
	if c.pc != nil {
		return c.runUDP(ctx, emit)
	}
	return c.runStream(ctx, emit)
}

func (c *Collector) limits() sessionLimits {
	return sessionLimits{
		maxTemplates:      c.cfg.MaxTemplatesPerSession,
		maxTemplateFields: c.cfg.MaxTemplateFieldsPerSession,
		maxFields:         c.cfg.MaxFieldsPerMessage,
	}
}

func (c *Collector) runStream(ctx context.Context, emit func(*Record)) error {
	stop := context.AfterFunc(ctx, func() { c.ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, c.cfg.MaxConnections)
	for {
		nc, err := c.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.m.errAccept.Inc()
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("ipfixcollect: accept: %w", err)
			}
			klog.ErrorS(err, "IPFIX collector cannot accept")
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			c.m.refusedConnections.Inc()
			klog.V(2).InfoS("IPFIX exporter refused: MaxConnections reached", "exporter", nc.RemoteAddr(), "maxConnections", c.cfg.MaxConnections)
			nc.Close()
			continue
		}
		c.m.active.Inc()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The gauge drops once the slot is free: a connection made
			// after it shows one fewer is accepted.
			defer c.m.active.Dec()
			defer func() { <-slots }()
			c.serveConn(ctx, nc.(*net.TCPConn), emit)
		}()
	}
}

// streamBufferSize is the read buffer of a connection: one TLS record.
// Larger messages are read straight into the message buffer.
const streamBufferSize = 16 << 10

// idleConn hands a read timeout to onTimeout, which decides whether the
// read goes on (the timeout started an orderly close) or fails. It sits
// below TLS, so a timeout never reaches (and never breaks) the TLS state.
type idleConn struct {
	*net.TCPConn
	onTimeout func() bool
}

func (ic *idleConn) Read(p []byte) (int, error) {
	for {
		n, err := ic.TCPConn.Read(p)
		var ne net.Error
		if n == 0 && errors.As(err, &ne) && ne.Timeout() && ic.onTimeout() {
			continue
		}
		return n, err
	}
}

func (c *Collector) serveConn(ctx context.Context, tcp *net.TCPConn, emit func(*Record)) {
	defer tcp.Close()
	c.m.connections.Inc()
	remote := addrPort(tcp.RemoteAddr())
	var (
		mu      sync.Mutex
		closing bool
		tc      *tls.Conn
	)
	// closeSide closes our sending side so the exporter stops sending, and
	// lets reads go on for DrainTimeout to collect what it already sent
	// until its EOF. Shutdown and the idle timeout both use it.
	closeSide := func(idle bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if closing {
			return false
		}
		closing = true
		if idle {
			// Before the close, so whoever sees the EOF sees the count.
			c.m.idleClosed.Inc()
			klog.V(2).InfoS("Closing idle IPFIX connection", "exporter", remote, "idleTimeout", c.cfg.IdleTimeout)
		}
		if tc != nil {
			_ = tcp.SetWriteDeadline(time.Now().Add(time.Second))
			_ = tc.CloseWrite()
		}
		_ = tcp.CloseWrite()
		_ = tcp.SetReadDeadline(time.Now().Add(c.cfg.DrainTimeout))
		return true
	}
	isClosing := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return closing
	}
	// armIdle gives the next message IdleTimeout to arrive in full, so a
	// peer trickling bytes cannot hold the connection either.
	armIdle := func() {
		mu.Lock()
		defer mu.Unlock()
		if !closing {
			_ = tcp.SetReadDeadline(time.Now().Add(c.cfg.IdleTimeout))
		}
	}
	ic := &idleConn{TCPConn: tcp, onTimeout: func() bool { return closeSide(true) }}
	var rd io.Reader = ic
	if c.tlsConf != nil {
		conn := tls.Server(ic, c.tlsConf)
		hctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
		err := conn.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.m.errTLS.Inc()
			klog.V(2).InfoS("IPFIX exporter failed the TLS handshake", "exporter", remote, "err", err)
			return
		}
		mu.Lock()
		tc = conn
		mu.Unlock()
		rd = conn
	}
	stop := context.AfterFunc(ctx, func() { closeSide(false) })
	defer stop()
	klog.V(2).InfoS("IPFIX exporter connected", "exporter", remote)
	s := newSession(remote, c.limits())
	br := bufio.NewReaderSize(rd, streamBufferSize)
	var hdr [4]byte
	var buf []byte // grown to the largest message seen
	for {
		armIdle()
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil && !isClosing() {
				c.m.errRead.Inc()
				klog.V(2).InfoS("IPFIX exporter connection failed", "exporter", remote, "err", err)
			}
			return
		}
		version, length := int(hdr[0])<<8|int(hdr[1]), int(hdr[2])<<8|int(hdr[3])
		if version != ipfixVersion || length < headerLen {
			// The length field is the only framing: past a bad header
			// nothing can be found again.
			c.m.errMalformed.Inc()
			klog.V(2).InfoS("IPFIX stream out of sync, closing", "exporter", remote, "version", version, "length", length)
			return
		}
		if cap(buf) < length {
			buf = make([]byte, min(maxMessageLength, max(length, 2*cap(buf), 1024)))
		}
		msg := buf[:length]
		copy(msg, hdr[:])
		if _, err := io.ReadFull(br, msg[4:]); err != nil {
			c.m.errRead.Inc()
			klog.V(2).InfoS("IPFIX exporter connection ended inside a message", "exporter", remote, "err", err)
			return
		}
		c.decode(s, msg, emit)
	}
}

func (c *Collector) decode(s *session, msg []byte, emit func(*Record)) {
	// Counted last, so a message counted has had its records delivered and
	// its errors counted.
	defer c.m.messages.Inc()
	st, err := s.message(msg, emit)
	c.m.records.Add(float64(st.records))
	for _, n := range []struct {
		c prometheus.Counter
		n int
	}{
		{c.m.errUnknownTemplate, st.unknownTemplates},
		{c.m.errUnknownSet, st.unknownSets},
		{c.m.errZeroLength, st.zeroLength},
		{c.m.refusedTemplates, st.templatesRefused},
		{c.m.refusedTemplateFields, st.templateFieldsRefused},
	} {
		if n.n > 0 {
			n.c.Add(float64(n.n))
		}
	}
	if st.zeroLength > 0 {
		klog.V(2).InfoS("IPFIX template with a zero-length field rejected", "exporter", s.exporter, "templates", st.zeroLength)
	}
	if st.templatesRefused+st.templateFieldsRefused > 0 {
		klog.V(2).InfoS("IPFIX templates refused: session at its template bound", "exporter", s.exporter,
			"templates", len(s.templates), "templateFields", s.templateFields,
			"maxTemplatesPerSession", c.cfg.MaxTemplatesPerSession, "maxTemplateFieldsPerSession", c.cfg.MaxTemplateFieldsPerSession)
	}
	if err != nil {
		var de *decodeError
		if errors.As(err, &de) && de.reason == reasonFieldLimit {
			c.m.errFieldLimit.Inc()
		} else {
			c.m.errMalformed.Inc()
		}
		klog.V(2).InfoS("IPFIX message not decoded to its end", "exporter", s.exporter, "err", err)
	}
}

func (c *Collector) runUDP(ctx context.Context, emit func(*Record)) error {
	stop := context.AfterFunc(ctx, func() { c.pc.Close() })
	defer stop()
	sessions := map[netip.AddrPort]*session{}
	var order []netip.AddrPort // first-seen order, for eviction
	buf := make([]byte, maxMessageLength)
	for {
		n, from, err := c.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.m.errRead.Inc()
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("ipfixcollect: read: %w", err)
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		s, ok := sessions[from]
		if !ok {
			if len(sessions) >= c.cfg.MaxUDPSessions {
				delete(sessions, order[0])
				order = order[1:]
				c.m.udpEvicted.Inc()
			}
			s = newSession(from, c.limits())
			sessions[from] = s
			order = append(order, from)
		}
		c.decode(s, buf[:n], emit)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
