package main

import (
	"encoding/json"
	"net/netip"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/sink/jsonl"
)

// row is one row the aggregator stored, whichever sink it came from: the
// JSON lines sink's shape, whose field names are also the ClickHouse
// table's columns, so both readers fill the same type.
type row jsonl.Row

func (r *row) src() netip.AddrPort { return addrPort(r.SourceIP, r.SourcePort) }

// dst is the endpoint the connection reached: for a Service connection the
// backend pod, with the VIP in DestinationServiceIP.
func (r *row) dst() netip.AddrPort { return addrPort(r.DestinationIP, r.DestinationPort) }

func addrPort(ip string, port uint16) netip.AddrPort {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), port)
}

// key identifies the connection a row belongs to.
func (r *row) key() flowKey { return flowKey{proto: r.Protocol, src: r.src()} }

// flowKey is what the demo knows of each of its connections before any
// record arrives: protocol and the client's address and port (unique while
// the demo runs).
type flowKey struct {
	proto uint8
	src   netip.AddrPort
}

func (e expected) key() flowKey { return flowKey{proto: e.Proto, src: e.Src} }

// ended reports whether the row is the connection's last: the aggregator
// writes end-of-flow, idle (its inactive timeout) or forced (its shutdown)
// once and then forgets the connection.
func (r *row) ended() bool {
	switch r.FlowEndReason {
	case flow.EndOfFlow.String(), flow.EndIdleTimeout.String(), flow.EndForced.String():
		return true
	}
	return false
}

func (r *row) packets() uint64 { return r.PacketTotalCount + r.ReversePacketTotalCount }

// sinkView is what the demo made of the sink's rows: the latest row per
// connection, and how many rows each connection has.
type sinkView struct {
	total  int
	latest map[flowKey]*row
	rows   map[flowKey]int
}

// summarize picks each connection's latest row. The aggregator writes a
// connection again on each of its active timeouts and once at the end, and
// a sink may store a retried batch out of order, so "latest" is the row
// with the largest totals, an ended one winning a tie.
func summarize(rows []row) sinkView {
	v := sinkView{total: len(rows), latest: make(map[flowKey]*row), rows: make(map[flowKey]int)}
	for i := range rows {
		r := &rows[i]
		k := r.key()
		v.rows[k]++
		prev, ok := v.latest[k]
		switch {
		case !ok:
			v.latest[k] = r
		case r.packets() > prev.packets() || r.packets() == prev.packets() && (r.ended() || !prev.ended()):
			inheritL7(r, prev)
			v.latest[k] = r
		default:
			inheritL7(prev, r)
		}
	}
	return v
}

// inheritL7 gives dst the L7 fields that only src of the same connection
// carries (a connection the aggregator forgot and saw again starts with
// none); HTTP transactions of both are merged by id.
func inheritL7(dst, src *row) {
	for _, f := range []struct{ d, s *string }{
		{&dst.AppProtocolName, &src.AppProtocolName},
		{&dst.DNSQueryName, &src.DNSQueryName},
		{&dst.DNSQueryType, &src.DNSQueryType},
		{&dst.DNSResponseCode, &src.DNSResponseCode},
		{&dst.DNSAnswers, &src.DNSAnswers},
		{&dst.TLSServerName, &src.TLSServerName},
		{&dst.TLSVersion, &src.TLSVersion},
	} {
		if *f.d == "" {
			*f.d = *f.s
		}
	}
	switch {
	case len(src.HTTPVals) == 0:
	case len(dst.HTTPVals) == 0:
		dst.HTTPVals = src.HTTPVals
	default:
		var a, b map[string]json.RawMessage
		if json.Unmarshal(dst.HTTPVals, &a) != nil || json.Unmarshal(src.HTTPVals, &b) != nil {
			return
		}
		for id, v := range b {
			if _, ok := a[id]; !ok {
				a[id] = v
			}
		}
		if m, err := json.Marshal(a); err == nil {
			dst.HTTPVals = m
		}
	}
}

// progress says how many of want have a row and how many have ended.
func progress(want []expected, latest map[flowKey]*row) (seen, ended int) {
	for _, e := range want {
		if r, ok := latest[e.key()]; ok {
			seen++
			if r.ended() {
				ended++
			}
		}
	}
	return seen, ended
}
