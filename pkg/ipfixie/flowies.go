package ipfixie

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"slices"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Family restricts an IE to the IPv4 or the IPv6 template.
type Family uint8

// Families.
const (
	BothFamilies Family = iota
	IPv4Only
	IPv6Only
)

// FlowIE is one row of the table flow records are exported with: which IE,
// in which template, how it is filled from a flow.Record and how a received
// value goes back into one.
type FlowIE struct {
	Name       string
	Enterprise uint32
	Family     Family
	// Define gives ID, type and length for an IE outside go-ipfix's
	// registry (an enterprise-specific one such as the DNS/TLS details of
	// docs/ipfix-elements.md); nil looks Name up in the registry. Defined
	// IEs are also known to Lookup, so collectors decode them by name.
	Define *Element
	// put appends the wire encoding (exactly the element's length, or a
	// variable-length field) of the value taken from r.
	put func(b []byte, r *flow.Record) []byte
	// set stores a received value into r; values that need other fields
	// first (Service IPs) go to fx and are applied at the end.
	set func(v *Value, r *flow.Record, fx *fixup)
}

// Value is a decoded field value; which member is meaningful follows the
// element's DataType: Uint for unsigned, boolean and dateTime types, Int for
// signed, Float for floats, Str for string, Addr for addresses, Bytes for
// octet arrays, MAC addresses, lists and unknown IEs.
type Value struct {
	Uint  uint64
	Int   int64
	Float float64
	Str   string
	Addr  netip.Addr
	Bytes []byte
}

// fixup holds values whose meaning depends on others (see FlowBuilder).
type fixup struct {
	clusterIP netip.Addr
	serviceIP netip.Addr
	svcPort   uint16
	endSecs   uint64
	haveEnd   bool
	// Millisecond times, when the exporter sent them, replace the seconds
	// whichever order the template lists them in.
	startMillis, endMillis         uint64
	haveStartMillis, haveEndMillis bool
}

