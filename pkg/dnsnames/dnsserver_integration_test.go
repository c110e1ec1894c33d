//go:build integration

package dnsnames

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowlens/flowlens/test/netnstest"
)

// zone is what the test DNS server answers: a lower-case name with its
// final dot -> its records; any other name gets NXDOMAIN.
type zone map[string][]zoneRR

type zoneRR struct {
	typ  dnsmessage.Type
	ttl  uint32
	data string // address or CNAME target
}

// dnsServer is a tiny authoritative-style server on UDP port 53 of a pod,
// built on dnsmessage: it answers the question with the zone's records of
// the question's type, following CNAMEs as a recursive resolver returns
// them (the CNAME records first, then the target's records).
type dnsServer struct {
	pc   net.PacketConn
	zone zone
	wg   sync.WaitGroup

	mu      sync.Mutex
	answers int
}

func startDNSServer(t testing.TB, pod *netnstest.Pod, z zone) *dnsServer {
	t.Helper()
	s := &dnsServer{zone: z}
	if err := pod.Run(func() error {
		var err error
		s.pc, err = net.ListenPacket("udp", ":53")
		return err
	}); err != nil {
		t.Fatalf("dns server in pod %s: %v", pod, err)
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		s.pc.Close()
		s.wg.Wait()
	})
	return s
}

func (s *dnsServer) serve() {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		out, err := s.answer(buf[:n])
		if err != nil {
			continue
		}
		if _, err := s.pc.WriteTo(out, from); err == nil {
			s.mu.Lock()
			s.answers++
			s.mu.Unlock()
		}
	}
}

func (s *dnsServer) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	name := strings.ToLower(q.Name.String())
	if _, ok := s.zone[name]; !ok {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 2048), rh)
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
	for hops := 0; hops < 8; hops++ {
		var next string
		for _, r := range s.zone[name] {
			hdr := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: r.ttl}
			switch {
			case r.typ == dnsmessage.TypeCNAME:
				next = r.data
				err = b.CNAMEResource(hdr, dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(r.data)})
			case r.typ != q.Type:
				continue
			case r.typ == dnsmessage.TypeA:
				err = b.AResource(hdr, dnsmessage.AResource{A: netip.MustParseAddr(r.data).As4()})
			case r.typ == dnsmessage.TypeAAAA:
				err = b.AAAAResource(hdr, dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(r.data).As16()})
			}
			if err != nil {
				return nil, err
			}
		}
		if next == "" {
			break
		}
		name = next
	}
	return b.Finish()
}

// resolve sends one query from pod to the server and returns the
// addresses of the answer, as the pod's resolver would see them.
func resolve(pod *netnstest.Pod, server netip.AddrPort, name string, typ dnsmessage.Type) ([]netip.Addr, error) {
	c, err := pod.DialUDP(server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: uint16(time.Now().UnixNano()), RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		return nil, err
	}
	q, err := b.Finish()
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("query %s from %s: %w", name, pod, err)
	}
	var p dnsmessage.Parser
	if _, err := p.Start(buf[:n]); err != nil {
		return nil, err
	}
	if err := p.SkipAllQuestions(); err != nil {
		return nil, err
	}
	var out []netip.Addr
	for {
		h, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		switch h.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return nil, err
			}
			out = append(out, netip.AddrFrom4(r.A))
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return nil, err
			}
			out = append(out, netip.AddrFrom16(r.AAAA))
		default:
			if err := p.SkipAnswer(); err != nil {
				return nil, err
			}
		}
	}
}

// runNames starts Run and stops it (checking its result) at cleanup.
func runNames(t testing.TB, n *Names) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return within 5s of its context's end")
		}
		if err := n.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}
