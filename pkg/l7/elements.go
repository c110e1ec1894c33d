package l7

import (
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixie"
)

// EnterprisePlaceholder is the Private Enterprise Number the DNS and TLS
// IEs are exported under (RFC 5612's documentation number, a PLACEHOLDER
// private registry); ipfixie.EnterprisePlaceholder explains the choice.
const EnterprisePlaceholder = ipfixie.EnterprisePlaceholder

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
// template. They are derived from ipfixie.L7Details, the elements' only
// definition, so what `flowlens eve check --json` shows is what the
// exporter sends.
func Elements() []Element {
	ds := ipfixie.L7Details()
	out := make([]Element, 0, len(ds))
	for _, d := range ds {
		out = append(out, Element{
			Name: d.Name, Enterprise: ipfixie.EnterprisePlaceholder, ID: d.ID,
			// ipfixie defines every detail as a variable-length string.
			Type:  "string",
			Value: func(l *flow.L7) string { return *d.Field(l) },
		})
	}
	return out
}
