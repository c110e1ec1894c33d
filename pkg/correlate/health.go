package correlate

import (
	"github.com/flowlens/flowlens/pkg/flow"
)

// healthAcc folds the flow.Health of every record of a connection since
// its previous export (both nodes' halves, any number of records each)
// into the row's Health. What each node reports, and so how halves
// combine:
//
//   - Retransmissions and zero-window events are counted at the sending
//     socket, drops where the kernel dropped the packet: each one is seen
//     by exactly one node, so they sum, per direction. Exact.
//   - A reset is counted both leaving the sender's socket and arriving at
//     the receiver's (flow.Health: one reset when both ends are on one
//     node). With the ends on two nodes, each node counts the same reset,
//     so the row takes, per direction, the larger of the two nodes' sums:
//     exact when one node saw every reset of that direction (the sender's
//     always does, unless its socket was gone); a sum would count each
//     reset twice. A half that arrives after its peer was exported alone
//     (StatusUnmatched) goes in the next row, where a reset both saw
//     shows again: the rows' sum then counts it twice.
//   - RTT: the minimum of the minima and the maximum of the maxima are
//     exact over the union of both nodes' samples; the average is the
//     sample-weighted mean of the reported averages, exact up to their
//     rounding to a whole microsecond, and the samples sum. A record
//     without samples (RTTSamples 0) contributes nothing, not a zero RTT.
//   - EstablishMicros is measured at the client's socket, in one record:
//     the source node's value wins, else any non-zero one.
//   - DropReason is the most frequent reason of one record's drops; the
//     row takes that of the record with the most drops (ties: the earlier).
//     Exact when one record holds all the period's drops, else the
//     reason of its largest share.
//
// Counts saturate at the uint32 maximum rather than wrap.
type healthAcc struct {
	// rttSum is Σ avg × samples, for the weighted mean.
	rttSum uint64
	// resets are each side's sums: [side][0] forward, [1] reverse.
	resets [2][2]uint32
	// reasonDrops is the drop count of the record DropReason came from.
	reasonDrops uint32
	// establishFromSource: EstablishMicros came from the source node.
	establishFromSource bool
}

// add folds in (a record of side sd) into m, the row's accumulated Health.
func (a *healthAcc) add(m *flow.Health, in *flow.Health, sd side) {
	if in.RTTSamples > 0 {
		if m.RTTSamples == 0 || in.RTTMinMicros < m.RTTMinMicros {
			m.RTTMinMicros = in.RTTMinMicros
		}
		m.RTTMaxMicros = max(m.RTTMaxMicros, in.RTTMaxMicros)
		// Samples beyond the uint32 count are left out of the mean
		// too, which keeps the sum within uint64 ((2^32-1)^2 at most).
		n := min(in.RTTSamples, 1<<32-1-m.RTTSamples)
		m.RTTSamples += n
		a.rttSum += uint64(in.RTTAvgMicros) * uint64(n)
		m.RTTAvgMicros = a.avg(m.RTTSamples)
	}
	m.FwdRetransmits = addSat(m.FwdRetransmits, in.FwdRetransmits)
	m.RevRetransmits = addSat(m.RevRetransmits, in.RevRetransmits)
	m.ZeroWindows = addSat(m.ZeroWindows, in.ZeroWindows)
	m.FwdDrops = addSat(m.FwdDrops, in.FwdDrops)
	m.RevDrops = addSat(m.RevDrops, in.RevDrops)

	i := 0
	if sd == sideDestination {
		i = 1
	}
	a.resets[i][0] = addSat(a.resets[i][0], in.FwdResets)
	a.resets[i][1] = addSat(a.resets[i][1], in.RevResets)
	m.FwdResets = max(a.resets[0][0], a.resets[1][0])
	m.RevResets = max(a.resets[0][1], a.resets[1][1])

	if in.EstablishMicros != 0 && (m.EstablishMicros == 0 || (sd == sideSource && !a.establishFromSource)) {
		m.EstablishMicros = in.EstablishMicros
		a.establishFromSource = sd == sideSource
	}
	if drops := addSat(in.FwdDrops, in.RevDrops); in.DropReason != "" && (m.DropReason == "" || drops > a.reasonDrops) {
		m.DropReason, a.reasonDrops = in.DropReason, drops
	}
}

// avg is the weighted mean over n samples, rounded to the nearest
// microsecond.
func (a *healthAcc) avg(n uint32) uint32 {
	if n == 0 {
		return 0
	}
	return uint32(min((a.rttSum+uint64(n)/2)/uint64(n), 1<<32-1))
}

// reset starts a new period: the row just exported carried the rest.
func (a *healthAcc) reset(m *flow.Health) {
	*a = healthAcc{}
	*m = flow.Health{}
}

func addSat(x, y uint32) uint32 {
	if s := x + y; s >= x {
		return s
	}
	return 1<<32 - 1
}