// FlowIEs is the IE set of flow records, in template order. It follows what
// Antrea's Flow Aggregator expects from an agent; an IE outside its registry
// does not belong here but in an optional table such as l7DetailIEs (see
// TemplateOptions).
var FlowIEs = []FlowIE{
	secondsIE("flowStartSeconds", EnterpriseIANA, func(r *flow.Record) int64 { return r.StartNanos },
		func(r *flow.Record, s uint64) { r.StartNanos = int64(s) * 1e9 }),
	{Name: "flowEndSeconds", Enterprise: EnterpriseIANA,
		put: func(b []byte, r *flow.Record) []byte { return binary.BigEndian.AppendUint32(b, toSeconds(endNanos(r))) },
		set: func(v *Value, _ *flow.Record, fx *fixup) { fx.endSecs, fx.haveEnd = v.Uint, true }},
	// The seconds above are what Antrea's Flow Aggregator reads; the
	// milliseconds give sub-second connections distinct start and end
	// times, and nfdump before 1.7.6 reads only these (it shows no time at
	// all from the seconds).
	millisIE("flowStartMilliseconds", func(r *flow.Record) int64 { return r.StartNanos },
		func(fx *fixup, ms uint64) { fx.startMillis, fx.haveStartMillis = ms, true }),
	millisIE("flowEndMilliseconds", endNanos,
		func(fx *fixup, ms uint64) { fx.endMillis, fx.haveEndMillis = ms, true }),
	u8IE("flowEndReason", EnterpriseIANA, func(r *flow.Record) uint8 { return uint8(r.EndReason) },
		func(r *flow.Record, v uint8) { r.EndReason = flow.EndReason(v) }),
	addrIE("sourceIPv4Address", EnterpriseIANA, IPv4Only, func(r *flow.Record) *[16]byte { return &r.Tuple.SrcIP }),
	addrIE("destinationIPv4Address", EnterpriseIANA, IPv4Only, func(r *flow.Record) *[16]byte { return &r.Tuple.DstIP }),
	addrIE("sourceIPv6Address", EnterpriseIANA, IPv6Only, func(r *flow.Record) *[16]byte { return &r.Tuple.SrcIP }),
	addrIE("destinationIPv6Address", EnterpriseIANA, IPv6Only, func(r *flow.Record) *[16]byte { return &r.Tuple.DstIP }),
	u16IE("sourceTransportPort", EnterpriseIANA, func(r *flow.Record) uint16 { return r.Tuple.SrcPort },
		func(r *flow.Record, v uint16) { r.Tuple.SrcPort = v }),
	u16IE("destinationTransportPort", EnterpriseIANA, func(r *flow.Record) uint16 { return r.Tuple.DstPort },
		func(r *flow.Record, v uint16) { r.Tuple.DstPort = v }),
	u8IE("protocolIdentifier", EnterpriseIANA, func(r *flow.Record) uint8 { return r.Tuple.Proto },
		func(r *flow.Record, v uint8) { r.Tuple.Proto = v }),
	u64IE("packetTotalCount", EnterpriseIANA, func(r *flow.Record) *uint64 { return &r.Fwd.Packets }),
	u64IE("octetTotalCount", EnterpriseIANA, func(r *flow.Record) *uint64 { return &r.Fwd.Bytes }),
	u64IE("packetDeltaCount", EnterpriseIANA, func(r *flow.Record) *uint64 { return &r.FwdDelta.Packets }),
	u64IE("octetDeltaCount", EnterpriseIANA, func(r *flow.Record) *uint64 { return &r.FwdDelta.Bytes }),
	u64IE("reversePacketTotalCount", EnterpriseReverse, func(r *flow.Record) *uint64 { return &r.Rev.Packets }),
	u64IE("reverseOctetTotalCount", EnterpriseReverse, func(r *flow.Record) *uint64 { return &r.Rev.Bytes }),
	u64IE("reversePacketDeltaCount", EnterpriseReverse, func(r *flow.Record) *uint64 { return &r.RevDelta.Packets }),
	u64IE("reverseOctetDeltaCount", EnterpriseReverse, func(r *flow.Record) *uint64 { return &r.RevDelta.Bytes }),
	strIE("sourcePodName", func(r *flow.Record) *string { return &r.Source.PodName }),
	strIE("sourcePodNamespace", func(r *flow.Record) *string { return &r.Source.PodNamespace }),
	strIE("sourceNodeName", func(r *flow.Record) *string { return &r.Source.NodeName }),
	strIE("destinationPodName", func(r *flow.Record) *string { return &r.Destination.PodName }),
	strIE("destinationPodNamespace", func(r *flow.Record) *string { return &r.Destination.PodNamespace }),
	strIE("destinationNodeName", func(r *flow.Record) *string { return &r.Destination.NodeName }),
	svcAddrIE("destinationClusterIPv4", IPv4Only, clusterIP, func(fx *fixup, a netip.Addr) { fx.clusterIP = a }),
	svcAddrIE("destinationClusterIPv6", IPv6Only, clusterIP, func(fx *fixup, a netip.Addr) { fx.clusterIP = a }),
	{Name: "destinationServicePort", Enterprise: EnterpriseAntrea,
		put: func(b []byte, r *flow.Record) []byte {
			if !r.IsDNATed() {
				return append(b, 0, 0)
			}
			return binary.BigEndian.AppendUint16(b, r.OrigDstPort)
		},
		set: func(v *Value, _ *flow.Record, fx *fixup) { fx.svcPort = uint16(v.Uint) }},
	strIE("destinationServicePortName", func(r *flow.Record) *string { return &r.ServicePortName }),
	svcAddrIE("destinationServiceIPv4", IPv4Only, serviceIP, func(fx *fixup, a netip.Addr) { fx.serviceIP = a }),
	svcAddrIE("destinationServiceIPv6", IPv6Only, serviceIP, func(fx *fixup, a netip.Addr) { fx.serviceIP = a }),
	{Name: "tcpState", Enterprise: EnterpriseAntrea,
		put: func(b []byte, r *flow.Record) []byte { return appendVarLen(b, r.TCPState.String()) },
		set: func(v *Value, r *flow.Record, _ *fixup) { r.TCPState = parseTCPState(v.Str) }},
	u8IE("flowType", EnterpriseAntrea, func(r *flow.Record) uint8 { return uint8(r.FlowType) },
		func(r *flow.Record, v uint8) { r.FlowType = flow.FlowType(v) }),
	strIE("appProtocolName", func(r *flow.Record) *string { return &r.L7.AppProtocolName }),
	strIE("httpVals", func(r *flow.Record) *string { return &r.L7.HTTPVals }),
	strIE("sourcePodLabels", func(r *flow.Record) *string { return &r.Source.Labels }),
	strIE("destinationPodLabels", func(r *flow.Record) *string { return &r.Destination.Labels }),
	// Where the node's source NAT sent the connection (NodePort and
	// LoadBalancer traffic from outside, masqueraded to the node): the
	// backend's node sees this address, so it is what joins the two
	// nodes' records. Unspecified and 0 when not SNATed, as Antrea sends.
	snatAddrIE("proxySnatIPv4", IPv4Only),
	snatAddrIE("proxySnatIPv6", IPv6Only),
	u16IE("proxySnatPort", EnterpriseAntrea, func(r *flow.Record) uint16 { return r.ProxySnatPort },
		func(r *flow.Record, v uint16) { r.ProxySnatPort = v }),
	// Antrea's Flow Aggregator adds clusterId itself; an agent that knows
	// its cluster sends it so one aggregator can serve several clusters.
	strIE("clusterId", func(r *flow.Record) *string { return &r.ClusterID }),
}

