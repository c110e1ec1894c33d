package ipfixexport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// errPeerEOF marks an orderly close by the collector, as opposed to a reset.
var errPeerEOF = errors.New("collector closed the connection")

// conn is one connection to the collector, owned by Run.
type conn struct {
	nc  net.Conn     // where messages go: TLS, counted TCP, or UDP
	tcp *net.TCPConn // nil over UDP
	tls *tls.Conn    // nil unless TLS

	// written counts bytes handed to the TCP socket, TLS framing included,
	// in the same unit as the kernel's acknowledged-bytes counter.
	written atomic.Uint64
	// tracked is set when the kernel reports acknowledged bytes, so
	// unacknowledged messages can be sent again after a failure.
	tracked  bool
	inflight []*message
	seq      uint32 // data records sent on this connection (RFC 7011 sequence number)

	// Over UDP: data messages written since the templates last were, and
	// the timer that resends them after TemplateRefreshInterval (nil over
	// TCP/TLS, where the collector has them for the connection's life).
	sinceTemplates int
	refresh        *time.Timer

	// The collector never sends IPFIX to an exporter, so a read only ever
	// returns when the collector closes or resets: that is how a dead
	// collector is noticed before the next write.
	dead    chan struct{}
	readErr error
	done    chan struct{}
}

type countingConn struct {
	net.Conn
	n *atomic.Uint64
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(uint64(n))
	return n, err
}

func (e *Exporter) dial(ctx context.Context) (*conn, error) {
	dctx, cancel := context.WithTimeout(ctx, e.cfg.DialTimeout)
	defer cancel()
	network := "tcp"
	if e.cfg.Transport == UDP {
		network = "udp"
	}
	d := net.Dialer{KeepAlive: 15 * time.Second}
	if e.cfg.Transport != UDP {
		// A collector whose host vanished (packets dropped, no RST) would
		// otherwise look connected for as long as writes fit in the send
		// buffer (tcp_wmem's maximum, minutes to hours at a low rate) and
		// the kernel keeps retransmitting (~15 minutes): nothing would
		// take it out of a sharded agent's ring. With TCP_USER_TIMEOUT
		// the kernel fails the connection once written data stays
		// unacknowledged for WriteTimeout (or, while idle, once a
		// keepalive probe does), the reader sees the error, and the
		// exporter is down: the same bound as a collector that stops
		// reading.
		d.Control = userTimeoutControl(e.cfg.WriteTimeout)
	}
	nc, err := d.DialContext(dctx, network, e.cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, e.cfg.Address, err)
	}
	c := &conn{nc: nc, dead: make(chan struct{}), done: make(chan struct{})}
	if e.cfg.Transport != UDP {
		tcp, ok := nc.(*net.TCPConn)
		if !ok {
			nc.Close()
			return nil, fmt.Errorf("dial %s: unexpected connection type %T", e.cfg.Address, nc)
		}
		c.tcp = tcp
		c.nc = countingConn{Conn: tcp, n: &c.written}
		if e.cfg.Transport == TLS {
			c.tls = tls.Client(c.nc, e.tlsConf)
			if err := c.tls.HandshakeContext(dctx); err != nil {
				tcp.Close()
				return nil, fmt.Errorf("tls handshake with %s: %w", e.cfg.Address, err)
			}
			c.nc = c.tls
		}
		_, _, c.tracked = tcpAcked(tcp)
	}
	go c.readLoop()
	return c, nil
}

func (c *conn) readLoop() {
	defer close(c.done)
	buf := make([]byte, 512)
	for {
		if _, err := c.nc.Read(buf); err != nil {
			if errors.Is(err, io.EOF) {
				err = errPeerEOF
			}
			c.readErr = err
			close(c.dead)
			return
		}
	}
}

// teardown closes c. With graceful, the exporter closes its sending side
// first, so a collector that reads until EOF gets everything. It then waits
// up to DrainTimeout for the collector's kernel to acknowledge what was
// written, aborts the connection if it did not, and queues every
// unacknowledged message for the next connection.
func (e *Exporter) teardown(c *conn, graceful bool) {
	var acked uint64
	if c.tracked {
		if graceful {
			c.closeWrite()
		}
		deadline := time.Now().Add(e.cfg.DrainTimeout)
		for {
			a, closed, ok := tcpAcked(c.tcp)
			if ok {
				acked = a
			}
			if !ok || closed || acked >= c.written.Load() || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if acked < c.written.Load() {
			// Abort rather than let the kernel keep retransmitting: what was
			// not acknowledged is sent again on the next connection and must
			// not also arrive late on this one.
			_ = c.tcp.SetLinger(0)
		}
	}
	// Close the socket, not the TLS layer: a close_notify to a stalled
	// collector could block.
	if c.tcp != nil {
		c.tcp.Close()
	} else {
		c.nc.Close()
	}
	<-c.done

	var requeue []*message
	n := 0
	for _, m := range c.inflight {
		if m.end > acked && m.nrec > 0 {
			requeue = append(requeue, m)
			n += m.nrec
			continue
		}
		e.putMessage(m)
	}
	c.inflight = nil
	if n > 0 {
		e.m.resent.Add(float64(n))
		klog.V(2).InfoS("IPFIX records not acknowledged by the collector, queued again", "records", n, "address", e.cfg.Address)
	}
	e.pending = append(requeue, e.pending...)
}

func (c *conn) closeWrite() {
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	if c.tls != nil {
		_ = c.tls.CloseWrite()
	}
	_ = c.tcp.CloseWrite()
}

func clientTLS(cfg Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.TLS.ServerName}
	if tc.ServerName == "" {
		host, _, _ := net.SplitHostPort(cfg.Address)
		tc.ServerName = host
	}
	if cfg.TLS.CAFile != "" {
		pem, err := os.ReadFile(cfg.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CAFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CAFile %q: no PEM certificate found", cfg.TLS.CAFile)
		}
		tc.RootCAs = pool
	}
	if cfg.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("CertFile/KeyFile: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
