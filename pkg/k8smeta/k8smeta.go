// Package k8smeta enriches flow records with Kubernetes context and answers
// the L7 opt-in policy, from informers on pods, namespaces, Services,
// EndpointSlices, nodes, ReplicaSets and Jobs. The lookup itself (IP to pod
// by time, Services, flow types) lives in package ipindex, shared with
// pkg/inventory; this package only turns informer events into index updates.
//
// # Own-node mode
//
// With Config.OwnNodeOnly the pod informer lists only the agent's node's pods
// (field selector spec.nodeName), and pods on other nodes are known only
// through EndpointSlices: their IP, name, namespace and node, when some
// Service selects them. The trade-off: memory and API-server watch load are
// O(pods on this node + endpoints) instead of O(pods in the cluster), and the
// L7 policy is complete (only local pods' traffic can be mirrored here), but a
// remote pod no Service selects is exported as an unknown address (flow type
// to-/from-external instead of inter-node) and remote pods carry no labels.
// The aggregator, which receives the other node's half of the flow, can fill
// those in.
package k8smeta

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipindex"
)

// Config configures a Meta.
type Config struct {
	// Client talks to the API server (see NewClient).
	Client kubernetes.Interface
	// NodeName is the node the agent runs on (the downward API's
	// spec.nodeName). Flow types are relative to it.
	NodeName string
	// OwnNodeOnly limits the pod informer to NodeName's pods; see the
	// package documentation for what that costs.
	OwnNodeOnly bool
	// GracePeriod is how long a deleted pod's IP keeps resolving to it for
	// connections that started while it lived; zero means
	// ipindex.DefaultGracePeriod.
	GracePeriod time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Meta is the Kubernetes-backed enricher and L7 policy.
type Meta struct {
	cfg       Config
	idx       *ipindex.Index
	factories []informers.SharedInformerFactory
	synced    []cache.InformerSynced
	metrics   *metrics

	// invalid remembers the invalid annotation value last logged per object,
	// so each object+value is logged once rather than on every resync.
	invalidMu sync.Mutex
	invalid   map[string]string

	// remote tracks pods learned from EndpointSlices in own-node mode: which
	// slices list each pod UID with which addresses.
	remoteMu sync.Mutex
	remote   map[string]*remotePod
	sliceRem map[string][]string // slice key -> remote pod UIDs it lists

	// local: this node's pods that opted into L7, for the traffic mirror.
	local *localPods
}

type remotePod struct {
	pod    *ipindex.Pod
	bySlic map[string][]netip.Addr
}

// New validates cfg and builds the informers; nothing runs until Start. Its
// metrics are registered on reg (nil: counted, not registered).
func New(cfg Config, reg prometheus.Registerer) (*Meta, error) {
	if cfg.Client == nil {
		return nil, errors.New("k8smeta: Config.Client is nil")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("k8smeta: Config.NodeName is empty")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	idx, err := ipindex.New(ipindex.Config{LocalNode: cfg.NodeName, GracePeriod: cfg.GracePeriod, Now: cfg.Now})
	if err != nil {
		return nil, fmt.Errorf("k8smeta: Config.GracePeriod: %w", err)
	}
	m := &Meta{
		cfg:      cfg,
		idx:      idx,
		invalid:  map[string]string{},
		remote:   map[string]*remotePod{},
		sliceRem: map[string][]string{},
		local:    newLocalPods(cfg.NodeName),
	}
	if m.metrics, err = newMetrics(reg, idx); err != nil {
		return nil, err
	}
	if err := m.buildInformers(); err != nil {
		return nil, err
	}
	return m, nil
}

// NewClient returns a clientset from a kubeconfig file, or from the pod's
// service account when kubeconfig is empty.
func NewClient(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("k8smeta: load client config (kubeconfig %q): %w", kubeconfig, err)
	}
	rc.UserAgent = "flowlens-agent"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("k8smeta: build clientset: %w", err)
	}
	return cs, nil
}

