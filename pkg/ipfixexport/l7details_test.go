package ipfixexport

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// Long DNS answers make records as large as any field allows: each record
// that fits a message arrives whole, each one that cannot fit is dropped and
// counted, and no message exceeds the limit or is malformed.
func TestLongL7DetailsStayWithinTheSizeLimit(t *testing.T) {
	// answer is one record's dnsAnswers: exactly filling a message alone
	// (exact+delta with delta 0), or abs bytes when abs is set.
	type answer struct {
		delta, abs int
		fits       bool
	}
	cases := []struct {
		name      string
		transport Transport
		maxMsg    int
		answers   []answer
	}{
		{"UDP: a record filling the datagram is sent, one byte more is dropped", UDP, 0, []answer{
			{delta: -300, fits: true}, {delta: 0, fits: true}, {delta: 1}, {abs: 3000}, {delta: -500, fits: true},
		}},
		{"TCP: a record filling 65535 bytes is sent, larger ones are dropped", TCP, 0, []answer{
			{delta: 0, fits: true}, {delta: 1}, {abs: 70000}, {delta: -60000, fits: true}, {abs: 65535},
		}},
		{"TCP with a small MaxMessageSize", TCP, 2000, []answer{
			{delta: -500, fits: true}, {delta: 0, fits: true}, {delta: 1}, {delta: -1000, fits: true},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got collected
			colReg := prometheus.NewRegistry()
			target, _ := startCollectorWithMetrics(t, ipfixcollect.Config{Network: string(tc.transport), Address: "127.0.0.1:0"}, &got, colReg)
			var log sizeLog
			addr := sizeCheckingProxy(t, string(tc.transport), target, &log)
			reg := prometheus.NewRegistry()
			e, stop := startExporter(t, Config{
				Address: addr, Transport: tc.transport, MaxMessageSize: tc.maxMsg,
				FlushInterval: 20 * time.Millisecond, L7DetailElements: true,
			}, reg)
			limit := e.MaxMessageSize()

			base := testRecord(0, false)
			setL7Details(&base)
			base.L7.DNSAnswers = ""
			// A lone record's message: header, set header, the record; an
			// answer of 255 bytes or more takes a three-byte length.
			exact := limit - ipfixHeaderLen - setHeaderLen - len(e.tmpl[0].AppendData(nil, &base)) - 2

			var want []flow.Record
			dropped := 0
			for i, a := range tc.answers {
				r := testRecord(uint64(i), false)
				setL7Details(&r)
				n := a.abs
				if n == 0 {
					n = exact + a.delta
				}
				if n < 255 {
					t.Fatalf("answer %d: %d bytes; the cases assume the three-byte length", i, n)
				}
				r.L7.DNSAnswers = strings.Repeat("a", n)
				if a.fits {
					want = append(want, wireView(r))
				} else {
					dropped++
				}
				if !e.Export(&r) {
					t.Fatalf("record %d not buffered", i)
				}
				time.Sleep(5 * time.Millisecond) // UDP has no flow control
			}
			waitFor(t, 10*time.Second, "the records that fit", func() bool { return len(got.snapshot()) >= len(want) })
			waitFor(t, 5*time.Second, "the drops", func() bool {
				return metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "too_large") >= float64(dropped)
			})
			stop()

			if diff := cmp.Diff(want, got.snapshot()); diff != "" {
				t.Errorf("records received (-want +got):\n%s", diff)
			}
			if v := metricValue(t, reg, "flowlens_ipfix_exporter_records_dropped_total", "reason", "too_large"); v != float64(dropped) {
				t.Errorf("too_large drops = %v, want %d", v, dropped)
			}
			if v := metricValue(t, colReg, "flowlens_ipfix_collector_errors_total", "reason", "malformed"); v != 0 {
				t.Errorf("collector saw %v malformed messages", v)
			}
			log.mu.Lock()
			defer log.mu.Unlock()
			if log.max != limit {
				t.Errorf("largest message %d bytes, want exactly the limit %d (the record filling it)", log.max, limit)
			}
			if log.badLength > 0 {
				t.Errorf("%d messages whose header length is not their size", log.badLength)
			}
		})
	}
}
