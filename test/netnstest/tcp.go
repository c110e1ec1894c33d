package netnstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The TCP exchange: the client sends an 8-byte big-endian reply length, then
// its payload, then half-closes; the server counts the payload, replies with
// that many bytes and closes. The header lets one server serve transfers of
// any shape; Sent/Received and the server's counters exclude it.
const (
	tcpHeaderLen = 8
	// maxReply caps what a peer may ask for, so a stray client cannot make
	// a server write forever.
	maxReply = 1 << 30
	// ioTimeout bounds one whole exchange.
	ioTimeout = 60 * time.Second
)

// Transfer is what one exchange moved, counted by the client.
type Transfer struct {
	// Local is the client's address as the pod sees it (the source of the
	// connection); Remote is the address dialled (a Service VIP or a pod).
	Local, Remote netip.AddrPort
	// Sent and Received are payload bytes, without the protocol header.
	Sent, Received int64
	// Datagrams is the number of datagrams sent (UDP only).
	Datagrams int
}

// ServerStats are a server's totals since it started.
type ServerStats struct {
	Conns     int64 // TCP connections accepted, or UDP datagrams received
	BytesIn   int64 // payload bytes received, without headers
	BytesOut  int64 // payload bytes sent
	LastPeer  netip.AddrPort
	LastError string // last per-connection error, empty if none
}

// TCPServer is the exchange server started by Pod.ListenTCP.
type TCPServer struct {
	pod  *Pod
	ln   net.Listener
	port uint16
	wg   sync.WaitGroup

	conns, in, out atomic.Int64
	mu             sync.Mutex
	lastPeer       netip.AddrPort
	lastErr        string
}

// ListenTCP starts an exchange server on port (0 picks one) on all the
// pod's addresses. Node.Close stops it.
func (p *Pod) ListenTCP(port uint16) (*TCPServer, error) {
	l, err := p.listen("tcp", port)
	if err != nil {
		return nil, err
	}
	ln := l.(net.Listener)
	s := &TCPServer{pod: p, ln: ln, port: localAddrPort(ln.Addr()).Port()}
	if err := p.node.track(s); err != nil {
		return nil, errors.Join(err, ln.Close())
	}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Port returns the listening port.
func (s *TCPServer) Port() uint16 { return s.port }

// Addr returns the pod's IPv4 address and the listening port.
func (s *TCPServer) Addr() netip.AddrPort { return s.pod.Addr(s.port) }

// Stats returns the server's totals.
func (s *TCPServer) Stats() ServerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ServerStats{Conns: s.conns.Load(), BytesIn: s.in.Load(), BytesOut: s.out.Load(), LastPeer: s.lastPeer, LastError: s.lastErr}
}

// Close stops accepting and waits for open exchanges to end.
func (s *TCPServer) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close tcp server %s:%d: %w", s.pod, s.port, err)
	}
	return nil
}

func (s *TCPServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			// Closed listener: the only way out. Transient accept errors
			// (EMFILE) end the server too; the test then sees a dial error.
			return
		}
		s.conns.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.handle(c); err != nil {
				s.mu.Lock()
				s.lastErr = err.Error()
				s.mu.Unlock()
			}
		}()
	}
}

func (s *TCPServer) handle(c net.Conn) error {
	defer c.Close()
	s.mu.Lock()
	s.lastPeer = localAddrPort(c.RemoteAddr())
	s.mu.Unlock()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return err
	}
	var hdr [tcpHeaderLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fmt.Errorf("read header: %w", err)
	}
	reply := binary.BigEndian.Uint64(hdr[:])
	n, err := io.Copy(io.Discard, c)
	s.in.Add(n)
	if err != nil {
		return fmt.Errorf("read payload: %w", err)
	}
	if reply > maxReply {
		return fmt.Errorf("reply of %d bytes asked, limit %d", reply, maxReply)
	}
	w, err := io.CopyN(c, zeroReader{}, int64(reply))
	s.out.Add(w)
	if err != nil {
		return fmt.Errorf("write reply: %w", err)
	}
	return nil
}

// SendExactly connects from a pod to addr (a TCPServer, directly or through
// a Service), sends n payload bytes, asks for reply bytes back and reads
// them to the server's close. The connection is closed when it returns, so
// its conntrack entry is on its way to TIME_WAIT.
func SendExactly(from *Pod, to netip.AddrPort, n, reply int64) (Transfer, error) {
	if n < 0 || reply < 0 || reply > maxReply {
		return Transfer{}, fmt.Errorf("send %d bytes, reply %d: want 0 <= n and 0 <= reply <= %d", n, reply, maxReply)
	}
	c, err := from.DialTCP(to)
	if err != nil {
		return Transfer{}, err
	}
	defer c.Close()
	t := Transfer{Local: localAddrPort(c.LocalAddr()), Remote: to}
	fail := func(step string, err error) (Transfer, error) {
		return t, fmt.Errorf("tcp exchange %s -> %s: %s: %w", t.Local, to, step, err)
	}
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return fail("set deadline", err)
	}
	var hdr [tcpHeaderLen]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(reply))
	if _, err := c.Write(hdr[:]); err != nil {
		return fail("write header", err)
	}
	t.Sent, err = io.CopyN(c, zeroReader{}, n)
	if err != nil {
		return fail("write payload", err)
	}
	if err := c.CloseWrite(); err != nil {
		return fail("half-close", err)
	}
	t.Received, err = io.Copy(io.Discard, c)
	if err != nil {
		return fail("read reply", err)
	}
	if t.Received != reply {
		return fail("read reply", fmt.Errorf("got %d bytes, want %d", t.Received, reply))
	}
	return t, nil
}

// zeroReader is an endless source of payload.
type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}
