package dnsnames

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// rr is one answer record for msg.
type rr struct {
	name  string
	typ   dnsmessage.Type
	ttl   uint32
	data  string // an address for A/AAAA, a name for CNAME, text for TXT
	class dnsmessage.Class
}

type msgOpts struct {
	rcode     dnsmessage.RCode
	query     bool // QR clear
	questions []string
	compress  bool
	authority bool // add an NS record and an OPT record, as resolvers do
}

// msg builds a DNS message the way a resolver would send it.
func msg(t testing.TB, o msgOpts, answers ...rr) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), dnsmessage.Header{
		ID: 0x1234, Response: !o.query, RecursionDesired: true, RecursionAvailable: true, RCode: o.rcode,
	})
	if o.compress {
		b.EnableCompression()
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.StartQuestions())
	for _, q := range o.questions {
		must(b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(q), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}))
	}
	must(b.StartAnswers())
	for _, a := range answers {
		class := a.class
		if class == 0 {
			class = dnsmessage.ClassINET
		}
		h := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(a.name), Class: class, TTL: a.ttl}
		switch a.typ {
		case dnsmessage.TypeA:
			must(b.AResource(h, dnsmessage.AResource{A: netip.MustParseAddr(a.data).As4()}))
		case dnsmessage.TypeAAAA:
			must(b.AAAAResource(h, dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(a.data).As16()}))
		case dnsmessage.TypeCNAME:
			must(b.CNAMEResource(h, dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(a.data)}))
		case dnsmessage.TypeTXT:
			must(b.TXTResource(h, dnsmessage.TXTResource{TXT: []string{a.data}}))
		default:
			t.Fatalf("rr type %v not supported by the test builder", a.typ)
		}
	}
	if o.authority {
		must(b.StartAuthorities())
		must(b.NSResource(dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("example.com."), Class: dnsmessage.ClassINET, TTL: 3600},
			dnsmessage.NSResource{NS: dnsmessage.MustNewName("ns1.example.com.")}))
		must(b.StartAdditionals())
		var opt dnsmessage.ResourceHeader
		must(opt.SetEDNS0(1232, dnsmessage.RCodeSuccess, false))
		must(b.OPTResource(opt, dnsmessage.OPTResource{}))
	}
	out, err := b.Finish()
	must(err)
	return out
}

func resp(q string) msgOpts { return msgOpts{questions: []string{q}, compress: true, authority: true} }

func addr16(s string) [16]byte { return netip.MustParseAddr(s).As16() }

func TestParseSimpleA(t *testing.T) {
	var ps parser
	name, ans, err := ps.parse(msg(t, resp("API.Example.test."), rr{name: "API.Example.test.", typ: dnsmessage.TypeA, ttl: 42, data: "203.0.113.10"}), true)
	if err != nil {
		t.Fatal(err)
	}
	if name != "api.example.test" {
		t.Errorf("name %q, want api.example.test (lower case, no final dot)", name)
	}
	if len(ans) != 1 || ans[0].addr != addr16("203.0.113.10") || ans[0].ttl != 42 {
		t.Errorf("answers %+v", ans)
	}
}

// TestParseCNAMEChain: the addresses at the end of the chain belong to
// the asked name; records of names outside the chain are ignored.
func TestParseCNAMEChain(t *testing.T) {
	var ps parser
	m := msg(t, resp("www.shop.example."),
		rr{name: "www.shop.example.", typ: dnsmessage.TypeCNAME, ttl: 300, data: "shop.cdn.example.net."},
		rr{name: "shop.cdn.example.net.", typ: dnsmessage.TypeCNAME, ttl: 60, data: "EDGE-7.cdn.example.net."},
		rr{name: "edge-7.cdn.example.net.", typ: dnsmessage.TypeA, ttl: 20, data: "198.51.100.7"},
		rr{name: "edge-7.cdn.example.net.", typ: dnsmessage.TypeA, ttl: 20, data: "198.51.100.8"},
		rr{name: "unrelated.example.", typ: dnsmessage.TypeA, ttl: 20, data: "192.0.2.66"},
		rr{name: "edge-7.cdn.example.net.", typ: dnsmessage.TypeTXT, ttl: 20, data: "v=spf1"},
	)
	name, ans, err := ps.parse(m, true)
	if err != nil {
		t.Fatal(err)
	}
	if name != "www.shop.example" {
		t.Errorf("name %q", name)
	}
	got := map[[16]byte]uint32{}
	for _, a := range ans {
		got[a.addr] = a.ttl
	}
	want := map[[16]byte]uint32{addr16("198.51.100.7"): 20, addr16("198.51.100.8"): 20}
	if len(got) != len(want) || got[addr16("198.51.100.7")] != 20 || got[addr16("198.51.100.8")] != 20 {
		t.Errorf("answers %v, want %v (unrelated.example's address must not be taken)", got, want)
	}
}

