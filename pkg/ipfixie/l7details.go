package ipfixie

import (
	"slices"

	"github.com/flowlens/flowlens/pkg/flow"
)

// EnterprisePlaceholder is the Private Enterprise Number the DNS and TLS
// detail IEs are exported under. 32473 is the number IANA reserves for
// documentation and examples (RFC 5612): a PLACEHOLDER private registry,
// never assigned to anyone, so these elements cannot collide with a real
// vendor's. docs/ipfix-elements.md documents them; a project that registers
// its own PEN should move them there.
const EnterprisePlaceholder uint32 = 32473

// L7Detail is one DNS or TLS detail of flow.L7 exported as an IE of its own
// (enterprise EnterprisePlaceholder, variable-length string).
//
// The table behind L7Details is the only definition of these elements: the
// exporter's templates, the collector's decoding by name and pkg/l7's
// Elements() are all derived from it.
type L7Detail struct {
	Name string
	ID   uint16
	// Field is the flow.L7 member the IE carries.
	Field func(*flow.L7) *string
}

// l7Details is in template order. Names and ids are the wire contract of
// docs/ipfix-elements.md: never renumber, only append.
var l7Details = [...]L7Detail{
	{"dnsQueryName", 1, func(l *flow.L7) *string { return &l.DNSQueryName }},
	{"dnsQueryType", 2, func(l *flow.L7) *string { return &l.DNSQueryType }},
	{"dnsResponseCode", 3, func(l *flow.L7) *string { return &l.DNSResponseCode }},
	{"dnsAnswers", 4, func(l *flow.L7) *string { return &l.DNSAnswers }},
	{"tlsServerName", 5, func(l *flow.L7) *string { return &l.TLSServerName }},
	{"tlsVersion", 6, func(l *flow.L7) *string { return &l.TLSVersion }},
	{"tlsJA3", 7, func(l *flow.L7) *string { return &l.TLSJA3 }},
	{"tlsJA3S", 8, func(l *flow.L7) *string { return &l.TLSJA3S }},
	{"tlsJA4", 9, func(l *flow.L7) *string { return &l.TLSJA4 }},
}

// L7Details returns the DNS/TLS detail elements in template order. The
// slice is a copy: callers cannot change the table.
func L7Details() []L7Detail { return slices.Clone(l7Details[:]) }

// l7DetailIEs are the flow-table rows of l7Details. They are kept apart from
// FlowIEs because they are optional (TemplateOptions.L7Details): go-ipfix's
// collector, in its default Strict mode, rejects a whole template that holds
// one IE its registry lacks, and these are in no registry.
var l7DetailIEs = func() []FlowIE {
	ies := make([]FlowIE, 0, len(l7Details))
	for _, d := range l7Details {
		ies = append(ies, definedStrIE(d.Name, EnterprisePlaceholder, d.ID,
			func(r *flow.Record) *string { return d.Field(&r.L7) }))
	}
	return ies
}()
