package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/inventory"
	"github.com/flowlens/flowlens/pkg/k8smeta"
	"github.com/flowlens/flowlens/pkg/l7"
)

// contextSource is what the agent needs of a source of workload context:
// Kubernetes informers or an inventory file.
type contextSource interface {
	Enrich(r *flow.Record)
	L7Want(c *flow.Conn) flow.L7Want
	NamespaceOf(addr netip.Addr) string
}

// newContextSource builds the configured context source and starts it; the
// returned wait blocks until it stopped after ctx ended. A nil source means
// none is configured: records then carry no pod or Service names.
func newContextSource(ctx context.Context, cfg agentconfig.Config, reg prometheus.Registerer) (contextSource, func() error, error) {
	switch {
	case cfg.Kubernetes.Enabled:
		client, err := k8smeta.NewClient(cfg.Kubernetes.Kubeconfig)
		if err != nil {
			return nil, nil, fmt.Errorf("kubernetes client: %w", err)
		}
		meta, err := k8smeta.New(k8smeta.Config{
			Client:      client,
			NodeName:    cfg.NodeName,
			OwnNodeOnly: cfg.Kubernetes.OwnNodeOnly,
			GracePeriod: cfg.Kubernetes.GracePeriod.D(),
			Registerer:  reg,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("kubernetes context: %w", err)
		}
		// Start returns once the caches synced, so the first records are
		// already enriched.
		if err := meta.Start(ctx); err != nil {
			return nil, nil, fmt.Errorf("kubernetes context: %w", err)
		}
		return meta, func() error { meta.Wait(); return nil }, nil
	case cfg.Inventory.File != "":
		inv, err := inventory.New(inventory.Config{
			Path:        cfg.Inventory.File,
			NodeName:    cfg.NodeName,
			GracePeriod: cfg.Kubernetes.GracePeriod.D(),
			Registerer:  reg,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("inventory: %w", err)
		}
		done := make(chan error, 1)
		go func() { done <- inv.Run(ctx) }()
		return inv, func() error { return <-done }, nil
	}
	return nil, func() error { return nil }, nil
}

// l7Stage is the L7 enrichment: an EVE reader feeding an enricher that
// matches events to the store's connections.
type l7Stage struct {
	reader   *eve.Reader
	enricher *l7.Enricher
}

func newL7Stage(cfg agentconfig.Config, store l7.Connections, policy contextSource, reg prometheus.Registerer) (*l7Stage, error) {
	l7Metrics, err := l7.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	nsPrivacy := make(map[string]l7.Privacy, len(cfg.L7.Privacy.Namespaces))
	for ns, p := range cfg.L7.Privacy.Namespaces {
		nsPrivacy[ns] = l7.Privacy(p)
	}
	enricher, err := l7.New(l7.Config{
		Connections:         store,
		Policy:              policy,
		NamespaceOf:         policy.NamespaceOf,
		DefaultPrivacy:      l7.Privacy(cfg.L7.Privacy.Default),
		NamespacePrivacy:    nsPrivacy,
		MaxPending:          cfg.L7.PendingEvents,
		MaxPendingAge:       cfg.L7.PendingMaxAge.D(),
		MaxHTTPTransactions: cfg.L7.MaxTransactions,
		MaxHTTPBytes:        cfg.L7.MaxHTTPValsBytes,
		Metrics:             l7Metrics,
	})
	if err != nil {
		return nil, fmt.Errorf("l7 enricher: %w", err)
	}
	eveMetrics, err := eve.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	kind := eve.SourceKind(cfg.L7.EVE.Source)
	if cfg.L7.EVE.Source == "file" {
		kind = eve.SourceFile
	}
	reader, err := eve.New(eve.Config{
		Source:       kind,
		Path:         cfg.L7.EVE.Path,
		MaxLineBytes: cfg.L7.EVE.MaxLineBytes,
		FromStart:    cfg.L7.EVE.FromStart,
		Handler:      func(ev eve.Event) { enricher.Ingest(ev, time.Now()) },
		Metrics:      eveMetrics,
	})
	if err != nil {
		return nil, fmt.Errorf("eve reader: %w", err)
	}
	return &l7Stage{reader: reader, enricher: enricher}, nil
}

// run reads EVE events and retries pending ones until ctx ends.
func (s *l7Stage) run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.enricher.Run(ctx) }()
	err := s.reader.Run(ctx)
	if rerr := <-done; err == nil && rerr != nil && ctx.Err() == nil {
		err = rerr
	}
	return err
}