func (m *Meta) buildInformers() error {
	// No periodic resync: handlers are idempotent and informers deliver every
	// change, so a resync would only repeat work.
	cluster := informers.NewSharedInformerFactoryWithOptions(m.cfg.Client, 0, informers.WithTransform(transform))
	pods := cluster
	if m.cfg.OwnNodeOnly {
		sel := fields.OneTermEqualSelector("spec.nodeName", m.cfg.NodeName).String()
		pods = informers.NewSharedInformerFactoryWithOptions(m.cfg.Client, 0,
			informers.WithTransform(transform),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = sel }))
		m.factories = append(m.factories, pods)
	}
	m.factories = append(m.factories, cluster)

	type reg struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}
	regs := []reg{
		{pods.Core().V1().Pods().Informer(), handlers(m, "pod", m.onPod, m.onPodDelete)},
		{cluster.Core().V1().Namespaces().Informer(), handlers(m, "namespace", m.onNamespace, m.onNamespaceDelete)},
		{cluster.Core().V1().Services().Informer(), handlers(m, "service", m.onService, m.onServiceDelete)},
		{cluster.Discovery().V1().EndpointSlices().Informer(), handlers(m, "endpointslice", m.onSlice, m.onSliceDelete)},
		{cluster.Core().V1().Nodes().Informer(), handlers(m, "node", m.onNode, m.onNodeDelete)},
		{cluster.Apps().V1().ReplicaSets().Informer(), handlers(m, "replicaset", m.onOwned, m.onOwnedDelete)},
		{cluster.Batch().V1().Jobs().Informer(), handlers(m, "job", m.onOwned, m.onOwnedDelete)},
	}
	for _, r := range regs {
		hr, err := r.inf.AddEventHandler(r.h)
		if err != nil {
			return fmt.Errorf("k8smeta: add event handler: %w", err)
		}
		m.synced = append(m.synced, hr.HasSynced)
	}
	return nil
}

// handlers adapts typed add/delete functions to informer callbacks. Deletes
// may arrive as tombstones when a watch missed the final state.
func handlers[T any](m *Meta, resource string, set func(T), del func(T)) cache.ResourceEventHandlerFuncs {
	ev := m.metrics.events
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := obj.(T); ok {
				ev.WithLabelValues(resource, "add").Inc()
				set(o)
			}
		},
		UpdateFunc: func(_, obj any) {
			if o, ok := obj.(T); ok {
				ev.WithLabelValues(resource, "update").Inc()
				set(o)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if o, ok := obj.(T); ok {
				ev.WithLabelValues(resource, "delete").Inc()
				del(o)
			}
		},
	}
}

// Start runs the informers until ctx is done and returns once their caches
// have synced (or with an error if ctx ends first). Call Wait after
// cancelling ctx to wait for the informer goroutines to exit.
func (m *Meta) Start(ctx context.Context) error {
	for _, f := range m.factories {
		f.Start(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), m.synced...) {
		return fmt.Errorf("k8smeta: wait for informer caches: %w", context.Cause(ctx))
	}
	klog.InfoS("Kubernetes metadata synced", "node", m.cfg.NodeName, "ownNodeOnly", m.cfg.OwnNodeOnly)
	return nil
}

// Wait blocks until every informer goroutine has exited; it returns only
// after the context given to Start is done.
func (m *Meta) Wait() {
	for _, f := range m.factories {
		f.Shutdown()
	}
}

// Enrich fills r's Kubernetes context (see ipindex.Index.Enrich).
func (m *Meta) Enrich(r *flow.Record) { m.idx.Enrich(r) }

// L7Want says which ends of c opted into L7 export.
func (m *Meta) L7Want(c *flow.Conn) flow.L7Want { return m.idx.L7Want(c) }

// LookupPod returns the pod that had ip at `at` (zero: now), with its
// workload and effective L7 mode.
func (m *Meta) LookupPod(ip netip.Addr, at time.Time) (ipindex.PodInfo, bool) {
	return m.idx.LookupPod(ip, at)
}

// NamespaceOf returns the namespace of the pod that has addr now, or "".
// It fits pkg/l7's Config.NamespaceOf.
func (m *Meta) NamespaceOf(addr netip.Addr) string { return m.idx.NamespaceOf(addr) }
