package agent

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

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

// contextStage is the configured context source and how to run it.
type contextStage struct {
	src contextSource
	// start runs the source until ctx ends; it returns once the source is
	// ready (Kubernetes caches synced, so the first records are enriched)
	// with a function that waits until the source stopped.
	start func(ctx context.Context) (wait func() error, err error)
}

// clusterIdentity stamps every record with the cluster's id (Antrea's
// clusterId IE): agentconfig's clusterID, or what the Kubernetes context
// source resolves at start. Only the loop's goroutine reads it, and it is
// set before the loop runs.
type clusterIdentity struct{ id string }

// Enrich sets r's cluster id.
func (c *clusterIdentity) Enrich(r *flow.Record) { r.ClusterID = c.id }

// newContextStage builds the configured context source; nil when none is
// configured (records then carry no pod or Service names). Nothing runs
// until start. With Kubernetes and no configured clusterID, start fills
// ident with the kube-system namespace's UID.
func newContextStage(cfg agentconfig.Config, ident *clusterIdentity, reg prometheus.Registerer) (*contextStage, error) {
	switch {
	case cfg.Kubernetes.Enabled:
		client, err := k8smeta.NewClient(cfg.Kubernetes.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		meta, err := k8smeta.New(k8smeta.Config{
			Client:      client,
			NodeName:    cfg.NodeName,
			OwnNodeOnly: cfg.Kubernetes.OwnNodeOnly,
			GracePeriod: cfg.Kubernetes.GracePeriod.D(),
		}, reg)
		if err != nil {
			return nil, fmt.Errorf("kubernetes context: %w", err)
		}
		start := func(ctx context.Context) (func() error, error) {
			wait := func() error { meta.Wait(); return nil }
			if err := meta.Start(ctx); err != nil {
				return wait, fmt.Errorf("kubernetes context: %w", err)
			}
			if ident.id == "" {
				resolveClusterID(ctx, meta, ident)
			}
			return wait, nil
		}
		return &contextStage{src: meta, start: start}, nil
	case cfg.Inventory.File != "":
		inv, err := inventory.New(inventory.Config{
			Path:        cfg.Inventory.File,
			NodeName:    cfg.NodeName,
			GracePeriod: cfg.Kubernetes.GracePeriod.D(),
		}, reg)
		if err != nil {
			return nil, fmt.Errorf("inventory: %w", err)
		}
		start := func(ctx context.Context) (func() error, error) {
			done := make(chan error, 1)
			go func() { done <- inv.Run(ctx) }()
			return func() error { return <-done }, nil
		}
		return &contextStage{src: inv, start: start}, nil
	}
	return nil, nil
}

// resolveClusterID reads the cluster id once. Without it records go out
// with an empty clusterId rather than not at all: the id labels flows, it
// does not count them (the failure is logged and counted by k8smeta).
func resolveClusterID(ctx context.Context, meta *k8smeta.Meta, ident *clusterIdentity) {
	uid, err := meta.ClusterUID(ctx)
	if err != nil {
		klog.ErrorS(err, "No cluster id: records carry an empty clusterId; set clusterID or allow get on namespace kube-system",
			"namespace", k8smeta.ClusterUIDNamespace)
		return
	}
	ident.id = uid
	klog.InfoS("Cluster id from the kube-system namespace", "clusterID", uid)
}

// l7Config is the L7 enricher's configuration from the agent's; the
// connection store and the policy come from the loop and the context source.
func l7Config(cfg agentconfig.Config, conns l7.Connections, policy contextSource) l7.Config {
	nsPrivacy := make(map[string]l7.Privacy, len(cfg.L7.Privacy.Namespaces))
	for ns, p := range cfg.L7.Privacy.Namespaces {
		nsPrivacy[ns] = l7.Privacy(p)
	}
	return l7.Config{
		Connections:         conns,
		Policy:              policy,
		NamespaceOf:         policy.NamespaceOf,
		DefaultPrivacy:      l7.Privacy(cfg.L7.Privacy.Default),
		NamespacePrivacy:    nsPrivacy,
		MaxPending:          cfg.L7.PendingEvents,
		MaxPendingAge:       cfg.L7.PendingMaxAge.D(),
		MaxHTTPTransactions: cfg.L7.MaxTransactions,
		MaxHTTPBytes:        cfg.L7.MaxHTTPValsBytes,
	}
}

// newEVEReader builds the reader of Suricata's eve-log, handing every
// event to handler.
func newEVEReader(cfg agentconfig.Config, handler func(eve.Event), reg prometheus.Registerer) (*eve.Reader, error) {
	kind := eve.SourceKind(cfg.L7.EVE.Source)
	if cfg.L7.EVE.Source == "file" {
		kind = eve.SourceFile
	}
	reader, err := eve.New(eve.Config{
		Source:           kind,
		Path:             cfg.L7.EVE.Path,
		MaxLineBytes:     cfg.L7.EVE.MaxLineBytes,
		MaxClients:       cfg.L7.EVE.MaxClients,
		MaxBufferedBytes: cfg.L7.EVE.MaxBufferedBytes,
		FromStart:        cfg.L7.EVE.FromStart,
		Handler:          handler,
	}, reg)
	if err != nil {
		return nil, fmt.Errorf("eve reader: %w", err)
	}
	return reader, nil
}
