package dnsnames

import (
	"net/netip"
	"testing"
)

// TestReviewConcatenatedMessages: a UDP GRO super-packet (rx-udp-gro-
// forwarding on the node's NIC merges back-to-back responses of one
// server to one client socket, e.g. glibc's parallel A and AAAA) reaches
// the host veth's egress unsegmented, with the first datagram in the
// linear part and a UDP length that is the total. The program copies it
// up as one message of that length; handle parses the first message and
// silently drops the rest, so the second response's answers are lost
// (and nothing counts it).
func TestReviewConcatenatedMessages(t *testing.T) {
	n, _ := testNames(t, Config{})
	m1 := answerFor(t, "one.example.test", 300, "203.0.113.11")
	m2 := answerFor(t, "two.example.test", 300, "203.0.113.12")
	both := append(append([]byte{}, m1...), m2...)
	n.handle(event(serverIP, clientA, both, len(both)))
	for _, c := range []struct {
		addr, want string
		sport      uint16
	}{{"203.0.113.11", "one.example.test", 1}, {"203.0.113.12", "two.example.test", 2}} {
		r := record(clientA, "", netip.MustParseAddr(c.addr), c.sport)
		n.Enrich(r)
		if r.DestinationName != c.want {
			t.Errorf("-> %s: name %q, want %q (parse errors %v)", c.addr, r.DestinationName, c.want, value(n.metrics.parseErrors))
		}
	}
}
