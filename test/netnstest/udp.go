package netnstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The UDP exchange: every datagram starts with a 4-byte big-endian length
// the server answers with one datagram of that many payload bytes (none for
// 0). SendUDP spreads n and reply over as many datagrams as needed to stay
// under udpChunk bytes each, one request in flight at a time.
const (
	udpHeaderLen = 4
	udpChunk     = 1200 // payload per datagram: fits a 1500 MTU with headers
	udpWait      = 5 * time.Second
)

// UDPServer is the exchange server started by Pod.ListenUDP.
type UDPServer struct {
	pod  *Pod
	pc   net.PacketConn
	port uint16
	done chan struct{}

	datagrams, in, out atomic.Int64
	mu                 sync.Mutex
	lastPeer           netip.AddrPort
	lastErr            string
}

// ListenUDP starts a UDP exchange server on port (0 picks one) on all the
// pod's addresses. Node.Close stops it.
func (p *Pod) ListenUDP(port uint16) (*UDPServer, error) {
	l, err := p.listen("udp", port)
	if err != nil {
		return nil, err
	}
	pc := l.(net.PacketConn)
	s := &UDPServer{pod: p, pc: pc, port: localAddrPort(pc.LocalAddr()).Port(), done: make(chan struct{})}
	if err := p.node.track(s); err != nil {
		return nil, errors.Join(err, pc.Close())
	}
	go s.serve()
	return s, nil
}

// Port returns the listening port.
func (s *UDPServer) Port() uint16 { return s.port }

// Addr returns the pod's IPv4 address and the listening port.
func (s *UDPServer) Addr() netip.AddrPort { return s.pod.Addr(s.port) }

// Stats returns the server's totals; Conns counts datagrams.
func (s *UDPServer) Stats() ServerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ServerStats{Conns: s.datagrams.Load(), BytesIn: s.in.Load(), BytesOut: s.out.Load(), LastPeer: s.lastPeer, LastError: s.lastErr}
}

// Close stops the server.
func (s *UDPServer) Close() error {
	err := s.pc.Close()
	<-s.done
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close udp server %s:%d: %w", s.pod, s.port, err)
	}
	return nil
}

func (s *UDPServer) serve() {
	defer close(s.done)
	buf := make([]byte, 64<<10)
	reply := make([]byte, udpChunk)
	for {
		n, peer, err := s.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.setErr(fmt.Errorf("read: %w", err))
			continue
		}
		s.datagrams.Add(1)
		s.mu.Lock()
		s.lastPeer = localAddrPort(peer)
		s.mu.Unlock()
		if n < udpHeaderLen {
			s.in.Add(int64(n))
			s.setErr(fmt.Errorf("datagram of %d bytes from %s: shorter than the header", n, peer))
			continue
		}
		s.in.Add(int64(n - udpHeaderLen))
		want := binary.BigEndian.Uint32(buf[:udpHeaderLen])
		if want == 0 {
			continue
		}
		if want > udpChunk {
			s.setErr(fmt.Errorf("reply of %d bytes asked, limit %d", want, udpChunk))
			continue
		}
		w, err := s.pc.WriteTo(reply[:want], peer)
		s.out.Add(int64(w))
		if err != nil {
			s.setErr(fmt.Errorf("reply to %s: %w", peer, err))
		}
	}
}

func (s *UDPServer) setErr(err error) {
	s.mu.Lock()
	s.lastErr = err.Error()
	s.mu.Unlock()
}

// SendUDP sends n payload bytes from a pod to addr (a UDPServer, directly or
// through a Service) from one socket and collects reply bytes back. All
// datagrams share one 5-tuple, so they make one conntrack entry.
func SendUDP(from *Pod, to netip.AddrPort, n, reply int) (Transfer, error) {
	if n < 0 || reply < 0 {
		return Transfer{}, fmt.Errorf("send %d bytes, reply %d: want non-negative sizes", n, reply)
	}
	c, err := from.DialUDP(to)
	if err != nil {
		return Transfer{}, err
	}
	defer c.Close()
	t := Transfer{Local: localAddrPort(c.LocalAddr()), Remote: to}
	count := max(chunks(n), chunks(reply), 1)
	out := make([]byte, udpHeaderLen+udpChunk)
	in := make([]byte, 64<<10)
	for i := range count {
		payload := share(n, count, i)
		want := share(reply, count, i)
		binary.BigEndian.PutUint32(out[:udpHeaderLen], uint32(want))
		clear(out[udpHeaderLen:])
		if _, err := c.Write(out[:udpHeaderLen+payload]); err != nil {
			return t, fmt.Errorf("udp exchange %s -> %s: datagram %d: %w", t.Local, to, i, err)
		}
		t.Sent += int64(payload)
		t.Datagrams++
		if want == 0 {
			continue
		}
		if err := c.SetReadDeadline(time.Now().Add(udpWait)); err != nil {
			return t, fmt.Errorf("udp exchange %s -> %s: set deadline: %w", t.Local, to, err)
		}
		got, err := c.Read(in)
		if err != nil {
			return t, fmt.Errorf("udp exchange %s -> %s: reply to datagram %d: %w", t.Local, to, i, err)
		}
		t.Received += int64(got)
	}
	if t.Received != int64(reply) {
		return t, fmt.Errorf("udp exchange %s -> %s: got %d reply bytes, want %d", t.Local, to, t.Received, reply)
	}
	return t, nil
}

// chunks is how many udpChunk-sized datagrams n bytes need.
func chunks(n int) int { return (n + udpChunk - 1) / udpChunk }

// share is datagram i's part of total spread over count datagrams, each at
// most udpChunk (count >= chunks(total)).
func share(total, count, i int) int {
	base, extra := total/count, total%count
	if i < extra {
		return base + 1
	}
	return base
}