// snatAddrIE is proxySnatIPv4/IPv6: the SNAT address, or the unspecified
// address when the connection was not SNATed. Received, the unspecified
// address means none (flow.Conn.IsSNATed).
func snatAddrIE(name string, fam Family) FlowIE {
	return FlowIE{Name: name, Enterprise: EnterpriseAntrea, Family: fam,
		put: func(b []byte, r *flow.Record) []byte { return appendAddr(b, fam, &r.ProxySnatIP) },
		set: func(v *Value, r *flow.Record, _ *fixup) {
			r.ProxySnatIP = [16]byte{}
			if v.Addr.IsValid() && !v.Addr.IsUnspecified() {
				r.ProxySnatIP = v.Addr.As16()
			}
		}}
}

func endNanos(r *flow.Record) int64 {
	if r.StopNanos != 0 {
		return r.StopNanos
	}
	return r.ExportNanos
}

// toSeconds clamps to the dateTimeSeconds range rather than wrapping.
func toSeconds(nanos int64) uint32 {
	s := nanos / 1e9
	if s < 0 {
		return 0
	}
	if s > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(s)
}

// toMillis converts to dateTimeMilliseconds; times before the epoch (never
// valid for a connection) clamp to 0 rather than wrap.
func toMillis(nanos int64) uint64 {
	if nanos < 0 {
		return 0
	}
	return uint64(nanos / 1e6)
}

// clusterIP is the Service VIP when the destination dialled was a ClusterIP.
func clusterIP(r *flow.Record) ([16]byte, bool) { return r.OrigDstIP, r.ClusterIP }

// serviceIP is the VIP of any DNATed connection (ClusterIP, NodePort, LB).
func serviceIP(r *flow.Record) ([16]byte, bool) { return r.OrigDstIP, r.IsDNATed() }

func u8IE(name string, ent uint32, get func(*flow.Record) uint8, set func(*flow.Record, uint8)) FlowIE {
	return FlowIE{Name: name, Enterprise: ent,
		put: func(b []byte, r *flow.Record) []byte { return append(b, get(r)) },
		set: func(v *Value, r *flow.Record, _ *fixup) { set(r, uint8(v.Uint)) }}
}

