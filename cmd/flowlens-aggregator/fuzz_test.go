package main

import (
	"net"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/sink"
)

// FuzzIPFIXMessage feeds arbitrary bytes to a running aggregator, as a UDP
// datagram on a long-lived session (so earlier inputs' templates apply)
// and as a TCP stream, through collector, decoding, correlation and sinks.
// A panic anywhere fails, and so does a collector that stops accepting
// connections; TestMalformedInputIsCountedAndOtherAgentsUnaffected checks
// that well-formed agents are unaffected.
//
//	go test -run '^$' -fuzz FuzzIPFIXMessage -fuzztime 60s ./cmd/flowlens-aggregator
func FuzzIPFIXMessage(f *testing.F) {
	start := time.Unix(1_700_000_000, 0)
	src, dst := halves(1, start)
	tmpl, data := validMessages(f, 5, src, dst, intraNode(2, start))
	f.Add(append(append([]byte{}, tmpl...), data...))
	f.Add(tmpl)
	f.Add(data)
	both := ipfixMessage(5, 3, tmpl[16:], data[16:])
	f.Add(both)
	f.Add(both[:len(both)-3])
	withdraw := ipfixMessage(5, 4, ipfixSet(2, []byte{1, 0, 0, 0})) // template 256, 0 fields
	f.Add(append(append([]byte{}, withdraw...), data...))
	f.Add([]byte{0, 10, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

	cfg := testConfig(f, "tcp://127.0.0.1:0", "udp://127.0.0.1:0")
	cfg.AggregatorID = "fuzz"
	cfg.Correlation.CorrelationWait = aggregatorconfig.Duration(50 * time.Millisecond)
	cfg.Sinks.JSONL.CommitInterval = aggregatorconfig.Duration(sink.DefaultCommitInterval)
	ra := startAggregator(f, cfg)
	tcpAddr, udpAddr := ra.addr(f, "tcp"), ra.addr(f, "udp")
	udp, err := net.Dial("udp", udpAddr)
	if err != nil {
		f.Fatal(err)
	}
	defer udp.Close()

	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) > 65535 {
			return
		}
		_, _ = udp.Write(msg)
		c, err := net.DialTimeout("tcp", tcpAddr, time.Second)
		if err != nil {
			t.Fatalf("collector stopped accepting: %v", err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.Write(msg)
		c.Close()
	})
}
