package ipfixie

import (
	"encoding/binary"
	"slices"

	"github.com/flowlens/flowlens/pkg/flow"
)

// HealthElement is one IE of a flow's network health (flow.Health) or its
// destination's DNS name (flow.Record.DestinationName). The table behind
// HealthElements is their only definition, shared by the exporter's
// templates and the collector's decoding; docs/ipfix-elements.md lists it.
type HealthElement struct {
	Name       string
	Enterprise uint32
	// ID and Type are those of IANA's registry for the two IANA elements
	// (droppedPacketDeltaCount and its RFC 5103 reverse), the project's
	// own for the placeholder ones (EnterprisePlaceholder).
	ID   uint16
	Type DataType
	// U32 is the flow.Record member an unsigned element carries; Str the
	// member a string element carries. Exactly one is set.
	U32 func(*flow.Record) *uint32
	Str func(*flow.Record) *string
}

// healthElements are in template order. The placeholder ids continue after
// the workload elements (10 to 13). Names and ids are the wire contract of
// docs/ipfix-elements.md: never renumber, only append.
//
// Only the drops have IANA elements: droppedPacketDeltaCount (133) is
// "packets of this Flow ... dropped by packet treatment" since the
// previous report, which is exactly FwdDrops, and RFC 5103 gives its
// reverse. IANA's registry has no element for an RTT, retransmissions,
// the time to establish, zero-window events, a drop reason or a DNS
// name; tcpRstTotalCount (220) counts RST-flagged packets since the
// metering process started (a total, and of packets seen, not of resets
// a socket sent), so the resets use placeholder elements rather than a
// bent definition; forwardingStatus (89) is the verdict on the whole flow,
// not the reason a few of its packets were lost.
var healthElements = [...]HealthElement{
	{Name: "droppedPacketDeltaCount", Enterprise: EnterpriseIANA, ID: 133, Type: Unsigned64,
		U32: func(r *flow.Record) *uint32 { return &r.Health.FwdDrops }},
	{Name: "reverseDroppedPacketDeltaCount", Enterprise: EnterpriseReverse, ID: 133, Type: Unsigned64,
		U32: func(r *flow.Record) *uint32 { return &r.Health.RevDrops }},
	phU32("tcpRttMinMicroseconds", 14, func(r *flow.Record) *uint32 { return &r.Health.RTTMinMicros }),
	phU32("tcpRttAvgMicroseconds", 15, func(r *flow.Record) *uint32 { return &r.Health.RTTAvgMicros }),
	phU32("tcpRttMaxMicroseconds", 16, func(r *flow.Record) *uint32 { return &r.Health.RTTMaxMicros }),
	phU32("tcpRttSampleCount", 17, func(r *flow.Record) *uint32 { return &r.Health.RTTSamples }),
	phU32("tcpRetransmitDeltaCount", 18, func(r *flow.Record) *uint32 { return &r.Health.FwdRetransmits }),
	phU32("reverseTcpRetransmitDeltaCount", 19, func(r *flow.Record) *uint32 { return &r.Health.RevRetransmits }),
	phU32("tcpResetDeltaCount", 20, func(r *flow.Record) *uint32 { return &r.Health.FwdResets }),
	phU32("reverseTcpResetDeltaCount", 21, func(r *flow.Record) *uint32 { return &r.Health.RevResets }),
	phU32("tcpEstablishMicroseconds", 22, func(r *flow.Record) *uint32 { return &r.Health.EstablishMicros }),
	phU32("tcpZeroWindowDeltaCount", 23, func(r *flow.Record) *uint32 { return &r.Health.ZeroWindows }),
	{Name: "packetDropReason", Enterprise: EnterprisePlaceholder, ID: 24, Type: String,
		Str: func(r *flow.Record) *string { return &r.Health.DropReason }},
	{Name: "destinationDnsName", Enterprise: EnterprisePlaceholder, ID: 25, Type: String,
		Str: func(r *flow.Record) *string { return &r.DestinationName }},
}

func phU32(name string, id uint16, f func(*flow.Record) *uint32) HealthElement {
	return HealthElement{Name: name, Enterprise: EnterprisePlaceholder, ID: id, Type: Unsigned32, U32: f}
}

// HealthElements returns the health and destination-name IEs in template
// order (a copy).
func HealthElements() []HealthElement { return slices.Clone(healthElements[:]) }

// healthIEs are the flow-table rows of healthElements. They are optional
// (TemplateOptions.Health): the placeholder ones are in no registry, so a
// go-ipfix collector in Strict mode would reject templates holding them.
// The two IANA ones are resolved from the registry like FlowIEs (an error
// at start-up if it ever lacked them); the others are defined here.
var healthIEs = func() []FlowIE {
	ies := make([]FlowIE, 0, len(healthElements))
	for _, h := range healthElements {
		var fie FlowIE
		switch {
		case h.Str != nil:
			fie = definedStrIE(h.Name, h.Enterprise, h.ID, h.Str)
		case h.Type == Unsigned64:
			// Sent at the registry's full length: reduced-size encoding
			// (RFC 7011 section 6.2) is not something every collector
			// decodes.
			get := h.U32
			fie = FlowIE{Name: h.Name, Enterprise: h.Enterprise,
				put: func(b []byte, r *flow.Record) []byte { return binary.BigEndian.AppendUint64(b, uint64(*get(r))) },
				set: func(v *Value, r *flow.Record, _ *fixup) { *get(r) = clampU32(v.Uint) }}
		default:
			get := h.U32
			fie = FlowIE{Name: h.Name, Enterprise: h.Enterprise,
				put: func(b []byte, r *flow.Record) []byte { return binary.BigEndian.AppendUint32(b, *get(r)) },
				set: func(v *Value, r *flow.Record, _ *fixup) { *get(r) = clampU32(v.Uint) }}
		}
		if h.Enterprise == EnterprisePlaceholder {
			fie.Define = &Element{Name: h.Name, Enterprise: h.Enterprise, ID: h.ID, Type: h.Type, Length: elementLength(h.Type)}
		}
		ies = append(ies, fie)
	}
	return ies
}()

func elementLength(t DataType) uint16 {
	switch t {
	case Unsigned32:
		return 4
	case Unsigned64:
		return 8
	}
	return VariableLength
}

// clampU32 keeps a count another exporter sent as a full unsigned64 from
// wrapping into a small one.
func clampU32(v uint64) uint32 {
	if v > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(v)
}
