package wal

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// inputVersion leads every encoded input; a field added to flow.Record
// bumps it (TestInputCodecCoversEveryField fails until the codec has it).
// Version 2 appended the proxy SNAT address and port and the cluster id,
// version 3 both ends' workload kind and name, version 4 the network
// health and the destination's DNS name; inputs of earlier versions,
// logged before an upgrade, still decode (without what came later).
const inputVersion = 4

// AppendInput appends the binary encoding of in (everything but Seq, which
// the log assigns) to dst. Hand-written rather than reflective: it runs for
// every record the aggregator receives.
func AppendInput(dst []byte, in *correlate.Input) []byte {
	r := &in.Record
	dst = append(dst, inputVersion)
	dst = append(dst, r.Tuple.SrcIP[:]...)
	dst = append(dst, r.Tuple.DstIP[:]...)
	dst = binary.LittleEndian.AppendUint16(dst, r.Tuple.SrcPort)
	dst = binary.LittleEndian.AppendUint16(dst, r.Tuple.DstPort)
	dst = append(dst, r.Tuple.Proto)
	dst = append(dst, r.OrigDstIP[:]...)
	dst = binary.LittleEndian.AppendUint16(dst, r.OrigDstPort)
	dst = binary.LittleEndian.AppendUint16(dst, r.Zone)
	dst = binary.AppendUvarint(dst, uint64(r.Mark))
	dst = binary.AppendUvarint(dst, uint64(r.ID))
	dst = binary.AppendUvarint(dst, uint64(r.Status))
	dst = append(dst, byte(r.TCPState), byte(r.EndReason), byte(r.FlowType))
	var flags byte
	if r.ClusterIP {
		flags |= 1
	}
	dst = append(dst, flags)
	for _, v := range [...]int64{r.StartNanos, r.StopNanos, r.ExportNanos} {
		dst = binary.AppendVarint(dst, v)
	}
	for _, c := range [...]flow.Counters{r.Fwd, r.Rev, r.FwdDelta, r.RevDelta} {
		dst = binary.AppendUvarint(dst, c.Packets)
		dst = binary.AppendUvarint(dst, c.Bytes)
	}
	for _, s := range [...]string{
		r.Source.PodName, r.Source.PodNamespace, r.Source.NodeName, r.Source.Labels,
		r.Destination.PodName, r.Destination.PodNamespace, r.Destination.NodeName, r.Destination.Labels,
		r.ServicePortName,
		r.L7.AppProtocolName, r.L7.HTTPVals,
		r.L7.DNSQueryName, r.L7.DNSQueryType, r.L7.DNSResponseCode, r.L7.DNSAnswers,
		r.L7.TLSServerName, r.L7.TLSVersion, r.L7.TLSJA3, r.L7.TLSJA3S, r.L7.TLSJA4,
		in.Exporter, in.ExporterNode,
	} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	dst = append(dst, r.ProxySnatIP[:]...)
	dst = binary.LittleEndian.AppendUint16(dst, r.ProxySnatPort)
	dst = binary.AppendUvarint(dst, uint64(len(r.ClusterID)))
	dst = append(dst, r.ClusterID...)
	for _, s := range [...]string{r.Source.WorkloadKind, r.Source.WorkloadName, r.Destination.WorkloadKind, r.Destination.WorkloadName} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	for _, v := range healthCounts(&r.Health) {
		dst = binary.AppendUvarint(dst, uint64(*v))
	}
	for _, s := range [...]string{r.Health.DropReason, r.DestinationName} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	return dst
}

// healthCounts are the numeric flow.Health fields in their encoded order.
func healthCounts(h *flow.Health) [12]*uint32 {
	return [12]*uint32{&h.RTTMinMicros, &h.RTTAvgMicros, &h.RTTMaxMicros, &h.RTTSamples,
		&h.FwdRetransmits, &h.RevRetransmits, &h.FwdResets, &h.RevResets,
		&h.EstablishMicros, &h.ZeroWindows, &h.FwdDrops, &h.RevDrops}
}