func TestParseAAAA(t *testing.T) {
	var ps parser
	m := msg(t, resp("v6.example."),
		rr{name: "v6.example.", typ: dnsmessage.TypeAAAA, ttl: 7, data: "2001:db8::10"},
		rr{name: "v6.example.", typ: dnsmessage.TypeA, ttl: 7, data: "192.0.2.10"},
	)
	_, ans, err := ps.parse(m, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(ans) != 2 || ans[0].addr != addr16("2001:db8::10") || ans[1].addr != addr16("192.0.2.10") {
		t.Errorf("answers %+v", ans)
	}
	// IPv4 answers are keyed v4-mapped, as flow.Tuple holds addresses.
	if netip.AddrFrom16(ans[1].addr) != netip.MustParseAddr("::ffff:192.0.2.10") {
		t.Errorf("IPv4 answer not v4-mapped: %v", netip.AddrFrom16(ans[1].addr))
	}
}

func TestParseCNAMELoop(t *testing.T) {
	var ps parser
	m := msg(t, resp("a.example."),
		rr{name: "a.example.", typ: dnsmessage.TypeCNAME, data: "b.example."},
		rr{name: "b.example.", typ: dnsmessage.TypeCNAME, data: "a.example."},
		rr{name: "b.example.", typ: dnsmessage.TypeA, ttl: 5, data: "192.0.2.1"},
	)
	name, ans, err := ps.parse(m, true)
	if err != nil || name != "a.example" || len(ans) != 1 {
		t.Errorf("got %q %+v %v", name, ans, err)
	}
}

// TestParseLongChain: a chain longer than maxChain stops there.
func TestParseLongChain(t *testing.T) {
	var ps parser
	var rrs []rr
	n := maxChain + 5
	for i := 0; i < n; i++ {
		rrs = append(rrs, rr{name: hop(i), typ: dnsmessage.TypeCNAME, data: hop(i + 1)})
	}
	rrs = append(rrs, rr{name: hop(n), typ: dnsmessage.TypeA, data: "192.0.2.9"}, rr{name: hop(3), typ: dnsmessage.TypeA, data: "192.0.2.3"})
	_, ans, err := ps.parse(msg(t, resp(hop(0)), rrs...), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(ans) != 1 || ans[0].addr != addr16("192.0.2.3") {
		t.Errorf("answers %+v: want only the one within %d hops", ans, maxChain)
	}
}

func hop(i int) string {
	return "h" + strings.Repeat("x", i%3) + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".example."
}

func TestParseRejects(t *testing.T) {
	a := rr{name: "x.example.", typ: dnsmessage.TypeA, data: "192.0.2.1"}
	cases := []struct {
		name string
		msg  []byte
		want error
	}{
		{"query", msg(t, msgOpts{query: true, questions: []string{"x.example."}}), errNotResponse},
		{"nxdomain", msg(t, msgOpts{rcode: dnsmessage.RCodeNameError, questions: []string{"x.example."}}), errNotResponse},
		{"no question", msg(t, msgOpts{}, a), errQuestionCount},
		{"two questions", msg(t, msgOpts{questions: []string{"x.example.", "y.example."}}, a), errQuestionCount},
		{"root question", msg(t, resp("."), a), errBadName},
		{"space in name", msg(t, resp("bad name.example."), a), errBadName},
		{"nul in name", msg(t, resp("bad\x00name.example."), a), errBadName},
		{"empty", nil, nil},
		{"short header", []byte{0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var ps parser
			name, ans, err := ps.parse(c.msg, true)
			if err == nil {
				t.Fatalf("accepted: %q %+v", name, ans)
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("err %v, want %v", err, c.want)
			}
		})
	}
}

// TestParsePointerLoop: a compression pointer that points at itself.
func TestParsePointerLoop(t *testing.T) {
	m := []byte{
		0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0,
		0xc0, 12, 0, 1, 0, 1, // question name: pointer to itself
		0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 192, 0, 2, 1,
	}
	var ps parser
	if _, _, err := ps.parse(m, true); err == nil {
		t.Fatal("pointer loop accepted")
	}
}

// TestParseCut: a message copied in part gives the answers that fit
// whole; the same bytes presented as whole are rejected.
func TestParseCut(t *testing.T) {
	var rrs []rr
	for i := 1; i <= 40; i++ {
		rrs = append(rrs, rr{name: "many.example.", typ: dnsmessage.TypeA, ttl: 30, data: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}).String()})
	}
	full := msg(t, resp("many.example."), rrs...)
	var ps parser
	_, all, err := ps.parse(full, true)
	if err != nil || len(all) != 40 {
		t.Fatalf("whole message: %d answers, %v", len(all), err)
	}
	// Cut in the middle of the 21st record: the question is 12+18 bytes
	// with a compressed name, each record 16 bytes compressed.
	hdrQ := len(full) - 40*16 - (11 + 2 + 4 + 11 + 11) // NS and OPT records after the answers
	cut := full[:hdrQ+20*16+7]
	_, part, err := ps.parse(cut, false)
	if err != nil {
		t.Fatalf("partial message: %v", err)
	}
	if len(part) != 20 {
		t.Errorf("partial message gave %d answers, want the 20 complete ones", len(part))
	}
	for i, a := range part {
		if a.addr != addr16(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}).String()) {
			t.Errorf("answer %d: %v", i, netip.AddrFrom16(a.addr))
		}
	}
	if _, _, err := ps.parse(cut, true); err == nil {
		t.Error("a cut message presented as whole was accepted")
	}
}

