package dnsnames

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowlens/flowlens/pkg/flow"
)

// TestEventLayout: handle's offsets are those of the generated struct.
func TestEventLayout(t *testing.T) {
	var e bpfEvent
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"saddr", evSaddr, unsafe.Offsetof(e.Saddr)},
		{"daddr", evDaddr, unsafe.Offsetof(e.Daddr)},
		{"msg_len", evMsgLen, unsafe.Offsetof(e.MsgLen)},
		{"copied", evCopied, unsafe.Offsetof(e.Copied)},
		{"payload", evPayload, unsafe.Offsetof(e.Payload)},
	} {
		if c.got != c.want {
			t.Errorf("%s at %d, the program's struct has it at %d", c.name, c.got, c.want)
		}
	}
}

// event builds a ring record as the program writes it.
func event(server, client netip.Addr, payload []byte, msgLen int) []byte {
	s := make([]byte, evPayload+len(payload))
	sa, ca := server.As16(), client.As16()
	copy(s[evSaddr:], sa[:])
	copy(s[evDaddr:], ca[:])
	binary.LittleEndian.PutUint16(s[32:], 53)
	binary.LittleEndian.PutUint16(s[34:], 40000)
	binary.LittleEndian.PutUint16(s[evMsgLen:], uint16(msgLen))
	binary.LittleEndian.PutUint16(s[evCopied:], uint16(len(payload)))
	copy(s[evPayload:], payload)
	return s
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

type nsMap map[netip.Addr]string

func (m nsMap) NamespaceOf(a netip.Addr) string { return m[a] }

func testNames(t *testing.T, cfg Config) (*Names, *fakeClock) {
	t.Helper()
	if err := cfg.complete(); err != nil {
		t.Fatal(err)
	}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	n := newNames(cfg, m)
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	n.now = clk.now
	return n, clk
}

var (
	serverIP = netip.MustParseAddr("10.244.0.10")
	clientA  = netip.MustParseAddr("10.244.0.2") // namespace team-a
	clientA2 = netip.MustParseAddr("10.244.0.3") // namespace team-a
	clientB  = netip.MustParseAddr("10.244.0.4") // namespace team-b
	external = netip.MustParseAddr("203.0.113.10")
)

func answerFor(t *testing.T, name string, ttl uint32, addr string) []byte {
	t.Helper()
	return msg(t, resp(name+"."), rr{name: name + ".", typ: dnsmessage.TypeA, ttl: ttl, data: addr})
}

// record is a flow from src (in namespace ns) to dst.
func record(src netip.Addr, ns string, dst netip.Addr, sport uint16) *flow.Record {
	r := &flow.Record{}
	r.Tuple = flow.NewTuple(src, dst, sport, 443, flow.ProtoTCP)
	r.OrigDstIP = r.Tuple.DstIP
	r.OrigDstPort = 443
	r.ID = uint32(sport)
	r.Source.PodNamespace = ns
	return r
}

func TestEnrichPerNamespace(t *testing.T) {
	ns := nsMap{clientA: "team-a", clientA2: "team-a", clientB: "team-b"}
	n, _ := testNames(t, Config{Namespaces: ns})
	m := answerFor(t, "api.example.test", 5, external.String())
	n.handle(event(serverIP, clientA, m, len(m)))

	for _, c := range []struct {
		desc string
		r    *flow.Record
		want string
	}{
		{"the asking pod", record(clientA, "team-a", external, 1000), "api.example.test"},
		{"another pod of its namespace", record(clientA2, "team-a", external, 1001), "api.example.test"},
		{"a pod of another namespace", record(clientB, "team-b", external, 1002), ""},
		{"the asking IP, now a pod of another namespace", record(clientA, "team-b", external, 1003), ""},
		{"the asking IP, namespace unknown", record(clientA, "", external, 1004), "api.example.test"},
		{"another destination", record(clientA, "team-a", netip.MustParseAddr("203.0.113.11"), 1005), ""},
	} {
		n.Enrich(c.r)
		if c.r.DestinationName != c.want {
			t.Errorf("%s: name %q, want %q", c.desc, c.r.DestinationName, c.want)
		}
	}
	if got := value(n.metrics.named); got != 3 {
		t.Errorf("records_named_total %v, want 3", got)
	}
	if got := value(n.metrics.entries); got != 2 {
		t.Errorf("cache_entries %v, want 2 (per client and per namespace)", got)
	}
}

// TestEnrichPerClientWithoutResolver: without namespaces, only the IP that
// asked gets the name.
func TestEnrichPerClientWithoutResolver(t *testing.T) {
	n, _ := testNames(t, Config{})
	m := answerFor(t, "api.example.test", 5, external.String())
	n.handle(event(serverIP, clientA, m, len(m)))
	r := record(clientA, "team-a", external, 1)
	n.Enrich(r)
	if r.DestinationName != "api.example.test" {
		t.Errorf("asking pod: %q", r.DestinationName)
	}
	r = record(clientA2, "team-a", external, 2)
	n.Enrich(r)
	if r.DestinationName != "" {
		t.Errorf("other pod of the namespace got %q without a namespace resolver", r.DestinationName)
	}
}

// TestEnrichDNAT: the address the client dialled (the name resolved to a
// VIP, e.g. an ExternalName-less LoadBalancer) is looked up first, then
// the endpoint.
func TestEnrichDNAT(t *testing.T) {
	n, _ := testNames(t, Config{})
	vip := netip.MustParseAddr("10.96.0.50")
	backend := netip.MustParseAddr("10.244.1.7")
	m1 := answerFor(t, "svc.example.test", 30, vip.String())
	n.handle(event(serverIP, clientA, m1, len(m1)))
	m2 := answerFor(t, "backend.example.test", 30, backend.String())
	n.handle(event(serverIP, clientA, m2, len(m2)))
	r := record(clientA, "", backend, 7)
	r.OrigDstIP = vip.As16()
	r.OrigDstPort = 80
	n.Enrich(r)
	if r.DestinationName != "svc.example.test" {
		t.Errorf("DNATed flow named %q, want the dialled VIP's name", r.DestinationName)
	}
	r = record(clientA, "", backend, 8)
	r.OrigDstIP = netip.MustParseAddr("10.96.0.51").As16()
	n.Enrich(r)
	if r.DestinationName != "backend.example.test" {
		t.Errorf("unnamed VIP: %q, want the endpoint's name", r.DestinationName)
	}
}

// TestEnrichTTL: after the answer's lifetime (TTL raised to the floor) a
// new connection is not named; a connection named before keeps its name
// until its end-of-flow record.
func TestEnrichTTL(t *testing.T) {
	n, clk := testNames(t, Config{TTLFloor: 30 * time.Second, TTLCeiling: time.Hour})
	m := answerFor(t, "api.example.test", 5, external.String())
	n.handle(event(serverIP, clientA, m, len(m)))
	open := record(clientA, "", external, 1)
	n.Enrich(open)
	if open.DestinationName == "" {
		t.Fatal("not named within the TTL")
	}
	clk.t = clk.t.Add(29 * time.Second)
	r := record(clientA, "", external, 2)
	n.Enrich(r)
	if r.DestinationName == "" {
		t.Error("not named at 29s: the 30s floor did not apply to a 5s TTL")
	}
	clk.t = clk.t.Add(2 * time.Second)
	r = record(clientA, "", external, 3)
	n.Enrich(r)
	if r.DestinationName != "" {
		t.Errorf("a new connection named %q after the answer's lifetime", r.DestinationName)
	}
	// The first connection's later records still carry its name...
	again := record(clientA, "", external, 1)
	n.Enrich(again)
	if again.DestinationName != "api.example.test" {
		t.Errorf("open connection lost its name: %q", again.DestinationName)
	}
	// ...through its last one, after which it is forgotten.
	last := record(clientA, "", external, 1)
	last.EndReason = flow.EndOfFlow
	n.Enrich(last)
	if last.DestinationName != "api.example.test" {
		t.Errorf("end-of-flow record lost its name: %q", last.DestinationName)
	}
	if _, kept := n.conns[connKey{tuple: last.Tuple, id: last.ID}]; kept {
		t.Error("connection kept after its end of flow")
	}
	reused := record(clientA, "", external, 1)
	n.Enrich(reused)
	if reused.DestinationName != "" {
		t.Errorf("a connection after end of flow named %q from the expired answer", reused.DestinationName)
	}
	// The expired answer leaves the cache at housekeeping.
	n.housekeeping()
	if n.cache.len() != 0 {
		t.Errorf("%d cache entries after expiry", n.cache.len())
	}
}

func TestEnrichKeepsExistingName(t *testing.T) {
	n, _ := testNames(t, Config{})
	m := answerFor(t, "api.example.test", 5, external.String())
	n.handle(event(serverIP, clientA, m, len(m)))
	r := record(clientA, "", external, 1)
	r.DestinationName = "set.elsewhere"
	n.Enrich(r)
	if r.DestinationName != "set.elsewhere" {
		t.Errorf("overwrote the name: %q", r.DestinationName)
	}
}

// TestEnrichStaleConnections: connections whose end-of-flow record never
// came are swept, and the table is bounded.
func TestEnrichStaleConnections(t *testing.T) {
	n, clk := testNames(t, Config{CacheEntries: 4, TTLCeiling: time.Minute})
	m := answerFor(t, "api.example.test", 30, external.String())
	n.handle(event(serverIP, clientA, m, len(m)))
	for i := 0; i < 10; i++ {
		n.Enrich(record(clientA, "", external, uint16(100+i)))
	}
	if len(n.conns) != 4 {
		t.Errorf("%d named connections kept, want the bound 4", len(n.conns))
	}
	if got := value(n.metrics.connsFull); got != 6 {
		t.Errorf("named_connections_full_total %v, want 6", got)
	}
	clk.t = clk.t.Add(minConnIdle + time.Second)
	for i := 0; i < sweepEvery; i++ {
		n.Enrich(record(clientB, "", external, 1)) // unnamed: keeps nothing
	}
	if len(n.conns) != 0 {
		t.Errorf("%d stale connections left after a sweep", len(n.conns))
	}
}

// TestHandleBadRecords: malformed ring records and payloads are counted,
// never stored.
func TestHandleBadRecords(t *testing.T) {
	n, _ := testNames(t, Config{})
	good := answerFor(t, "api.example.test", 5, external.String())
	ev := event(serverIP, clientA, good, len(good))
	n.handle(ev[:evPayload-1]) // short header
	n.handle(ev[:len(ev)-1])   // copied says more than the record holds
	n.handle(event(serverIP, clientA, []byte("garbage that is not dns"), 23))
	bare := msg(t, msgOpts{questions: []string{"api.example.test."}}, rr{name: "api.example.test.", typ: dnsmessage.TypeA, ttl: 5, data: external.String()})
	n.handle(event(serverIP, clientA, bare[:len(bare)-3], len(bare))) // cut, not whole: no complete answer
	if got := value(n.metrics.readErrors); got != 2 {
		t.Errorf("read_errors_total %v, want 2", got)
	}
	if got := value(n.metrics.parseErrors); got != 1 {
		t.Errorf("parse_errors_total %v, want 1", got)
	}
	if got := value(n.metrics.responses); got != 2 {
		t.Errorf("responses_total %v, want 2", got)
	}
	if n.cache.len() != 0 {
		t.Errorf("%d entries from bad records", n.cache.len())
	}
	// A message copied in part (longer than the program's bound) still
	// gives its complete answers.
	var rrs []rr
	for i := 1; i <= 3; i++ {
		rrs = append(rrs, rr{name: "cut.example.", typ: dnsmessage.TypeA, ttl: 60, data: netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String()})
	}
	full := msg(t, msgOpts{questions: []string{"cut.example."}, compress: true}, rrs...)
	n.handle(event(serverIP, clientA, full[:len(full)-4], len(full)))
	for i, want := range []string{"cut.example", "cut.example", ""} {
		r := record(clientA, "", netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}), uint16(i))
		n.Enrich(r)
		if r.DestinationName != want {
			t.Errorf("answer %d of a cut message: %q, want %q", i+1, r.DestinationName, want)
		}
	}
}

