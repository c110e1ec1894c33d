package correlate

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/flow"
)

// The write-ahead log keeps a record until every sink wrote the rows that
// include it, so every numbered input must be named by exactly one row,
// whichever path it takes: pass-through, aggregation, correlation of
// halves, the full-table bypass, or the shutdown flush.
func TestEveryInputSequenceIsInExactlyOneRow(t *testing.T) {
	c := newTestCorrelator(t, Config{ActiveTimeout: 10 * time.Second, InactiveTimeout: 20 * time.Second, CorrelationWait: 3 * time.Second, MaxConnections: 4})
	var out collected
	seq := uint64(0)
	add := func(in Input, now time.Time) {
		seq++
		in.Seq = seq
		c.Expire(now, out.emit)
		c.Add(&in, now, out.emit)
		c.Expire(now, out.emit)
	}
	port := func(in Input, p uint16) Input { in.Record.Tuple.SrcPort = p; return in }
	for i := 0; i < 30; i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		switch i % 5 {
		case 0: // short intra-node connections: pass-through
			in := oneNodeUpdate(flow.FlowTypeIntraNode, 0, flow.EndOfFlow)
			add(port(in, uint16(1000+i)), now)
		case 1: // a long intra-node connection, ending at the last update
			reason := flow.EndActiveTimeout
			if i == 26 {
				reason = flow.EndOfFlow
			}
			add(oneNodeUpdate(flow.FlowTypeIntraNode, i, reason), now)
		case 2: // inter-node halves, some never matched
			add(port(srcHalf(flow.EndActiveTimeout), uint16(2000+i)), now)
			if i%10 == 2 {
				add(port(dstHalf(flow.EndActiveTimeout), uint16(2000+i)), now)
			}
		default: // more connections than the table holds
			add(port(srcHalf(flow.EndActiveTimeout), uint16(3000+i)), now)
		}
	}
	c.Expire(t0.Add(40*time.Second), out.emit)
	c.Flush(out.emit)
	rows := map[uint64]int{}
	for _, r := range out {
		for _, s := range r.Seqs {
			rows[s]++
		}
	}
	for s := uint64(1); s <= seq; s++ {
		if rows[s] != 1 {
			t.Errorf("input %d is named by %d rows, want 1", s, rows[s])
		}
	}
	if len(rows) != int(seq) {
		t.Errorf("rows name %d inputs, want %d", len(rows), seq)
	}
	var m dto.Metric
	if err := c.m.Overflow.Write(&m); err != nil || m.GetCounter().GetValue() == 0 {
		t.Errorf("the table never overflowed (%v): the bypass path went untested", err)
	}
}

// Unnumbered input (no write-ahead log) costs nothing: rows carry no
// sequence numbers.
func TestUnnumberedInputsLeaveSeqsEmpty(t *testing.T) {
	c := newTestCorrelator(t, Config{})
	var out collected
	s, d := srcHalf(flow.EndOfFlow), dstHalf(flow.EndOfFlow)
	c.Add(&s, t0, out.emit)
	c.Add(&d, t0, out.emit)
	c.Expire(t0, out.emit)
	if len(out) != 1 || out[0].Seqs != nil {
		t.Errorf("rows %v, want one without Seqs", out)
	}
}
