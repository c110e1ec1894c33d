// Package podlinks finds a node's pod-facing host interfaces and follows
// them as pods come and go, whatever the CNI: a pod-facing interface is a
// veth whose peer lives in another network namespace. Routed (Calico-style,
// the host end holds a route per pod) and bridged (the host end is a bridge
// port) pods both qualify. The eBPF flow counters attach to them; a traffic
// mirror can reuse them.
package podlinks

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// EventKind says whether an interface appeared or went.
type EventKind uint8

// Event kinds.
const (
	Added EventKind = iota + 1
	Removed
	// Synced follows the Added/Removed events of a listing of the
	// namespace's links (the first one, and each after a resubscription):
	// every interface present then has been reported. It names no
	// interface.
	Synced
)

func (k EventKind) String() string {
	switch k {
	case Added:
		return "added"
	case Removed:
		return "removed"
	case Synced:
		return "synced"
	}
	return fmt.Sprintf("kind-%d", k)
}

// Event reports one pod-facing interface.
type Event struct {
	Kind    EventKind
	Ifindex int
	Name    string
	// NetnsPath is the namespace the interface is in (Config.NetnsPath;
	// empty is the agent's own).
	NetnsPath string
}

// Config configures a Watcher.
type Config struct {
	// NetnsPath is the node's network namespace; empty: the agent's own.
	NetnsPath string
	// ExcludePrefixes are interface name prefixes that are never pod-facing
	// even when they look so (the capture veth of a traffic mirror, "flc").
	ExcludePrefixes []string
	// ResyncBackoff is the wait before re-subscribing after the netlink
	// subscription failed (its socket overflowed, say). Default 1s.
	ResyncBackoff time.Duration
}

// Watcher follows the pod-facing interfaces of one namespace.
type Watcher struct {
	cfg     Config
	metrics metrics

	mu    sync.Mutex
	known map[int]string // ifindex -> name of the interfaces reported Added
}

type metrics struct {
	unclassified prometheus.Counter
	resyncs      prometheus.Counter
	errors       prometheus.Counter
	links        prometheus.Gauge
}

// New returns a Watcher; Run starts it.
func New(cfg Config, reg prometheus.Registerer) (*Watcher, error) {
	if cfg.ResyncBackoff == 0 {
		cfg.ResyncBackoff = time.Second
	}
	if cfg.ResyncBackoff < 0 {
		return nil, fmt.Errorf("pod links: resyncBackoff %s: must not be negative", cfg.ResyncBackoff)
	}
	for _, p := range cfg.ExcludePrefixes {
		if p == "" {
			return nil, errors.New("pod links: an empty exclude prefix would exclude every interface")
		}
	}
	w := &Watcher{
		cfg: cfg,
		metrics: metrics{
			unclassified: prometheus.NewCounter(prometheus.CounterOpts{Name: "flowlens_podlinks_unclassified_total",
				Help: "Interface updates that could not be classified as pod-facing or not (a veth whose peer is unknown)."}),
			resyncs: prometheus.NewCounter(prometheus.CounterOpts{Name: "flowlens_podlinks_resyncs_total",
				Help: "Re-subscriptions to link updates after the subscription failed."}),
			errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "flowlens_podlinks_errors_total",
				Help: "Errors listing or subscribing to the namespace's links."}),
			links: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_podlinks_interfaces",
				Help: "Pod-facing interfaces currently known."}),
		},
		known: make(map[int]string),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{w.metrics.unclassified, w.metrics.resyncs, w.metrics.errors, w.metrics.links} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register pod links metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Watch is New plus Run with no metrics registered.
func Watch(ctx context.Context, netnsPath string, excludePrefixes []string, fn func(Event)) error {
	w, err := New(Config{NetnsPath: netnsPath, ExcludePrefixes: excludePrefixes}, nil)
	if err != nil {
		return err
	}
	return w.Run(ctx, fn)
}