func TestEvictionCounted(t *testing.T) {
	n, _ := testNames(t, Config{CacheEntries: 2})
	for i := 1; i <= 3; i++ {
		m := answerFor(t, "n.example", uint32(100*i), netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String())
		n.handle(event(serverIP, clientA, m, len(m)))
	}
	if got := value(n.metrics.evictions); got != 1 {
		t.Errorf("cache_evictions_total %v, want 1", got)
	}
	if got := value(n.metrics.entries); got != 2 {
		t.Errorf("cache_entries %v, want 2", got)
	}
}

// TestConcurrentHandleEnrich runs the ring reader's and the agent loop's
// sides at once (go test -race checks them).
func TestConcurrentHandleEnrich(t *testing.T) {
	n, _ := testNames(t, Config{CacheEntries: 64, Namespaces: nsMap{clientA: "team-a"}})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 2000; i++ {
			m := answerFor(t, "c.example", 60, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String())
			n.handle(event(serverIP, clientA, m, len(m)))
			if i%100 == 0 {
				n.housekeeping()
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 2000; i++ {
			r := record(clientA, "team-a", netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), uint16(i))
			if i%2 == 0 {
				r.EndReason = flow.EndOfFlow
			}
			n.Enrich(r)
		}
	}()
	wg.Wait()
	if n.cache.len() > 64 {
		t.Errorf("%d cache entries, bound 64", n.cache.len())
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{CacheEntries: -1}, "cacheEntries"},
		{Config{TTLFloor: -time.Second}, "ttlFloor"},
		{Config{TTLFloor: time.Minute, TTLCeiling: time.Second}, "ttlCeiling"},
		{Config{MaxResponsesPerSecond: -5}, "maxResponsesPerSecond"},
		{Config{RingBytes: 5000}, "ringBytes"},
		{Config{Attach: "xdp"}, "attach"},
	} {
		_, err := New(c.cfg, nil)
		if err == nil || !contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want one naming %s", c.cfg, err, c.want)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// BenchmarkHandle is Run's user-space cost per response: decode, parse
// (a CNAME and two addresses, compressed, with EDNS), and two cache
// inserts per address (client and namespace).
func BenchmarkHandle(b *testing.B) {
	cfg := Config{Namespaces: nsMap{clientA: "team-a"}}
	if err := cfg.complete(); err != nil {
		b.Fatal(err)
	}
	m, err := newMetrics(nil)
	if err != nil {
		b.Fatal(err)
	}
	n := newNames(cfg, m)
	payload := msg(b, resp("www.shop.example."),
		rr{name: "www.shop.example.", typ: dnsmessage.TypeCNAME, ttl: 300, data: "edge.cdn.example.net."},
		rr{name: "edge.cdn.example.net.", typ: dnsmessage.TypeA, ttl: 20, data: "198.51.100.7"},
		rr{name: "edge.cdn.example.net.", typ: dnsmessage.TypeA, ttl: 20, data: "198.51.100.8"},
	)
	ev := event(serverIP, clientA, payload, len(payload))
	b.ReportAllocs()
	for b.Loop() {
		n.handle(ev)
	}
	if value(n.metrics.parseErrors) != 0 || n.cache.len() != 4 {
		b.Fatalf("parse errors %v, %d entries", value(n.metrics.parseErrors), n.cache.len())
	}
}

// BenchmarkEnrich is the agent loop's cost per record: a named one and an
// unnamed one.
func BenchmarkEnrich(b *testing.B) {
	cfg := Config{Namespaces: nsMap{clientA: "team-a"}}
	if err := cfg.complete(); err != nil {
		b.Fatal(err)
	}
	m, err := newMetrics(nil)
	if err != nil {
		b.Fatal(err)
	}
	n := newNames(cfg, m)
	p := msg(b, resp("api.example.test."), rr{name: "api.example.test.", typ: dnsmessage.TypeA, ttl: 60, data: external.String()})
	n.handle(event(serverIP, clientA, p, len(p)))
	named := record(clientA2, "team-a", external, 1)
	unnamed := record(clientB, "team-b", external, 2)
	b.ReportAllocs()
	for b.Loop() {
		r := *named
		n.Enrich(&r)
		u := *unnamed
		n.Enrich(&u)
		if r.DestinationName == "" || u.DestinationName != "" {
			b.Fatal("wrong names")
		}
	}
}
