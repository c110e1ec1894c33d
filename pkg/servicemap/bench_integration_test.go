//go:build integration

package servicemap_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/servicemap"
)

// generateSQL inserts n rows numbered offset.. with flow ends spread over
// span seconds from t0: 200 source workloads in 20 namespaces (a tenth
// of their pods without a workload, some external sources), 150
// destinations (a third behind Services, some external by name or IP),
// two ports, TCP and UDP, counters varying by row. The server generates
// them (system.numbers), so millions take seconds, and the rollup's view
// sees them as any insert.
func generateSQL(t0 int64, n, offset, span int) string {
	return fmt.Sprintf(`INSERT INTO default.flows (flowStartSeconds, flowEndSeconds, flowEndReason, sourceIP, sourceTransportPort,
  destinationIP, destinationTransportPort, protocolIdentifier, sourcePodNamespace, sourcePodName, sourceWorkloadKind,
  sourceWorkloadName, destinationPodNamespace, destinationPodName, destinationWorkloadKind, destinationWorkloadName,
  destinationServicePortName, appProtocolName, tlsServerName, octetDeltaCount, reverseOctetDeltaCount, packetDeltaCount,
  reversePacketDeltaCount, httpRequests, http4xx, http5xx, dnsErrors, connectionKey, correlation)
SELECT toDateTime(%[1]d + n %% %[4]d) AS t, t, if(n %% 4 = 0, 3, 2),
  concat('10.1.', toString(s), '.', toString(n %% 7)), 1024 + n %% 60000,
  concat('10.2.', toString(d), '.1'), if(n %% 5 = 0, 443, 8080), if(n %% 10 = 0, 17, 6),
  if(s %% 50 = 49, '', concat('ns', toString(s %% 20))), if(s %% 50 = 49, '', concat('wl', toString(s), '-', toString(n %% 3))),
  'Deployment', if(s %% 10 = 9, '', concat('wl', toString(s))),
  concat('ns', toString(d %% 20)), if(d %% 13 = 12, '', concat('db', toString(d), '-0')), 'StatefulSet', concat('db', toString(d)),
  if(d %% 3 = 0, concat('ns', toString(d %% 20), '/svc', toString(d), ':http'), ''),
  if(n %% 5 = 0, 'tls', 'http'), if(d %% 13 = 12 AND d %% 2 = 0, 'ext.example', ''),
  n %% 1000, n %% 5000, n %% 10 + 1, n %% 20, n %% 3, n %% 2, if(n %% 17 = 0, 1, 0), if(n %% 10 = 0, n %% 2, 0), n,
  if(n %% 3 = 0, 'correlated', 'not-required')
FROM (SELECT number + %[3]d AS n, n %% 200 AS s, (s * 7 + n %% 3) %% 150 AS d FROM system.numbers LIMIT %[2]d)`, t0, n, offset, span)
}

// BenchmarkServiceMapQuery measures the 24-hour map over 10 million raw
// rows read from raw rows and from the per-minute rollup, in the same
// run (raw-ms/op, rollup-ms/op), after checking that both give the same
// edges.
func BenchmarkServiceMapQuery(b *testing.B) {
	const rows = 10_000_000
	f := newFixture(b)
	t0 := futureMinute()
	start := time.Now()
	// Several inserts, as the aggregator's batches would be (and the
	// parts the rollup then holds before merges).
	const blocks = 10
	for i := 0; i < blocks; i++ {
		mustQuery(b, f.srv, generateSQL(t0, rows/blocks, i*rows/blocks, 86400))
	}
	b.Logf("inserted %d rows in %s; rollup rows: %s", rows, time.Since(start).Round(time.Second),
		mustQuery(b, f.srv, "SELECT count() FROM default.flows_rollup"))
	ctx := context.Background()
	q := func(src servicemap.Source) (*servicemap.Map, time.Duration) {
		s := time.Now()
		m, err := f.reader.Map(ctx, servicemap.MapQuery{Window: win(t0, t0+86400), Source: src})
		if err != nil {
			b.Fatal(err)
		}
		return m, time.Since(s)
	}
	raw, _ := q(servicemap.SourceRaw)
	ru, _ := q(servicemap.SourceRollup)
	if !reflect.DeepEqual(sortedEdges(raw.Edges), sortedEdges(ru.Edges)) || len(raw.Edges) == 0 {
		b.Fatalf("rollup (%d edges) and raw (%d edges) maps differ", len(ru.Edges), len(raw.Edges))
	}
	b.Logf("%d edges, %d nodes", len(raw.Edges), len(raw.Nodes))
	b.Run("24h-10M", func(b *testing.B) {
		var rawTotal, rollupTotal time.Duration
		for i := 0; i < b.N; i++ {
			_, d := q(servicemap.SourceRaw)
			rawTotal += d
			_, d = q(servicemap.SourceRollup)
			rollupTotal += d
		}
		b.ReportMetric(float64(rawTotal.Milliseconds())/float64(b.N), "raw-ms/op")
		b.ReportMetric(float64(rollupTotal.Milliseconds())/float64(b.N), "rollup-ms/op")
	})
}
