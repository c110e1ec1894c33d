package main

import (
	"encoding/json"
	"net/netip"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/sink"
)

// row is one row the aggregator stored, whichever sink it came from: the
// columns of pkg/sink's one table, which the ClickHouse table and the JSON
// lines share by name and type, so both readers fill the same type.
type row struct{ sink.Row }

func (r *row) src() netip.AddrPort {
	return addrPort(r.Str("sourceIP"), r.Num("sourceTransportPort"))
}

// dst is the endpoint the connection reached: for a Service connection the
// backend pod, with the VIP in destinationServiceIP.
func (r *row) dst() netip.AddrPort {
	return addrPort(r.Str("destinationIP"), r.Num("destinationTransportPort"))
}

func addrPort(ip string, port uint64) netip.AddrPort {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

func (r *row) proto() uint8 { return uint8(r.Num("protocolIdentifier")) }

func (r *row) endReason() flow.EndReason { return flow.EndReason(r.Num("flowEndReason")) }

// key identifies the connection a row belongs to.
func (r *row) key() flowKey { return flowKey{proto: r.proto(), src: r.src()} }

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
	switch r.endReason() {
	case flow.EndOfFlow, flow.EndIdleTimeout, flow.EndForced:
		return true
	}
	return false
}

func (r *row) packets() uint64 { return r.Num("packetTotalCount") + r.Num("reversePacketTotalCount") }

// sinkView is what the demo made of the sink's rows: the latest row per
// connection, and how many rows each connection has.
type sinkView struct {
	total  int
	latest map[flowKey]*row
	rows   map[flowKey]int
	// health sums every row's health of a connection (connHealth).
	health map[flowKey]*connHealth
}

// summarize picks each connection's latest row. The aggregator writes a
// connection again on each of its active timeouts and once at the end, and
// a sink may store a retried batch out of order, so "latest" is the row
// with the largest totals, an ended one winning a tie.
func summarize(rows []row) sinkView {
	v := sinkView{total: len(rows), latest: make(map[flowKey]*row), rows: make(map[flowKey]int), health: make(map[flowKey]*connHealth)}
	for i := range rows {
		r := &rows[i]
		k := r.key()
		v.rows[k]++
		h := v.health[k]
		if h == nil {
			h = &connHealth{}
			v.health[k] = h
		}
		h.add(r)
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

// l7Columns are the L7 columns inheritL7 carries over, httpVals aside.
var l7Columns = []string{"appProtocolName", "dnsQueryName", "dnsQueryType", "dnsResponseCode", "dnsAnswers", "tlsServerName", "tlsVersion"}

// inheritL7 gives dst the L7 fields that only src of the same connection
// carries (a connection the aggregator forgot and saw again starts with
// none); HTTP transactions of both are merged by id.
func inheritL7(dst, src *row) {
	for _, c := range l7Columns {
		if dst.Str(c) == "" && src.Str(c) != "" {
			_ = dst.SetStr(c, src.Str(c))
		}
	}
	d, s := dst.Str("httpVals"), src.Str("httpVals")
	switch {
	case s == "":
	case d == "":
		_ = dst.SetStr("httpVals", s)
	default:
		var a, b map[string]json.RawMessage
		if json.Unmarshal([]byte(d), &a) != nil || json.Unmarshal([]byte(s), &b) != nil {
			return
		}
		for id, v := range b {
			if _, ok := a[id]; !ok {
				a[id] = v
			}
		}
		if m, err := json.Marshal(a); err == nil {
			_ = dst.SetStr("httpVals", string(m))
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
