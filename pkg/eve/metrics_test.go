package eve

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetricsCountEventsByTypeAndRejectedLinesByReason(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	input := strings.Join([]string{
		evLine(1), evLine(2), "", "{broken", `{"timestamp":"2024-01-02T03:04:05Z","event_type":"stats"}`,
		`{"timestamp":"2024-01-02T03:04:05Z","event_type":"nope","src_ip":"1.1.1.1","dest_ip":"1.1.1.1","proto":"ICMP"}`,
		"x" + strings.Repeat("y", 100),
	}, "\n")
	if err := ReadAll(strings.NewReader(input), 150, m, func(Event) {}); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			key := f.GetName()
			for _, l := range mt.GetLabel() {
				key += "{" + l.GetValue() + "}"
			}
			got[key] = mt.GetCounter().GetValue()
		}
	}
	want := map[string]float64{
		// evLine is longer than 150 bytes: the bound applies to it.
		"flowlens_eve_lines_rejected_total{oversize}":           2,
		"flowlens_eve_lines_rejected_total{empty}":              1,
		"flowlens_eve_lines_rejected_total{invalid_json}":       2,
		"flowlens_eve_lines_rejected_total{no_tuple}":           1,
		"flowlens_eve_lines_rejected_total{unknown_event_type}": 1,
		"flowlens_eve_lines_rejected_total{no_event_type}":      0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, err := newMetrics(reg, nil); err == nil {
		t.Error("registering twice on one registry did not fail")
	}
}
