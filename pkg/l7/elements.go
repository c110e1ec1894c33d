package l7

import "github.com/flowlens/flowlens/pkg/flow"

// EnterprisePlaceholder is the Private Enterprise Number the DNS and TLS
// IEs are exported under. 32473 is the number IANA reserves for
// documentation and examples (RFC 5612): it is a PLACEHOLDER private
// registry, never assigned to anyone, so it cannot collide with a real
// vendor's elements. A collector that does not know it skips these fields
// (enterprise-specific IEs carry their length) and still reads the rest of
// the record. docs/ipfix-elements.md is the registry's definition.
const EnterprisePlaceholder uint32 = 32473

// Element is one extra information element for L7 details. IANA's
// registry has HTTP elements (457 httpStatusCode, 459..462, 468) but none
// for DNS or TLS; HTTP stays in Antrea's httpVals (56506/156) because a
// record carries several transactions.
type Element struct {
	Name       string
	Enterprise uint32
	ID         uint16
	// Type is the IPFIX abstract data type; all are variable-length
	// strings, as Suricata gives names ("NXDOMAIN", "TLS 1.3") rather
	// than codes for several of them.
	Type  string
	Value func(l *flow.L7) string
}

// Elements lists the extra IEs in the order they are appended to the flow
// template.
func Elements() []Element {
	e := func(name string, id uint16, v func(l *flow.L7) string) Element {
		return Element{Name: name, Enterprise: EnterprisePlaceholder, ID: id, Type: "string", Value: v}
	}
	return []Element{
		e("dnsQueryName", 1, func(l *flow.L7) string { return l.DNSQueryName }),
		e("dnsQueryType", 2, func(l *flow.L7) string { return l.DNSQueryType }),
		e("dnsResponseCode", 3, func(l *flow.L7) string { return l.DNSResponseCode }),
		e("dnsAnswers", 4, func(l *flow.L7) string { return l.DNSAnswers }),
		e("tlsServerName", 5, func(l *flow.L7) string { return l.TLSServerName }),
		e("tlsVersion", 6, func(l *flow.L7) string { return l.TLSVersion }),
		e("tlsJA3", 7, func(l *flow.L7) string { return l.TLSJA3 }),
		e("tlsJA3S", 8, func(l *flow.L7) string { return l.TLSJA3S }),
		e("tlsJA4", 9, func(l *flow.L7) string { return l.TLSJA4 }),
	}
}
