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
	// (default 4096); beyond it the oldest-seen one is forgotten.
	MaxUDPSessions int
}

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
	if cfg.MaxUDPSessions == 0 {
		cfg.MaxUDPSessions = 4096
	}
	if cfg.DrainTimeout < 0 || cfg.HandshakeTimeout < 0 || cfg.MaxUDPSessions < 0 {
		return nil, fmt.Errorf("ipfixcollect config: DrainTimeout, HandshakeTimeout and MaxUDPSessions must not be negative")
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
	return c, nil
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

func (c *Collector) runStream(ctx context.Context, emit func(*Record)) error {
	stop := context.AfterFunc(ctx, func() { c.ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.serveConn(ctx, nc.(*net.TCPConn), emit)
		}()
	}
}

func (c *Collector) serveConn(ctx context.Context, tcp *net.TCPConn, emit func(*Record)) {
	defer tcp.Close()
	c.m.connections.Inc()
	c.m.active.Inc()
	defer c.m.active.Dec()
	remote := addrPort(tcp.RemoteAddr())
	var rd io.Reader = tcp
	var tc *tls.Conn
	if c.tlsConf != nil {
		tc = tls.Server(tcp, c.tlsConf)
		hctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.m.errTLS.Inc()
			klog.V(2).InfoS("IPFIX exporter failed the TLS handshake", "exporter", remote, "err", err)
			return
		}
		rd = tc
	}
	// On shutdown, close our side so the exporter stops sending, and keep
	// reading what it already sent until its EOF.
	stop := context.AfterFunc(ctx, func() {
		if tc != nil {
			_ = tcp.SetWriteDeadline(time.Now().Add(time.Second))
			_ = tc.CloseWrite()
		}
		_ = tcp.CloseWrite()
		_ = tcp.SetReadDeadline(time.Now().Add(c.cfg.DrainTimeout))
	})
	defer stop()
	klog.V(2).InfoS("IPFIX exporter connected", "exporter", remote)
	s := newSession(remote)
	br := bufio.NewReaderSize(rd, maxMessageLength)
	buf := make([]byte, maxMessageLength)
	for {
		if _, err := io.ReadFull(br, buf[:4]); err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				c.m.errRead.Inc()
				klog.V(2).InfoS("IPFIX exporter connection failed", "exporter", remote, "err", err)
			}
			return
		}
		version, length := int(buf[0])<<8|int(buf[1]), int(buf[2])<<8|int(buf[3])
		if version != ipfixVersion || length < headerLen {
			// The length field is the only framing: past a bad header
			// nothing can be found again.
			c.m.errMalformed.Inc()
			klog.V(2).InfoS("IPFIX stream out of sync, closing", "exporter", remote, "version", version, "length", length)
			return
		}
		if _, err := io.ReadFull(br, buf[4:length]); err != nil {
			c.m.errRead.Inc()
			klog.V(2).InfoS("IPFIX exporter connection ended inside a message", "exporter", remote, "err", err)
			return
		}
		c.decode(s, buf[:length], emit)
	}
}

func (c *Collector) decode(s *session, msg []byte, emit func(*Record)) {
	// Counted last, so a message counted has had its records delivered and
	// its errors counted.
	defer c.m.messages.Inc()
	st, err := s.message(msg, emit)
	c.m.records.Add(float64(st.records))
	if st.unknownTemplates > 0 {
		c.m.errUnknownTemplate.Add(float64(st.unknownTemplates))
	}
	if st.unknownSets > 0 {
		c.m.errUnknownSet.Add(float64(st.unknownSets))
	}
	if err != nil {
		c.m.errMalformed.Inc()
		klog.V(2).InfoS("Malformed IPFIX message", "exporter", s.exporter, "err", err)
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
			s = newSession(from)
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
