package wal

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

func benchInputs(n int) []correlate.Input {
	ins := make([]correlate.Input, n)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range ins {
		r := flow.Record{FlowType: flow.FlowTypeInterNode, EndReason: flow.EndActiveTimeout}
		r.Tuple = flow.NewTuple(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), netip.MustParseAddr("10.2.0.7"), uint16(i), 8080, flow.ProtoTCP)
		r.OrigDstIP, r.OrigDstPort = netip.MustParseAddr("10.96.0.10").As16(), 80
		r.StartNanos, r.ExportNanos = t0.UnixNano(), t0.Add(time.Second).UnixNano()
		r.Fwd, r.Rev = flow.Counters{Packets: 10, Bytes: 1500}, flow.Counters{Packets: 8, Bytes: 9000}
		r.FwdDelta, r.RevDelta = r.Fwd, r.Rev
		r.TCPState = flow.TCPStateEstablished
		r.Source = flow.Endpoint{PodName: "client-7d9f8b6c5-x2x9q", PodNamespace: "shop", NodeName: "node-a", Labels: `{"app":"client"}`}
		r.ServicePortName = "shop/web:http"
		r.ClusterIP = true
		ins[i] = correlate.Input{Record: r, Exporter: "10.0.0.1/12345", ExporterNode: "node-a"}
	}
	return ins
}

// BenchmarkWALIngest measures records/s through the aggregator's ingest
// path (encode, append, correlator Add) per sync policy. Baseline in the
// same run: the correlator alone, without a log. A sink commit (one frame
// naming 1000 records) is written every 1000 records, as a batch commit
// would.
func BenchmarkWALIngest(b *testing.B) {
	ins := benchInputs(50_000)
	run := func(b *testing.B, policy SyncPolicy) {
		c, err := correlate.New(correlate.Config{CorrelationWait: time.Hour, ActiveTimeout: time.Hour, InactiveTimeout: time.Hour}, nil)
		if err != nil {
			b.Fatal(err)
		}
		var l *Log
		if policy != "" {
			l, err = Open(Config{Dir: b.TempDir(), Sinks: []string{"clickhouse"}, Sync: policy, MaxBytes: 4 << 30}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
		}
		var buf []byte
		pending := make([]uint64, 0, 1000)
		now := time.Now()
		emit := func(*correlate.Record) {}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			in := ins[i%len(ins)]
			if l != nil {
				buf = AppendInput(buf[:0], &in)
				if in.Seq, err = l.Append(buf); err != nil {
					b.Fatal(err)
				}
				if pending = append(pending, in.Seq); len(pending) == cap(pending) {
					if err := l.Commit(0, pending); err != nil {
						b.Fatal(err)
					}
					pending = pending[:0]
				}
			}
			c.Add(&in, now, emit)
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		if l != nil {
			b.ReportMetric(float64(frameHeader+1+8+len(buf)), "bytes/record")
		}
	}
	b.Run("baseline=no-wal", func(b *testing.B) { run(b, "") })
	for _, p := range []SyncPolicy{SyncNever, SyncInterval, SyncAlways} {
		b.Run("sync="+string(p), func(b *testing.B) { run(b, p) })
	}
}
