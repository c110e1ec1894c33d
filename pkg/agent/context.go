package agent

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

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
// source resolves. The loop reads it while a background retry may still
// be setting it, hence atomic.
type clusterIdentity struct{ id atomic.Pointer[string] }

func newClusterIdentity(id string) *clusterIdentity {
	c := &clusterIdentity{}
	c.set(id)
	return c
}

func (c *clusterIdentity) set(id string) { c.id.Store(&id) }

func (c *clusterIdentity) get() string { return *c.id.Load() }

// Enrich sets r's cluster id.
func (c *clusterIdentity) Enrich(r *flow.Record) { r.ClusterID = c.get() }

// newContextStage builds the configured context source; nil when none is
// configured (records then carry no pod or Service names). Nothing runs
// until start. With Kubernetes and no configured clusterID, start fills
// ident with the kube-system namespace's UID (see clusterIDLookup).
func newContextStage(cfg agentconfig.Config, ident *clusterIdentity, reg prometheus.Registerer) (*contextStage, error) {
	switch {
	case cfg.Kubernetes.Enabled:
		lookup, err := newClusterIDLookup(ident, clusterIDRetryMin, clusterIDRetryMax, reg)
		if err != nil {
			return nil, err
		}
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
			if ident.get() == "" {
				lookupDone := lookup.start(ctx, meta)
				return func() error { <-lookupDone; meta.Wait(); return nil }, nil
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

// Backoff of the cluster id lookup after a failure: 1s doubling to 1 min.
const (
	clusterIDRetryMin = time.Second
	clusterIDRetryMax = time.Minute
)

// clusterUIDReader is what the lookup needs of k8smeta.Meta.
type clusterUIDReader interface {
	ClusterUID(ctx context.Context) (string, error)
}

// clusterIDLookup fills a clusterIdentity from the kube-system namespace's
// UID. The first read happens before the loop runs, so that with a working
// API server the first records carry the id. If it fails (a transient API
// error, missing RBAC) it is retried in the background with backoff until
// it succeeds or the agent stops; until then records go out with an empty
// clusterId rather than not at all: the id labels flows, it does not count
// them. Each failed read is counted by k8smeta
// (flowlens_k8smeta_cluster_uid_errors_total), each retry here.
type clusterIDLookup struct {
	ident    *clusterIdentity
	min, max time.Duration
	retries  prometheus.Counter
}

func newClusterIDLookup(ident *clusterIdentity, minWait, maxWait time.Duration, reg prometheus.Registerer) (*clusterIDLookup, error) {
	l := &clusterIDLookup{
		ident: ident, min: minWait, max: maxWait,
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_cluster_id_retries_total",
			Help: "Reads of the cluster id (kube-system namespace UID) retried after a failure; records exported before one succeeds carry an empty clusterId.",
		}),
	}
	if reg != nil {
		if err := reg.Register(l.retries); err != nil {
			return nil, fmt.Errorf("register cluster id metrics: %w", err)
		}
	}
	return l, nil
}

// start reads the id once and, if that fails, keeps retrying in the
// background. The returned channel is closed when nothing runs any more.
func (l *clusterIDLookup) start(ctx context.Context, src clusterUIDReader) <-chan struct{} {
	done := make(chan struct{})
	if l.try(ctx, src) {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		l.retry(ctx, src)
	}()
	return done
}

func (l *clusterIDLookup) retry(ctx context.Context, src clusterUIDReader) {
	wait := l.min
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		l.retries.Inc()
		if l.try(ctx, src) {
			return
		}
		wait = min(2*wait, l.max)
		timer.Reset(wait)
	}
}

// try reads the id once and reports whether it is set now.
func (l *clusterIDLookup) try(ctx context.Context, src clusterUIDReader) bool {
	uid, err := src.ClusterUID(ctx)
	if err != nil {
		if ctx.Err() == nil {
			klog.ErrorS(err, "No cluster id yet: records carry an empty clusterId until a retry succeeds; set clusterID or allow get on namespace kube-system",
				"namespace", k8smeta.ClusterUIDNamespace)
		}
		return false
	}
	l.ident.set(uid)
	klog.InfoS("Cluster id from the kube-system namespace", "clusterID", uid)
	return true
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
