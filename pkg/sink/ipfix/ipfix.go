// Package ipfix re-exports aggregated records to another IPFIX collector
// through pkg/ipfixexport. It is a sink.Writer.
//
// The merged flow.Record is what travels: both sides' Kubernetes fields,
// the main counters and the united L7 fields, in the template the agents
// use. The per-node counters (...FromSourceNode) are not in that template
// yet; the ClickHouse and JSON lines sinks carry them.
package ipfix

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/sink"
)

// Writer hands records to an ipfixexport.Exporter.
type Writer struct {
	exp *ipfixexport.Exporter
}

var _ sink.Writer = (*Writer)(nil)

// New builds the exporter; the caller runs Run until the sink is closed.
func New(cfg ipfixexport.Config, reg prometheus.Registerer) (*Writer, error) {
	exp, err := ipfixexport.New(cfg, reg)
	if err != nil {
		return nil, fmt.Errorf("ipfix sink: %w", err)
	}
	return &Writer{exp: exp}, nil
}

// Run sends until ctx ends, then sends what is buffered.
func (w *Writer) Run(ctx context.Context) error { return w.exp.Run(ctx) }

// errBufferFull makes the sink retry the rest of the batch later, once the
// exporter's buffer has drained towards the collector.
var errBufferFull = errors.New("ipfix exporter buffer full")

// Write queues each record; when the exporter's buffer is full it reports
// how many went in so the sink retries only the rest.
func (w *Writer) Write(_ context.Context, b *sink.Batch) (int, error) {
	for i, r := range b.Records {
		if !w.exp.Export(&r.Record) {
			w.exp.Flush()
			return i, errBufferFull
		}
	}
	w.exp.Flush()
	return len(b.Records), nil
}

// Close is a no-op: the exporter stops with the context given to Run.
func (w *Writer) Close() error { return nil }
