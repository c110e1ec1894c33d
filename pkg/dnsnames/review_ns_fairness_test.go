package dnsnames

import (
	"net/netip"
	"testing"
)

// TestReviewOneNamespaceEvictsAnother: the issue asks for a cache bounded
// "per pod namespace"; here one bound is shared by every namespace and the
// entry evicted is the one closest to expiry. A pod of team-a resolving
// names with long TTLs (a crawler, a hostile zone answering with many A
// records) evicts the live answer team-b's pod got a second earlier, and
// team-b's connection made right after its own lookup has no name.
func TestReviewOneNamespaceEvictsAnother(t *testing.T) {
	const bound = 64
	n, _ := testNames(t, Config{CacheEntries: bound, Namespaces: nsMap{clientA: "team-a", clientB: "team-b"}})
	mb := answerFor(t, "payments.example.test", 300, external.String())
	n.handle(event(serverIP, clientB, mb, len(mb)))
	for i := 0; i < bound; i++ {
		m := answerFor(t, "crawl.example.test", 3600, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String())
		n.handle(event(serverIP, clientA, m, len(m)))
	}
	r := record(clientB, "team-b", external, 1)
	n.Enrich(r)
	if r.DestinationName != "payments.example.test" {
		t.Errorf("team-b's live 300 s answer was evicted by team-a's lookups (%v evictions): name %q, want payments.example.test",
			value(n.metrics.evictions), r.DestinationName)
	}
}
