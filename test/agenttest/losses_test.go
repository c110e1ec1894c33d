package agenttest

import (
	"reflect"
	"testing"
)

func TestNonZeroLossesLeavesTheObserversOut(t *testing.T) {
	page := `flowlens_agent_records_dropped_total{reason="sink_refused"} 3
flowlens_ipfix_exporter_records_dropped_total 0
flowlens_packetdrops_total{reason="NO_SOCKET"} 24
flowlens_agent_observer_running{observer="packet-drops"} 1
flowlens_tcphealth_evicted_entries_total 2
flowlens_connstore_connections_evicted_total 1
`
	got := NonZeroLosses(page, `drop|evict`)
	want := []string{`flowlens_agent_records_dropped_total{reason="sink_refused"} 3`, "flowlens_connstore_connections_evicted_total 1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