// Run reports the pod-facing interfaces present now (Added), then every
// one added or removed later, until ctx is done. fn is called from Run's
// goroutine, one event at a time. It returns nil when ctx ends, or an
// error when the namespace cannot be opened.
func (w *Watcher) Run(ctx context.Context, fn func(Event)) error {
	ns, err := openNetns(w.cfg.NetnsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	for {
		err := w.subscribeOnce(ctx, ns, fn)
		if ctx.Err() != nil {
			return nil
		}
		w.metrics.errors.Inc()
		w.metrics.resyncs.Inc()
		klog.ErrorS(err, "Pod link subscription ended; re-listing", "netns", w.cfg.NetnsPath, "backoff", w.cfg.ResyncBackoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(w.cfg.ResyncBackoff):
		}
	}
}

// routeHandle is a rtnetlink handle in the namespace at path. The agent's
// own namespace (empty path) is used as it is: a handle "at" a namespace
// enters it first (setns, which needs CAP_SYS_ADMIN), even when it is the
// one the agent is in.
func routeHandle(path string, ns vnetns.NsHandle) (*netlink.Handle, error) {
	if path == "" {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	return netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
}

func openNetns(path string) (vnetns.NsHandle, error) {
	var ns vnetns.NsHandle
	var err error
	if path == "" {
		ns, err = vnetns.Get()
	} else {
		ns, err = vnetns.GetFromPath(path)
	}
	if err != nil {
		return 0, fmt.Errorf("open netns %q: %w", path, err)
	}
	return ns, nil
}

// subscribeOnce subscribes, then lists (so nothing falls between the two),
// reconciles the known set with the list and follows updates until the
// subscription fails or ctx ends.
func (w *Watcher) subscribeOnce(ctx context.Context, ns vnetns.NsHandle, fn func(Event)) error {
	updates := make(chan netlink.LinkUpdate, 512)
	done := make(chan struct{})
	defer close(done)
	subErr := make(chan error, 1)
	opts := netlink.LinkSubscribeOptions{
		ReceiveBufferSize: 1 << 20,
		ErrorCallback: func(err error) {
			select {
			case subErr <- err:
			default:
			}
		},
	}
	if w.cfg.NetnsPath != "" {
		// Subscribing in a namespace enters it (setns: CAP_SYS_ADMIN); the
		// agent's own namespace (hostNetwork: the node's) needs no entering.
		opts.Namespace = &ns
	}
	err := netlink.LinkSubscribeWithOptions(updates, done, opts)
	if err != nil {
		return fmt.Errorf("subscribe to links of netns %q: %w", w.cfg.NetnsPath, err)
	}
	h, err := routeHandle(w.cfg.NetnsPath, ns)
	if err != nil {
		return fmt.Errorf("netlink handle in netns %q: %w", w.cfg.NetnsPath, err)
	}
	links, err := h.LinkList()
	h.Close()
	if err != nil {
		return fmt.Errorf("list links of netns %q: %w", w.cfg.NetnsPath, err)
	}
	present := make(map[int]bool, len(links))
	for _, l := range links {
		if w.isPodFacing(l) {
			present[l.Attrs().Index] = true
			w.add(l, fn)
		}
	}
	w.mu.Lock()
	var gone []int
	for idx := range w.known {
		if !present[idx] {
			gone = append(gone, idx)
		}
	}
	w.mu.Unlock()
	for _, idx := range gone {
		w.remove(idx, fn)
	}
	fn(Event{Kind: Synced, NetnsPath: w.cfg.NetnsPath})

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-subErr:
			return fmt.Errorf("link subscription: %w", err)
		case u, ok := <-updates:
			if !ok {
				return errors.New("link subscription closed")
			}
			idx := u.Link.Attrs().Index
			if u.Header.Type == unix.RTM_DELLINK {
				if u.IfInfomsg.Family == unix.AF_BRIDGE {
					// A port leaving its bridge: the link stays.
					continue
				}
				w.remove(idx, fn)
				continue
			}
			switch w.classify(u.Link) {
			case podFacing:
				w.add(u.Link, fn)
			case notPodFacing:
				// A link that stopped qualifying (renamed to an excluded
				// prefix, peer moved back) is removed.
				w.remove(idx, fn)
			case unknown:
				// Says nothing about the link: a bridge port's state
				// (AF_BRIDGE, no link kind), or a veth announced before
				// its peer was linked. A later message will tell; one
				// known stays.
			}
		}
	}
}

func (w *Watcher) add(l netlink.Link, fn func(Event)) {
	a := l.Attrs()
	w.mu.Lock()
	name, ok := w.known[a.Index]
	if ok && name == a.Name {
		w.mu.Unlock()
		return
	}
	w.known[a.Index] = a.Name
	w.metrics.links.Set(float64(len(w.known)))
	w.mu.Unlock()
	klog.V(2).InfoS("Pod-facing interface", "ifindex", a.Index, "name", a.Name, "netns", w.cfg.NetnsPath)
	fn(Event{Kind: Added, Ifindex: a.Index, Name: a.Name, NetnsPath: w.cfg.NetnsPath})
}

func (w *Watcher) remove(idx int, fn func(Event)) {
	w.mu.Lock()
	name, ok := w.known[idx]
	if ok {
		delete(w.known, idx)
		w.metrics.links.Set(float64(len(w.known)))
	}
	w.mu.Unlock()
	if ok {
		klog.V(2).InfoS("Pod-facing interface gone", "ifindex", idx, "name", name, "netns", w.cfg.NetnsPath)
		fn(Event{Kind: Removed, Ifindex: idx, Name: name, NetnsPath: w.cfg.NetnsPath})
	}
}

// linkClass is what one link message says about a link.
type linkClass uint8

const (
	notPodFacing linkClass = iota
	podFacing
	unknown // the message does not say
)

// isPodFacing reports whether l, as listed, is a pod's host end.
func (w *Watcher) isPodFacing(l netlink.Link) bool { return w.classify(l) == podFacing }

// classify classifies l. The kernel names the namespace of a veth's peer
// (IFLA_LINK_NETNSID) only when it is another one, which is what makes a
// host end pod-facing whatever the CNI. Two kinds of message say nothing:
// a bridge port's (the bridge CNI, Flannel: its AF_BRIDGE messages carry no
// link kind, so the veth looks like a plain "device"), and a veth's first
// message when it was made with its peer in another namespace (no peer
// index or namespace yet: the next message, e.g. set up, has them).
func (w *Watcher) classify(l netlink.Link) linkClass {
	a := l.Attrs()
	for _, p := range w.cfg.ExcludePrefixes {
		if strings.HasPrefix(a.Name, p) {
			return notPodFacing
		}
	}
	if l.Type() == "device" && a.ParentIndex != 0 {
		// No link kind, yet a peer: a bridge port's message about a veth.
		return unknown
	}
	if l.Type() != "veth" {
		return notPodFacing
	}
	if a.NetNsID >= 0 {
		return podFacing
	}
	if a.ParentIndex == 0 {
		// No peer index and no peer namespace: not yet. Counted so a CNI
		// wiring we do not understand shows up (it would never resolve).
		w.metrics.unclassified.Inc()
		klog.V(2).InfoS("Cannot classify veth yet: no peer reported", "ifindex", a.Index, "name", a.Name, "netns", w.cfg.NetnsPath)
		return unknown
	}
	return notPodFacing // peer in this namespace: not a pod's
}

// Known returns the pod-facing interfaces currently known, by ifindex.
func (w *Watcher) Known() map[int]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[int]string, len(w.known))
	for k, v := range w.known {
		out[k] = v
	}
	return out
}
