package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/cli"
	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
)

// The example's values reach the packages unchanged, and the packages
// accept them.
func TestExampleConfigMapsOntoThePackages(t *testing.T) {
	c, err := aggregatorconfig.Load("../../docs/examples/aggregator.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cc := correlateConfig(&c)
	if err := cc.Validate(); err != nil {
		t.Errorf("correlate rejects the example: %v", err)
	}
	sc := sinkConfig(&c, "clickhouse", nopWriter{}, c.Sinks.ClickHouse.Queue)
	if err := sc.Validate(); err != nil {
		t.Errorf("sink rejects the example: %v", err)
	}
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"correlationWait", cc.CorrelationWait, correlate.DefaultCorrelationWait},
		{"inactiveTimeout", cc.InactiveTimeout, correlate.DefaultInactiveTimeout},
		{"maxConnections", cc.MaxConnections, correlate.DefaultMaxConnections},
		{"queueRecords", sc.QueueRecords, sink.DefaultQueueRecords},
		{"retryMax", sc.RetryMax, sink.DefaultRetryMax},
		{"health.sinkFailureTimeout", sc.UnhealthyAfter, time.Minute},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, documented default is %v", tc.name, tc.got, tc.want)
		}
	}
	if ec := exportConfig(aggregatorconfig.IPFIXSink{Address: "h:1", Transport: "udp"}); ec.Address != "h:1" || ec.Transport != "udp" {
		t.Errorf("ipfix export config = %+v", ec)
	}
}

func TestFlagsOverrideTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "aggregator.yaml")
	if err := os.WriteFile(path, []byte("aggregatorID: file\nmetricsAddress: \"\"\nsinks:\n  jsonl:\n    enabled: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cfg, err := configure([]string{"--config", path, "--aggregator-id", "flag", "--listen", "udp://127.0.0.1:0",
		"--listen", "tcp://127.0.0.1:0", "--clickhouse-addr", "db:9000"}, &out)
	if err != nil {
		t.Fatalf("configure: %v\n%s", err, out.String())
	}
	if cfg.AggregatorID != "flag" || len(cfg.Listen) != 2 || cfg.Listen[0] != "udp://127.0.0.1:0" ||
		!cfg.Sinks.ClickHouse.Enabled || cfg.Sinks.ClickHouse.Addr != "db:9000" || !cfg.Sinks.JSONL.Enabled || cfg.MetricsAddress != "" {
		t.Errorf("config = %+v", cfg)
	}
	// Without a file: the defaults plus the flags.
	cfg, err = configure([]string{"--jsonl", "-"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MetricsAddress != aggregatorconfig.Default().MetricsAddress || !cfg.Sinks.JSONL.Enabled {
		t.Errorf("config = %+v", cfg)
	}
}

func TestHelpExitsZeroWithOwnFlagsFirst(t *testing.T) {
	for _, arg := range []string{"-h", "--help"} {
		var out bytes.Buffer
		code := runMain([]string{arg}, &out)
		text := out.String()
		if code != 0 {
			t.Errorf("%s: exit %d, want 0", arg, code)
		}
		own, klogHeading, v := strings.Index(text, "-clickhouse-addr"), strings.Index(text, "Logging flags (klog):"), strings.Index(text, "\n  -v value")
		if own < 0 || klogHeading < own || v < klogHeading || !strings.Contains(text, "-config") {
			t.Errorf("%s: want the aggregator's flags, then klog's under a heading:\n%s", arg, text)
		}
	}
}

func TestBadCommandLineExitsTwoWithUsage(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"--jsonl"}, {"--jsonl", "-", "extra"}} {
		var out bytes.Buffer
		code := runMain(args, &out)
		if code != cli.ExitUsage {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
		if !strings.Contains(out.String(), "flowlens-aggregator") || !strings.Contains(out.String(), "--help") && !strings.Contains(out.String(), "-clickhouse-addr") {
			t.Errorf("%q: no usage or hint printed:\n%s", args, out.String())
		}
	}
}

func TestInvalidConfigExitsTwo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "aggregator.yaml")
	if err := os.WriteFile(path, []byte("correlation:\n  inactiveTimeout: 60\nsinks:\n  jsonl:\n    enabled: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := runMain([]string{"--config", path}, &out); code != cli.ExitUsage {
		t.Errorf("exit %d, want 2", code)
	}
	if !strings.Contains(out.String(), "correlation.inactiveTimeout: want a duration") {
		t.Errorf("output does not name correlation.inactiveTimeout:\n%s", out.String())
	}
}
