package agent

import (
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/flow"
)

// fullSink plays an exporter whose buffer is full while full is set:
// Accepts says no, and Export refuses up to drainEvery-1 calls in a row
// before taking one (a slot freed as the collector reads).
type fullSink struct {
	mu         sync.Mutex
	full       bool
	drainEvery int
	refusedRun int
	refusals   int
	declined   int
	records    []flow.Record
}

func (s *fullSink) Accepts(*flow.Record) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.full {
		s.declined++
	}
	return !s.full
}

func (s *fullSink) Export(r *flow.Record) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.full && s.refusedRun < s.drainEvery-1 {
		s.refusedRun++
		s.refusals++
		return false
	}
	s.refusedRun = 0
	s.records = append(s.records, *r)
	return true
}

func (s *fullSink) setFull(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.full = v
}

func (s *fullSink) all() []flow.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]flow.Record(nil), s.records...)
}

// countingEnricher counts the records it enriched: the L7 stage consumes
// state when it enriches, so a record must be enriched only once the sink
// will take it.
type countingEnricher struct{ n int }

func (e *countingEnricher) Enrich(*flow.Record) { e.n++ }

// A sink that is full for the first 15 s (a start-up backlog) loses
// nothing: due records wait in the store, every connection's end-of-flow is
// exported exactly once, deltas add up to the totals, and no record is
// enriched without being taken.
func TestFullSinkDelaysRecordsWithoutLoss(t *testing.T) {
	const n = 300
	src := newFakeSource()
	conns := make([]flow.Conn, n)
	for i := range conns {
		conns[i] = tcpConn(uint16(41000+i), uint32(1000+i), 100, 1, 200, 2)
	}
	src.set(conns...)
	sink := &fullSink{full: true, drainEvery: 5}
	enr := &countingEnricher{}
	h := newHarness(t, src, func(cfg *LoopConfig) {
		cfg.Sink = sink
		cfg.Enrichers = []Enricher{enr}
		cfg.Queue.SpreadActiveDeadlines = true
	})
	closed := map[flow.Tuple]bool{}
	for d := tickEvery; d <= 40*time.Second; d += tickEvery {
		now := at(d)
		if d%time.Second == 0 && d <= 20*time.Second {
			for i := range conns {
				if i%3 == 1 {
					c := &conns[i]
					c.Fwd.Bytes, c.Fwd.Packets = c.Fwd.Bytes+100, c.Fwd.Packets+1
					src.set(*c)
				}
			}
			if d == 8*time.Second {
				// Ten tuples get a new kernel entry: the store must end
				// the old connections at once, while the sink is full.
				for i := 2; i < 30; i += 3 {
					conns[i].ID += 5000
					conns[i].Fwd, conns[i].Rev = flow.Counters{Bytes: 60, Packets: 1}, flow.Counters{}
					src.set(conns[i])
				}
			}
			h.poll(now)
		}
		if d == 5*time.Second {
			for i := 0; i < n; i += 3 {
				c := &conns[i]
				c.Fwd.Bytes, c.Fwd.Packets = c.Fwd.Bytes+40, c.Fwd.Packets+1
				src.remove(c.Tuple)
				h.send(now, conntrack.EventDestroy, c)
				closed[c.Tuple] = true
			}
		}
		if d == 15*time.Second {
			if got := len(sink.all()); got != 10 {
				t.Fatalf("a full sink took %d records, want only the 10 final records of replaced connections", got)
			}
			sink.setFull(false)
		}
		h.tick(now)
	}
	h.stop(at(41 * time.Second))

	got := sink.all()
	checkSums(t, got)
	type key struct {
		tuple flow.Tuple
		id    uint32
	}
	ends, seen := map[key]int{}, map[key]bool{}
	for _, r := range got {
		k := key{r.Tuple, r.ID}
		seen[k] = true
		if r.EndReason == flow.EndOfFlow {
			ends[k]++
		}
	}
	for i, c := range conns {
		k := key{c.Tuple, c.ID}
		if !seen[k] {
			t.Fatalf("connection %d (%s id %d) was never exported", i, c.Tuple, c.ID)
		}
		if closed[c.Tuple] && ends[k] != 1 {
			t.Fatalf("closed connection %d exported with end-of-flow %d times, want once", i, ends[k])
		}
	}
	for i := 2; i < 30; i += 3 {
		if k := (key{conns[i].Tuple, conns[i].ID - 5000}); ends[k] != 1 {
			t.Fatalf("replaced connection %d: %d end-of-flow records, want 1", i, ends[k])
		}
	}
	if sink.declined == 0 || sink.refusals == 0 {
		t.Fatalf("declined %d, refused %d: the sink was never full as far as the loop saw", sink.declined, sink.refusals)
	}
	if enr.n != len(got) {
		t.Fatalf("enriched %d records, the sink took %d: a refused record was enriched", enr.n, len(got))
	}
	t.Logf("%d records; while full: %d declined before enrichment, %d refused exports retried", len(got), sink.declined, sink.refusals)
}
