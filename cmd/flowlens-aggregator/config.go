package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/sink"
)

// The configuration itself (file format, defaults, validation) is
// pkg/aggregatorconfig; what is here maps it onto the configurations of the
// packages the aggregator wires together.

func correlateConfig(c *aggregatorconfig.Config) correlate.Config {
	return correlate.Config{
		CorrelationWait: c.Correlation.CorrelationWait.D(),
		StartWindow:     c.Correlation.StartWindow.D(),
		ActiveTimeout:   c.Correlation.ActiveTimeout.D(),
		InactiveTimeout: c.Correlation.InactiveTimeout.D(),
		MaxConnections:  c.Correlation.MaxConnections,
	}
}

func sinkConfig(c *aggregatorconfig.Config, name string, w sink.Writer, q aggregatorconfig.Queue) sink.Config {
	return sink.Config{
		Name: name, Writer: w,
		QueueRecords: q.QueueRecords, MaxBatch: q.MaxBatch,
		CommitInterval: q.CommitInterval.D(), RetryMin: q.RetryMin.D(), RetryMax: q.RetryMax.D(),
		FlushTimeout:   q.FlushTimeout.D(),
		UnhealthyAfter: c.Health.SinkFailureTimeout.D(),
		MaxBlock:       q.MaxBlock.D(),
		Spool:          sink.SpoolConfig{Path: q.Spool.Path, MaxBytes: q.Spool.MaxBytes, Aggregator: c.AggregatorID},
		// The write-ahead log gives a sink what it left at shutdown again.
		LeaveForReplay: c.WAL.Enabled,
	}
}

func exportConfig(s aggregatorconfig.IPFIXSink) ipfixexport.Config {
	return ipfixexport.Config{
		Address: s.Address, Transport: ipfixexport.Transport(s.Transport), ObservationDomainID: s.ObservationDomainID,
		L7DetailElements: s.L7DetailElements, HealthElements: s.HealthElements,
		TLS: ipfixexport.TLSConfig{CAFile: s.CAFile, CertFile: s.CertFile, KeyFile: s.KeyFile, ServerName: s.ServerName},
	}
}

func readSecret(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}
