package connstore

import "testing"

// Release zeroes the store's counts (Len is 0 after it) and its memory
// gauge, but the connections and tombstones gauges keep their old values:
// a registry that outlives the store reports connections that are gone.
func TestReviewReleaseLeavesGaugesConsistent(t *testing.T) {
	h := newHarness(t, 16)
	s := h.store
	for p := uint16(40000); p < 40005; p++ {
		c := conn(p, 1, 1, 1)
		s.Upsert(&c, t0)
	}
	s.EndDump(t0.Add(sec)) // not named by this dump: closed
	c := conn(40009, 1, 1, 1)
	s.Upsert(&c, t0.Add(2*sec))
	h.tick(3 * sec) // five end-of-flow records: tombstones (a dump was seen)
	if s.Len() != 1 || s.retired != 5 {
		t.Fatalf("set-up: %d live, %d tombstones; want 1 and 5", s.Len(), s.retired)
	}
	if err := s.Release(); err != nil {
		t.Fatal(err)
	}
	if s.Len() != 0 {
		t.Fatalf("Len %d after Release", s.Len())
	}
	if g := gaugeValue(t, s.m.conns); g != float64(s.Len()) {
		t.Errorf("flowlens_connstore_connections = %v after Release, Len() = %d", g, s.Len())
	}
	if g := gaugeValue(t, s.m.tombstones); g != 0 {
		t.Errorf("flowlens_connstore_tombstones = %v after Release, want 0", g)
	}
}
