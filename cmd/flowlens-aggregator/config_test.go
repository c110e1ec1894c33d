package main

import (
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/jsonl"
)

func TestExampleConfigLoadsWithDocumentedDefaults(t *testing.T) {
	c, err := LoadConfig("../../docs/examples/aggregator.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("example config does not validate: %v", err)
	}
	cc := c.correlateConfig(nil)
	// The example states each default; they must be the code's.
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"correlationWait", cc.CorrelationWait, correlate.DefaultCorrelationWait},
		{"startWindow", cc.StartWindow, correlate.DefaultStartWindow},
		{"activeTimeout", cc.ActiveTimeout, correlate.DefaultActiveTimeout},
		{"inactiveTimeout", cc.InactiveTimeout, correlate.DefaultInactiveTimeout},
		{"maxConnections", cc.MaxConnections, correlate.DefaultMaxConnections},
		{"inputQueue", c.InputQueue, defaultInputQueue},
		{"shutdownTimeout", c.ShutdownTimeout.D(), defaultShutdownTimeout},
		{"metricsAddress", c.MetricsAddress, defaultMetricsAddress},
		{"clickhouse.queueRecords", c.Sinks.ClickHouse.QueueRecords, sink.DefaultQueueRecords},
		{"clickhouse.maxBatch", c.Sinks.ClickHouse.MaxBatch, sink.DefaultMaxBatch},
		{"clickhouse.commitInterval", c.Sinks.ClickHouse.CommitInterval.D(), sink.DefaultCommitInterval},
		{"clickhouse.retryMin", c.Sinks.ClickHouse.RetryMin.D(), sink.DefaultRetryMin},
		{"clickhouse.retryMax", c.Sinks.ClickHouse.RetryMax.D(), sink.DefaultRetryMax},
		{"clickhouse.flushTimeout", c.Sinks.ClickHouse.FlushTimeout.D(), sink.DefaultFlushTimeout},
		{"clickhouse.dialTimeout", c.Sinks.ClickHouse.DialTimeout.D(), 5 * time.Second},
		{"jsonl.maxBytes", c.Sinks.JSONL.MaxBytes, int64(jsonl.DefaultMaxBytes)},
		{"jsonl.maxFiles", c.Sinks.JSONL.MaxFiles, jsonl.DefaultMaxFiles},
		{"ipfix.queueRecords", c.Sinks.IPFIX.QueueRecords, sink.DefaultQueueRecords},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v (%T), documented default is %v (%T)", tc.name, tc.got, tc.got, tc.want, tc.want)
		}
	}
	if len(c.Listen) != 2 || c.Sinks.ClickHouse.Addr != "127.0.0.1:9000" || c.AggregatorID != "aggregator-1" {
		t.Errorf("config = %+v", c)
	}
}

func TestConfigValidationNamesTheBadField(t *testing.T) {
	base := "sinks:\n  jsonl:\n    enabled: true\n"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"listen without scheme", "listen: [\"127.0.0.1:4739\"]\n" + base, "listen[0]"},
		{"listen with unknown scheme", "listen: [\"sctp://127.0.0.1:4739\"]\n" + base, "listen[0]"},
		{"listen twice", "listen: [\"tcp://127.0.0.1:1\", \"tcp://127.0.0.1:1\"]\n" + base, "listen[1]"},
		{"tls listener without certificate", "listen: [\"tls://127.0.0.1:4739\"]\n" + base, "tls.certFile"},
		{"negative correlation wait", "correlation:\n  correlationWait: -1s\n" + base, "correlation.correlationWait"},
		{"unparsable duration", "correlation:\n  activeTimeout: soon\n" + base, "duration"},
		{"unknown key", "lisen: []\n" + base, "lisen"},
		{"no sink enabled", "listen: [\"tcp://127.0.0.1:4739\"]\n", "sinks"},
		{"clickhouse without addr", "sinks:\n  clickhouse:\n    enabled: true\n", "sinks.clickhouse.addr"},
		{"batch larger than queue", "sinks:\n  clickhouse:\n    enabled: true\n    addr: x:1\n    queueRecords: 10\n    maxBatch: 100\n", "sinks.clickhouse.maxBatch"},
		{"negative rotation size", "sinks:\n  jsonl:\n    enabled: true\n    maxBytes: -1\n", "sinks.jsonl.maxBytes"},
		{"ipfix bad transport", "sinks:\n  ipfix:\n    enabled: true\n    address: x:1\n    transport: sctp\n", "sinks.ipfix.transport"},
		{"negative input queue", "inputQueue: -5\n" + base, "inputQueue"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.yaml))
			if err == nil {
				err = c.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestMinimalConfigIsValid(t *testing.T) {
	c, err := ParseConfig([]byte("sinks:\n  jsonl:\n    enabled: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if len(c.Listen) != 1 || c.Listen[0] != defaultListen {
		t.Errorf("Listen = %v, want the default", c.Listen)
	}
}