func u16IE(name string, ent uint32, get func(*flow.Record) uint16, set func(*flow.Record, uint16)) FlowIE {
	return FlowIE{Name: name, Enterprise: ent,
		put: func(b []byte, r *flow.Record) []byte { return binary.BigEndian.AppendUint16(b, get(r)) },
		set: func(v *Value, r *flow.Record, _ *fixup) { set(r, uint16(v.Uint)) }}
}

func u64IE(name string, ent uint32, field func(*flow.Record) *uint64) FlowIE {
	return FlowIE{Name: name, Enterprise: ent,
		put: func(b []byte, r *flow.Record) []byte { return binary.BigEndian.AppendUint64(b, *field(r)) },
		set: func(v *Value, r *flow.Record, _ *fixup) { *field(r) = v.Uint }}
}

func secondsIE(name string, ent uint32, get func(*flow.Record) int64, set func(*flow.Record, uint64)) FlowIE {
	return FlowIE{Name: name, Enterprise: ent,
		put: func(b []byte, r *flow.Record) []byte { return binary.BigEndian.AppendUint32(b, toSeconds(get(r))) },
		set: func(v *Value, r *flow.Record, _ *fixup) { set(r, v.Uint) }}
}

func millisIE(name string, get func(*flow.Record) int64, set func(*fixup, uint64)) FlowIE {
	return FlowIE{Name: name, Enterprise: EnterpriseIANA,
		put: func(b []byte, r *flow.Record) []byte { return binary.BigEndian.AppendUint64(b, toMillis(get(r))) },
		set: func(v *Value, _ *flow.Record, fx *fixup) { set(fx, v.Uint) }}
}

// definedStrIE is a variable-length string IE outside the registry.
func definedStrIE(name string, ent uint32, id uint16, field func(*flow.Record) *string) FlowIE {
	fie := strIE(name, field)
	fie.Enterprise = ent
	fie.Define = &Element{Name: name, Enterprise: ent, ID: id, Type: String, Length: VariableLength}
	return fie
}

func strIE(name string, field func(*flow.Record) *string) FlowIE {
	return FlowIE{Name: name, Enterprise: EnterpriseAntrea,
		put: func(b []byte, r *flow.Record) []byte { return appendVarLen(b, *field(r)) },
		set: func(v *Value, r *flow.Record, _ *fixup) { *field(r) = v.Str }}
}

func addrIE(name string, ent uint32, fam Family, field func(*flow.Record) *[16]byte) FlowIE {
	return FlowIE{Name: name, Enterprise: ent, Family: fam,
		put: func(b []byte, r *flow.Record) []byte { return appendAddr(b, fam, field(r)) },
		set: func(v *Value, r *flow.Record, _ *fixup) { *field(r) = v.Addr.As16() }}
}

// svcAddrIE exports a Service address when get reports it applies, else the
// unspecified address, as Antrea does.
func svcAddrIE(name string, fam Family, get func(*flow.Record) ([16]byte, bool), set func(*fixup, netip.Addr)) FlowIE {
	return FlowIE{Name: name, Enterprise: EnterpriseAntrea, Family: fam,
		put: func(b []byte, r *flow.Record) []byte {
			a, ok := get(r)
			if !ok {
				a = [16]byte{}
			}
			return appendAddr(b, fam, &a)
		},
		set: func(v *Value, _ *flow.Record, fx *fixup) { set(fx, v.Addr) }}
}

func appendAddr(b []byte, fam Family, a *[16]byte) []byte {
	if fam == IPv4Only {
		return append(b, a[12:16]...)
	}
	return append(b, a[:]...)
}

// appendVarLen writes a variable-length field (RFC 7011 section 7). Values
// longer than the 16-bit length allows are cut: the encoder checks sizes
// against the message limit anyway, and a cut string beats a broken stream.
func appendVarLen(b []byte, s string) []byte {
	if len(s) > 65535 {
		s = s[:65535]
	}
	if len(s) < 255 {
		b = append(b, byte(len(s)))
	} else {
		b = append(b, 255, byte(len(s)>>8), byte(len(s)))
	}
	return append(b, s...)
}

