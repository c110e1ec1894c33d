package main

import (
	"fmt"
	"time"
)

// connHealth is a connection's network health over all the rows the
// aggregator stored for it: each row carries only its own period (since
// the connection's previous row), so the table sums them rather than
// showing the latest row's.
type connHealth struct {
	samples     uint64
	rttSum      uint64 // Σ avg × samples, µs
	rttMax      uint64
	fwdDrops    uint64
	revDrops    uint64
	reason      string
	reasonDrops uint64
	name        string // the latest row's non-empty destinationDnsName
}

// add folds one row in; rows come in the sink's order.
func (h *connHealth) add(r *row) {
	if n := r.Num("tcpRttSampleCount"); n > 0 {
		h.samples += n
		h.rttSum += r.Num("tcpRttAvgMicroseconds") * n
		h.rttMax = max(h.rttMax, r.Num("tcpRttMaxMicroseconds"))
	}
	fwd, rev := r.Num("droppedPacketDeltaCount"), r.Num("reverseDroppedPacketDeltaCount")
	h.fwdDrops += fwd
	h.revDrops += rev
	if reason := r.Str("packetDropReason"); reason != "" && fwd+rev > h.reasonDrops {
		h.reason, h.reasonDrops = reason, fwd+rev
	}
	if name := r.Str("destinationDnsName"); name != "" {
		h.name = name
	}
}

// rtt is the RTT column: the sample-weighted mean and the largest sample
// ("-" without one: not TCP, or no agent measured it).
func (h *connHealth) rtt() string {
	if h == nil || h.samples == 0 {
		return "-"
	}
	avg := (h.rttSum + h.samples/2) / h.samples
	return micros(avg) + "/" + micros(h.rttMax)
}

// drops is the DROPS column: packets dropped each way and the reason of
// most of them; "-" when none was.
func (h *connHealth) drops() string {
	if h == nil || h.fwdDrops+h.revDrops == 0 {
		return "-"
	}
	s := fmt.Sprintf("%d > / %d <", h.fwdDrops, h.revDrops)
	if h.reason != "" {
		s += " " + h.reason
	}
	return s
}

// destName is the NAME column: the DNS name the client resolved the
// destination from.
func (h *connHealth) destName() string {
	if h == nil {
		return "-"
	}
	return orDash(h.name)
}

// micros prints a duration given in microseconds.
func micros(us uint64) string {
	return time.Duration(us * uint64(time.Microsecond)).String()
}
