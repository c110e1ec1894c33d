package dnsnames

import (
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowlens/flowlens/pkg/flow"
)

// TestReviewCNAMETTLHonoured: the question's name maps to the address only
// while every record of the chain that leads there is live. A CNAME with a
// 60 s TTL to a CDN name whose A record lives an hour says nothing about
// api.example.test after 60 s: the client's resolver asks again then and
// may get another chain. The cache keeps the A record's TTL alone.
func TestReviewCNAMETTLHonoured(t *testing.T) {
	n, clk := testNames(t, Config{TTLFloor: 30 * time.Second, TTLCeiling: time.Hour})
	m := msg(t, resp("api.example.test."),
		rr{name: "api.example.test.", typ: dnsmessage.TypeCNAME, ttl: 60, data: "edge.cdn.example.net."},
		rr{name: "edge.cdn.example.net.", typ: dnsmessage.TypeA, ttl: 3600, data: external.String()},
	)
	n.handle(event(serverIP, clientA, m, len(m)))
	r := record(clientA, "", external, 1)
	r.EndReason = flow.EndOfFlow
	n.Enrich(r)
	if r.DestinationName != "api.example.test" {
		t.Fatalf("within the TTLs: %q", r.DestinationName)
	}
	clk.t = clk.t.Add(10 * time.Minute) // CNAME (60 s) long expired
	r = record(clientA, "", external, 2)
	n.Enrich(r)
	if r.DestinationName != "" {
		t.Errorf("10 min after the 60 s CNAME expired, a new connection is still named %q (lifetime taken from the A record's 3600 s TTL only)", r.DestinationName)
	}
}
