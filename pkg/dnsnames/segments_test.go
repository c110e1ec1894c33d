package dnsnames

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// TestParseChainTTL: an answer lives as long as the shortest-lived record
// of the chain that leads to it.
func TestParseChainTTL(t *testing.T) {
	m := msg(t, resp("a.example."),
		rr{name: "a.example.", typ: dnsmessage.TypeA, ttl: 500, data: "203.0.113.1"},
		rr{name: "a.example.", typ: dnsmessage.TypeCNAME, ttl: 300, data: "b.example."},
		rr{name: "b.example.", typ: dnsmessage.TypeCNAME, ttl: 60, data: "c.example."},
		rr{name: "b.example.", typ: dnsmessage.TypeA, ttl: 3600, data: "203.0.113.2"},
		rr{name: "c.example.", typ: dnsmessage.TypeA, ttl: 3600, data: "203.0.113.3"},
		rr{name: "c.example.", typ: dnsmessage.TypeA, ttl: 20, data: "203.0.113.4"},
	)
	var ps parser
	_, ans, err := ps.parse(m, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[[16]byte]uint32{
		addr16("203.0.113.1"): 500, // the question's own record
		addr16("203.0.113.2"): 300, // behind the 300 s CNAME
		addr16("203.0.113.3"): 60,  // behind the 300 s and 60 s CNAMEs
		addr16("203.0.113.4"): 20,  // its own TTL is the shortest
	}
	if len(ans) != len(want) {
		t.Fatalf("%d answers, want %d", len(ans), len(want))
	}
	for _, a := range ans {
		if a.ttl != want[a.addr] {
			t.Errorf("%v: ttl %d, want %d", netip.AddrFrom16(a.addr).Unmap(), a.ttl, want[a.addr])
		}
	}
}

// TestCacheNamespaceShare: a full cache takes room from the namespace
// holding the most entries, so a namespace with fewer keeps its answers
// however many the other stores; within that namespace the entry closest
// to expiry goes; an expired entry anywhere goes first, uncounted.
func TestCacheNamespaceShare(t *testing.T) {
	c := newCache(10, time.Second, time.Hour)
	now := int64(1e18)
	key := func(ns string, i int) cacheKey {
		return cacheKey{ns: ns, addr: [16]byte{0: byte(len(ns)), 15: byte(i)}}
	}
	for i := 0; i < 3; i++ { // team-b: short TTLs, closest to expiry overall
		c.put(key("team-b", i), "", "b", 10, now)
	}
	for i := 0; i < 7; i++ {
		c.put(key("team-aa", i), "", "a", uint32(1000+i), now)
	}
	evicted := 0
	for i := 7; i < 50; i++ {
		evicted += c.put(key("team-aa", i), "", "a", uint32(1000+i), now)
	}
	if evicted != 43 {
		t.Errorf("%d evictions, want 43", evicted)
	}
	if got := c.entriesOf("team-b"); got != 3 {
		t.Errorf("team-b holds %d entries, want its 3", got)
	}
	if got := c.entriesOf("team-aa"); got != 7 {
		t.Errorf("team-aa holds %d, want 7", got)
	}
	// team-aa lost its entries closest to expiry: the 7 newest remain.
	for i := 43; i < 50; i++ {
		if _, _, ok := c.get(key("team-aa", i), now); !ok {
			t.Errorf("team-aa entry %d (among the longest-lived) evicted", i)
		}
	}
	// A client entry counts against the namespace of the pod that asked,
	// and moves when that becomes known.
	ck := cacheKey{client: [16]byte{0: 9}, addr: [16]byte{15: 1}}
	c.put(ck, "", "x", 2000, now) // evicts from team-aa (7 > 3)
	if c.entriesOf("") != 1 || c.entriesOf("team-aa") != 6 {
		t.Errorf("unknown-namespace entry: groups %d/%d, want 1/6", c.entriesOf(""), c.entriesOf("team-aa"))
	}
	c.put(ck, "team-b", "x", 2000, now)
	if c.entriesOf("") != 0 || c.entriesOf("team-b") != 4 {
		t.Errorf("after the namespace became known: groups %d/%d, want 0/4", c.entriesOf(""), c.entriesOf("team-b"))
	}
	// Expired entries make room first, whatever their namespace.
	later := now + int64(20*time.Second)
	if ev := c.put(key("team-aa", 99), "", "a", 1000, later); ev != 0 {
		t.Errorf("room from an expired team-b entry counted %d evictions", ev)
	}
	if got := c.entriesOf("team-b"); got != 3 {
		t.Errorf("team-b holds %d after its expired entry made room, want 3", got)
	}
	if got := c.expire(later, 100); got != 2 {
		t.Errorf("expired %d, want team-b's 2 remaining short-lived entries", got)
	}
	if c.len() != c.entriesOf("team-aa")+c.entriesOf("team-b") || c.len() != 8 {
		t.Errorf("len %d, groups %d+%d", c.len(), c.entriesOf("team-aa"), c.entriesOf("team-b"))
	}
}

// TestHandleSegments: a payload of back-to-back messages (a GRO/GSO
// packet's layout: equal datagrams, the last up to that size) gives each
// message's answers; a cut last one gives its complete answers; a part
// that is no message counts as a parse error without losing the others.
func TestHandleSegments(t *testing.T) {
	n, _ := testNames(t, Config{})
	m1 := answerFor(t, "one.example.test", 300, "203.0.113.11")
	m2 := answerFor(t, "two.example.test", 300, "203.0.113.12")
	m3 := msg(t, msgOpts{questions: []string{"ab.example.test."}, compress: true},
		rr{name: "ab.example.test.", typ: dnsmessage.TypeA, ttl: 60, data: "203.0.113.13"},
		rr{name: "ab.example.test.", typ: dnsmessage.TypeA, ttl: 60, data: "203.0.113.14"})
	if len(m3) >= len(m1) {
		t.Fatalf("the last message (%d) must be shorter than the others (%d)", len(m3), len(m1))
	}
	all := append(append(append([]byte{}, m1...), m2...), m3...)
	// Copied up to 4 bytes before the end: m3's second answer is cut.
	n.handle(event(serverIP, clientA, all[:len(all)-4], len(all)))
	for i, c := range []struct{ addr, want string }{
		{"203.0.113.11", "one.example.test"}, {"203.0.113.12", "two.example.test"},
		{"203.0.113.13", "ab.example.test"}, {"203.0.113.14", ""},
	} {
		r := record(clientA, "", netip.MustParseAddr(c.addr), uint16(i+1))
		n.Enrich(r)
		if r.DestinationName != c.want {
			t.Errorf("-> %s: %q, want %q", c.addr, r.DestinationName, c.want)
		}
	}
	if got := value(n.metrics.responses); got != 3 {
		t.Errorf("responses_total %v, want 3", got)
	}
	if got := value(n.metrics.parseErrors); got != 0 {
		t.Errorf("parse_errors_total %v, want 0", got)
	}
	junk := append(append([]byte{}, m1...), make([]byte, 20)...)
	n.handle(event(serverIP, clientB, junk, len(junk)))
	if got := value(n.metrics.parseErrors); got != 1 {
		t.Errorf("parse_errors_total %v after trailing junk, want 1", got)
	}
	r := record(clientB, "", netip.MustParseAddr("203.0.113.11"), 9)
	if n.Enrich(r); r.DestinationName != "one.example.test" {
		t.Errorf("message before trailing junk: %q", r.DestinationName)
	}
}

func FuzzMessageLen(f *testing.F) {
	f.Add(msg(f, resp("api.example.test."), rr{name: "api.example.test.", typ: dnsmessage.TypeA, ttl: 5, data: "203.0.113.10"}))
	f.Add([]byte{0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, m []byte) {
		l, ok := messageLen(m)
		if ok && (l < 12 || l > len(m)) {
			t.Fatalf("length %d of a %d-byte buffer", l, len(m))
		}
	})
}