var errShort = errors.New("input record truncated")

// decoder reads with a sticky error: a short or damaged input yields an
// error, never a panic.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.err = errShort
		return make([]byte, n)
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, k := binary.Uvarint(d.b)
	if k <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[k:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, k := binary.Varint(d.b)
	if k <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[k:]
	return v
}

func (d *decoder) u32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 && d.err == nil {
		d.err = fmt.Errorf("value %d overflows 32 bits", v)
	}
	return uint32(v)
}

func (d *decoder) str() string {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.err = errShort
	}
	if d.err != nil {
		return ""
	}
	return string(d.bytes(int(n)))
}

// DecodeInput decodes what AppendInput wrote into in (Seq is left alone).
func DecodeInput(b []byte, in *correlate.Input) error {
	d := decoder{b: b}
	v := d.bytes(1)[0]
	if d.err == nil && (v < 1 || v > inputVersion) {
		return fmt.Errorf("decode input: version %d, this aggregator reads 1 to %d", v, inputVersion)
	}
	var r flow.Record
	copy(r.Tuple.SrcIP[:], d.bytes(16))
	copy(r.Tuple.DstIP[:], d.bytes(16))
	r.Tuple.SrcPort = binary.LittleEndian.Uint16(d.bytes(2))
	r.Tuple.DstPort = binary.LittleEndian.Uint16(d.bytes(2))
	r.Tuple.Proto = d.bytes(1)[0]
	copy(r.OrigDstIP[:], d.bytes(16))
	r.OrigDstPort = binary.LittleEndian.Uint16(d.bytes(2))
	r.Zone = binary.LittleEndian.Uint16(d.bytes(2))
	r.Mark, r.ID, r.Status = d.u32(), d.u32(), d.u32()
	e := d.bytes(4)
	r.TCPState, r.EndReason, r.FlowType = flow.TCPState(e[0]), flow.EndReason(e[1]), flow.FlowType(e[2])
	r.ClusterIP = e[3]&1 != 0
	r.StartNanos, r.StopNanos, r.ExportNanos = d.varint(), d.varint(), d.varint()
	for _, c := range [...]*flow.Counters{&r.Fwd, &r.Rev, &r.FwdDelta, &r.RevDelta} {
		c.Packets, c.Bytes = d.uvarint(), d.uvarint()
	}
	var exporter, exporterNode string
	for _, s := range [...]*string{
		&r.Source.PodName, &r.Source.PodNamespace, &r.Source.NodeName, &r.Source.Labels,
		&r.Destination.PodName, &r.Destination.PodNamespace, &r.Destination.NodeName, &r.Destination.Labels,
		&r.ServicePortName,
		&r.L7.AppProtocolName, &r.L7.HTTPVals,
		&r.L7.DNSQueryName, &r.L7.DNSQueryType, &r.L7.DNSResponseCode, &r.L7.DNSAnswers,
		&r.L7.TLSServerName, &r.L7.TLSVersion, &r.L7.TLSJA3, &r.L7.TLSJA3S, &r.L7.TLSJA4,
		&exporter, &exporterNode,
	} {
		*s = d.str()
	}
	if v >= 2 {
		copy(r.ProxySnatIP[:], d.bytes(16))
		r.ProxySnatPort = binary.LittleEndian.Uint16(d.bytes(2))
		r.ClusterID = d.str()
	}
	if v >= 3 {
		for _, s := range [...]*string{&r.Source.WorkloadKind, &r.Source.WorkloadName, &r.Destination.WorkloadKind, &r.Destination.WorkloadName} {
			*s = d.str()
		}
	}
	if v >= 4 {
		for _, p := range healthCounts(&r.Health) {
			*p = d.u32()
		}
		r.Health.DropReason, r.DestinationName = d.str(), d.str()
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return fmt.Errorf("decode input: %w", d.err)
	}
	in.Record, in.Exporter, in.ExporterNode = r, exporter, exporterNode
	return nil
}
