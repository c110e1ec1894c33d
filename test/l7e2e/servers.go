package l7e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowlens/flowlens/test/netnstest"
)

// ioTimeout bounds every exchange: inside one machine a slower one is a bug.
const ioTimeout = 10 * time.Second

// DNSServer answers A queries from a fixed table, over UDP in a pod.
type DNSServer struct {
	conn net.PacketConn
	wg   sync.WaitGroup
}

// ServeDNS starts a DNS server on pod's UDP port: names in records (fully
// qualified, "web.example.") get their A record, others NXDOMAIN.
func ServeDNS(pod *netnstest.Pod, port uint16, records map[string]netip.Addr) (*DNSServer, error) {
	var pc net.PacketConn
	err := pod.Run(func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dns server in pod %s: %w", pod, err)
	}
	s := &DNSServer{conn: pc}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			if resp, err := dnsAnswer(buf[:n], records); err == nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
	return s, nil
}

// Close stops the server.
func (s *DNSServer) Close() error {
	err := s.conn.Close()
	s.wg.Wait()
	return err
}

func dnsAnswer(query []byte, records map[string]netip.Addr) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	h.Response, h.Authoritative, h.RecursionAvailable = true, true, false
	a, ok := records[q.Name.String()]
	if !ok || q.Type != dnsmessage.TypeA {
		h.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, h)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if h.RCode == dnsmessage.RCodeSuccess {
		rh := dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60}
		if err := b.AResource(rh, dnsmessage.AResource{A: a.As4()}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// DNSResult is what a client got for one query.
type DNSResult struct {
	// Local is the client's address and port: the flow's source.
	Local   netip.AddrPort
	RCode   dnsmessage.RCode
	Answers []netip.Addr
}

// QueryDNS sends one A query for name (fully qualified) from pod to server
// over UDP and reads the answer.
func QueryDNS(pod *netnstest.Pod, server netip.AddrPort, name string) (DNSResult, error) {
	var res DNSResult
	qname, err := dnsmessage.NewName(name)
	if err != nil {
		return res, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4c37, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		return res, err
	}
	if err := b.Question(dnsmessage.Question{Name: qname, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		return res, err
	}
	msg, err := b.Finish()
	if err != nil {
		return res, err
	}
	c, err := pod.DialUDP(server)
	if err != nil {
		return res, err
	}
	defer c.Close()
	res.Local = unmapped(c.LocalAddr())
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write(msg); err != nil {
		return res, fmt.Errorf("dns query %s to %s: %w", name, server, err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return res, fmt.Errorf("dns answer %s from %s: %w", name, server, err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(buf[:n]); err != nil {
		return res, fmt.Errorf("dns answer %s from %s: %w", name, server, err)
	}
	res.RCode = m.Header.RCode
	for _, a := range m.Answers {
		if r, ok := a.Body.(*dnsmessage.AResource); ok {
			res.Answers = append(res.Answers, netip.AddrFrom4(r.A))
		}
	}
	return res, nil
}

// TestCert is a self-signed server certificate and a pool trusting it.
type TestCert struct {
	Cert tls.Certificate
	Pool *x509.CertPool
}

// NewTestCert makes a self-signed ECDSA certificate for the DNS names.
func NewTestCert(names ...string) (TestCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return TestCert{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: names[0]},
		DNSNames:              names,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return TestCert{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return TestCert{}, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return TestCert{Cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, Pool: pool}, nil
}

// TLSServer accepts TLS connections in a pod and answers every line-less
// read with "hello\n" until the client closes.
type TLSServer struct {
	ln net.Listener
	wg sync.WaitGroup
}

// ServeTLS starts a TLS server on pod's TCP port with cert.
func ServeTLS(pod *netnstest.Pod, port uint16, cert tls.Certificate) (*TLSServer, error) {
	var ln net.Listener
	err := pod.Run(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tls server in pod %s: %w", pod, err)
	}
	s := &TLSServer{ln: tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return // closed
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				buf := make([]byte, 512)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					if _, err := io.WriteString(c, "hello\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return s, nil
}

// Close stops accepting; open connections end when their clients close
// (or after a minute).
func (s *TLSServer) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

// TLSConn is a client connection after a completed handshake and one
// request/answer exchange.
type TLSConn struct {
	*tls.Conn
	Local netip.AddrPort
}

// DialTLS connects from pod to addr, handshakes with SNI serverName
// (verified against pool), and exchanges one message so application data
// flows in both directions. The caller closes the connection.
func DialTLS(pod *netnstest.Pod, addr netip.AddrPort, serverName string, pool *x509.CertPool) (*TLSConn, error) {
	raw, err := pod.DialTCP(addr)
	if err != nil {
		return nil, err
	}
	// Go's default ClientHello, with an X25519MLKEM768 key share, is
	// larger than one segment: see default-packet-size in SuricataConfig.
	c := tls.Client(raw, &tls.Config{ServerName: serverName, RootCAs: pool})
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s (%s): %w", addr, serverName, err)
	}
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls exchange with %s: write: %w", addr, err)
	}
	buf := make([]byte, len("hello\n"))
	if _, err := io.ReadFull(c, buf); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls exchange with %s: read the answer: %w", addr, err)
	}
	if string(buf) != "hello\n" {
		c.Close()
		return nil, fmt.Errorf("tls exchange with %s: unexpected answer %q", addr, buf)
	}
	_ = c.SetDeadline(time.Time{})
	return &TLSConn{Conn: c, Local: unmapped(raw.LocalAddr())}, nil
}

func unmapped(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