// millisToNanos clamps a value no exporter of real times sends (past year
// 2262) instead of letting it wrap negative.
func millisToNanos(ms uint64) int64 {
	const maxMillis = math.MaxInt64 / 1_000_000
	if ms > maxMillis {
		ms = maxMillis
	}
	return int64(ms) * 1e6
}

func parseTCPState(s string) flow.TCPState {
	for st := flow.TCPStateNone; st <= flow.TCPStateSynSent2; st++ {
		if st.String() == s {
			return st
		}
	}
	return flow.TCPStateNone
}

// Template is a resolved flow-record template for one address family.
type Template struct {
	ID       uint16
	IPv6     bool
	Elements []Element
	ies      []*FlowIE
}

// FlowTemplates resolves FlowIEs against the registry into the IPv4 and the
// IPv6 template: the Antrea-compatible set, without the L7 details. An IE
// missing from the registry is an error naming it.
func FlowTemplates(idV4, idV6 uint16) (v4, v6 *Template, err error) {
	return NewFlowTemplates(TemplateOptions{IDv4: idV4, IDv6: idV6})
}

// TemplateOptions selects the flow templates' ids and optional IEs.
type TemplateOptions struct {
	IDv4, IDv6 uint16
	// L7Details appends flowlens's own IEs (enterprise
	// EnterprisePlaceholder) to both templates: the DNS/TLS details
	// (L7Details), then the workload of each end (WorkloadElements). Off,
	// the templates are exactly FlowIEs, which a go-ipfix collector in
	// Strict mode (that library's default) accepts from go-ipfix v0.17.0;
	// on, such a collector rejects the templates and every record sent
	// with them. One switch for all of them: a single placeholder IE
	// already costs those collectors everything, so splitting it would
	// protect no one.
	L7Details bool
	// Health appends the health and destination-name IEs (HealthElements,
	// after the L7 ones when both are on): droppedPacketDeltaCount and its
	// reverse from IANA's registry, the rest enterprise
	// EnterprisePlaceholder, so the same Strict-collector caveat applies.
	Health bool
}

// NewFlowTemplates resolves the IEs o selects into the IPv4 and the IPv6
// template.
func NewFlowTemplates(o TemplateOptions) (v4, v6 *Template, err error) {
	ies := FlowIEs
	if o.L7Details {
		ies = slices.Concat(ies, l7DetailIEs, workloadIEs)
	}
	if o.Health {
		ies = slices.Concat(ies, healthIEs)
	}
	return flowTemplates(ies, o.IDv4, o.IDv6)
}

func flowTemplates(ies []FlowIE, idV4, idV6 uint16) (v4, v6 *Template, err error) {
	if idV4 < 256 || idV6 < 256 || idV4 == idV6 {
		return nil, nil, fmt.Errorf("template ids %d/%d: must be distinct and >= 256", idV4, idV6)
	}
	v4 = &Template{ID: idV4}
	v6 = &Template{ID: idV6, IPv6: true}
	for i := range ies {
		fie := &ies[i]
		e, err := fie.element()
		if err != nil {
			return nil, nil, err
		}
		if fie.Family != IPv6Only {
			v4.Elements = append(v4.Elements, e)
			v4.ies = append(v4.ies, fie)
		}
		if fie.Family != IPv4Only {
			v6.Elements = append(v6.Elements, e)
			v6.ies = append(v6.ies, fie)
		}
	}
	return v4, v6, nil
}

func (fie *FlowIE) element() (Element, error) {
	if d := fie.Define; d != nil {
		if d.Name != fie.Name || d.Enterprise != fie.Enterprise || d.Length == 0 {
			return Element{}, fmt.Errorf("flow IE %q (enterprise %d): Define %+v does not match it", fie.Name, fie.Enterprise, *d)
		}
		return *d, nil
	}
	e, ok := LookupName(fie.Name, fie.Enterprise)
	if !ok {
		return Element{}, fmt.Errorf("flow IE %q (enterprise %d): not in the IE registry; set Define", fie.Name, fie.Enterprise)
	}
	return e, nil
}