// TestParseMaxAnswers: a response cannot store more than maxAnswers.
func TestParseMaxAnswers(t *testing.T) {
	var rrs []rr
	for i := 0; i < maxAnswers+10; i++ {
		rrs = append(rrs, rr{name: "m.example.", typ: dnsmessage.TypeA, data: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).String()})
	}
	var ps parser
	_, ans, err := ps.parse(msg(t, msgOpts{questions: []string{"m.example."}, compress: true}, rrs...), true)
	if err != nil || len(ans) != maxAnswers {
		t.Errorf("%d answers, %v; want %d", len(ans), err, maxAnswers)
	}
}

// TestParseClassAndCase: non-IN records are skipped; owner names match
// case-insensitively.
func TestParseClassAndCase(t *testing.T) {
	var ps parser
	m := msg(t, resp("Mixed.Example."),
		rr{name: "mixed.example.", typ: dnsmessage.TypeA, data: "192.0.2.1", class: dnsmessage.ClassCHAOS},
		rr{name: "MIXED.example.", typ: dnsmessage.TypeA, data: "192.0.2.2"},
	)
	_, ans, err := ps.parse(m, true)
	if err != nil || len(ans) != 1 || ans[0].addr != addr16("192.0.2.2") {
		t.Errorf("got %+v %v", ans, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(msg(f, resp("api.example.test."), rr{name: "api.example.test.", typ: dnsmessage.TypeA, ttl: 5, data: "203.0.113.10"}), true)
	f.Add(msg(f, resp("www.x."), rr{name: "www.x.", typ: dnsmessage.TypeCNAME, data: "y."}, rr{name: "y.", typ: dnsmessage.TypeAAAA, data: "2001:db8::1"}), false)
	f.Add([]byte{0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}, true)
	f.Fuzz(func(t *testing.T, m []byte, whole bool) {
		var ps parser
		name, ans, err := ps.parse(m, whole)
		if err != nil {
			return
		}
		if name == "" || len(name) > maxNameLen || strings.HasSuffix(name, ".") || strings.HasPrefix(name, ".") || strings.Contains(name, "..") {
			t.Fatalf("bad name %q", name)
		}
		for _, c := range []byte(name) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
				t.Fatalf("name %q holds %q", name, c)
			}
		}
		if len(ans) > maxAnswers {
			t.Fatalf("%d answers", len(ans))
		}
		// Parsing again from the same state gives the same result.
		var ps2 parser
		name2, ans2, err2 := ps2.parse(m, whole)
		if err2 != nil || name2 != name || len(ans2) != len(ans) {
			t.Fatalf("not deterministic: %q %d vs %q %d %v", name, len(ans), name2, len(ans2), err2)
		}
	})
}
