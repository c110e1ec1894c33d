package tcphealth

import "testing"

// TestReviewMinMaxMissingCountsPeriods: rtt_minmax_missing_total says it
// counts record periods with RTT samples but no min/max entry. A record
// whose client and server sockets (both on this node) each miss their
// min/max is one such period, but the counter goes up per socket.
func TestReviewMinMaxMissingCountsPeriods(t *testing.T) {
	f := newFixture(t, Config{})
	c := conn(true)
	f.tab.sample(client(c), 10)
	f.tab.sample(server(c), 30)
	f.enrich(c, false)
	// One sample each, counted after their extremes were taken.
	f.tab.add(client(c), func(s *bpfSockStats) { s.RttSamples++; s.RttSumUs += 10 })
	f.tab.add(server(c), func(s *bpfSockStats) { s.RttSamples++; s.RttSumUs += 30 })
	h := f.enrich(c, false)
	if h.RTTSamples != 2 {
		t.Fatalf("record %+v, want 2 samples", h)
	}
	if v := value(t, f.tr.metrics.minmaxMissing); v != 1 {
		t.Fatalf("rtt_minmax_missing_total %v after one record period without extremes, want 1", v)
	}
}