// AppendTemplateRecord appends the template record (without set header).
func (t *Template) AppendTemplateRecord(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, t.ID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(t.Elements)))
	for _, e := range t.Elements {
		if e.Enterprise == EnterpriseIANA {
			b = binary.BigEndian.AppendUint16(b, e.ID)
			b = binary.BigEndian.AppendUint16(b, e.Length)
			continue
		}
		b = binary.BigEndian.AppendUint16(b, e.ID|0x8000)
		b = binary.BigEndian.AppendUint16(b, e.Length)
		b = binary.BigEndian.AppendUint32(b, e.Enterprise)
	}
	return b
}

// AppendData appends r encoded as one data record of t.
func (t *Template) AppendData(b []byte, r *flow.Record) []byte {
	for _, fie := range t.ies {
		b = fie.put(b, r)
	}
	return b
}

// flowIEByName holds the optional IEs too: a collector decodes whatever an
// exporter chose to send.
var flowIEByName = func() map[nameKey]*FlowIE {
	m := make(map[nameKey]*FlowIE, len(FlowIEs)+len(l7DetailIEs)+len(workloadIEs)+len(healthIEs))
	for _, ies := range [][]FlowIE{FlowIEs, l7DetailIEs, workloadIEs, healthIEs} {
		for i := range ies {
			m[nameKey{ies[i].Enterprise, ies[i].Name}] = &ies[i]
		}
	}
	return m
}()

// FlowBuilder turns received fields back into a flow.Record. It is the
// inverse of the encoding, with what the wire loses: times are whole
// milliseconds (whole seconds from an exporter that sends only
// flowStartSeconds/flowEndSeconds), the end time becomes ExportNanos (and
// StopNanos when the flow ended), and OrigDst comes from the Service IEs
// when they are set.
type FlowBuilder struct {
	r  flow.Record
	fx fixup
}

// Reset prepares the builder for a new record.
func (fb *FlowBuilder) Reset() { *fb = FlowBuilder{} }

// Set applies one field; it reports false for IEs that have no place in
// flow.Record.
func (fb *FlowBuilder) Set(e *Element, v *Value) bool {
	fie, ok := flowIEByName[nameKey{e.Enterprise, e.Name}]
	if !ok {
		return false
	}
	fie.set(v, &fb.r, &fb.fx)
	return true
}

// Record returns the record built from the fields set so far.
func (fb *FlowBuilder) Record() flow.Record {
	r := fb.r
	if fb.fx.haveStartMillis {
		r.StartNanos = millisToNanos(fb.fx.startMillis)
	}
	if fb.fx.haveEnd || fb.fx.haveEndMillis {
		if fb.fx.haveEndMillis {
			r.ExportNanos = millisToNanos(fb.fx.endMillis)
		} else {
			r.ExportNanos = int64(fb.fx.endSecs) * 1e9
		}
		if r.EndReason == flow.EndOfFlow {
			r.StopNanos = r.ExportNanos
		}
	}
	if !r.IsSNATed() {
		// A port without an address is no translation anyone can join on.
		r.ProxySnatPort = 0
	}
	r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
	if fb.fx.serviceIP.IsValid() && !fb.fx.serviceIP.IsUnspecified() {
		r.OrigDstIP, r.OrigDstPort = fb.fx.serviceIP.As16(), fb.fx.svcPort
	}
	if fb.fx.clusterIP.IsValid() && !fb.fx.clusterIP.IsUnspecified() {
		r.ClusterIP = true
		r.OrigDstIP = fb.fx.clusterIP.As16()
		if !fb.fx.serviceIP.IsValid() || fb.fx.serviceIP.IsUnspecified() {
			r.OrigDstPort = fb.fx.svcPort
		}
	}
	return r
}
