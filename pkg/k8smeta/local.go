package k8smeta

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"

	"github.com/flowlens/flowlens/pkg/ipindex"
)

// LocalPod is one of this node's pods that opted into L7 export.
type LocalPod struct {
	Namespace, Name string
	// IPs are the pod's current addresses (both of a dual-stack pod).
	IPs []netip.Addr
	// L7 is the effective mode: the pod's annotation, else its
	// namespace's. Never L7Unset.
	L7 ipindex.L7Mode
}

// LocalL7Pods returns this node's running pods whose effective L7 mode (the
// pod's own annotation, else its namespace's; the same rule as L7Want) is
// set, sorted by namespace and name. Host-network pods are not listed:
// their traffic is the node's. It costs O(local pods), not O(cluster).
func (m *Meta) LocalL7Pods() []LocalPod { return m.local.snapshot() }

// LocalL7Changes returns a channel that receives a value when the set
// LocalL7Pods returns (which pods, which addresses) may have changed: a
// local pod added, re-addressed, annotated or deleted, or an annotation
// changed on a namespace holding local pods. Changes coalesce: one value
// may stand for several; the receiver then calls LocalL7Pods. There is one
// channel per Meta, for one consumer.
func (m *Meta) LocalL7Changes() <-chan struct{} { return m.local.changed }

// localPods tracks the pods of the agent's node and the namespaces' L7
// modes, indexed so that a namespace event only looks at that namespace's
// local pods and a remote pod's event costs one map lookup.
type localPods struct {
	node    string
	changed chan struct{}

	mu     sync.Mutex
	pods   map[string]*localEntry         // pod UID ->
	byNS   map[string]map[string]struct{} // namespace -> UIDs of local pods
	nsMode map[string]ipindex.L7Mode      // namespaces with a mode set
}

type localEntry struct {
	namespace, name string
	ips             []netip.Addr
	own             ipindex.L7Mode
}

func newLocalPods(node string) *localPods {
	return &localPods{
		node:    node,
		changed: make(chan struct{}, 1),
		pods:    map[string]*localEntry{},
		byNS:    map[string]map[string]struct{}{},
		nsMode:  map[string]ipindex.L7Mode{},
	}
}

func (l *localPods) notify() {
	select {
	case l.changed <- struct{}{}:
	default: // one pending value already says "look again"
	}
}

// effective is e's mode; l.mu held.
func (l *localPods) effective(e *localEntry) ipindex.L7Mode {
	if e.own != ipindex.L7Unset {
		return e.own
	}
	return l.nsMode[e.namespace]
}

// mirrored is what e contributes to the opted-in set: its addresses when
// opted in (any mode), else nothing; l.mu held.
func (l *localPods) mirrored(e *localEntry) []netip.Addr {
	if e == nil || l.effective(e) == ipindex.L7Unset {
		return nil
	}
	return e.ips
}

// setPod records a pod's state: node, addresses (none for a finished or
// host-network pod) and its own annotation's mode.
func (l *localPods) setPod(uid, namespace, name, node string, ips []netip.Addr, own ipindex.L7Mode) {
	if node != l.node {
		// Pods do not move, but an unscheduled pod gets its node later;
		// a pod we had under another name of this node cannot exist.
		l.deletePod(uid)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.pods[uid]
	before := l.mirrored(old)
	e := &localEntry{namespace: namespace, name: name, ips: ips, own: own}
	l.pods[uid] = e
	if old == nil {
		set := l.byNS[namespace]
		if set == nil {
			set = map[string]struct{}{}
			l.byNS[namespace] = set
		}
		set[uid] = struct{}{}
	}
	if !slices.Equal(before, l.mirrored(e)) {
		l.notify()
	}
}

func (l *localPods) deletePod(uid string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.pods[uid]
	if e == nil {
		return
	}
	before := l.mirrored(e)
	delete(l.pods, uid)
	if set := l.byNS[e.namespace]; set != nil {
		delete(set, uid)
		if len(set) == 0 {
			delete(l.byNS, e.namespace)
		}
	}
	if len(before) > 0 {
		l.notify()
	}
}

// setNamespace records a namespace's mode (L7Unset: none, or deleted).
func (l *localPods) setNamespace(namespace string, mode ipindex.L7Mode) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.nsMode[namespace]
	if mode == ipindex.L7Unset {
		delete(l.nsMode, namespace)
	} else {
		l.nsMode[namespace] = mode
	}
	if (old == ipindex.L7Unset) == (mode == ipindex.L7Unset) {
		return // opted-in either way, or neither: no pod changes side
	}
	for uid := range l.byNS[namespace] {
		if e := l.pods[uid]; e.own == ipindex.L7Unset && len(e.ips) > 0 {
			l.notify()
			return
		}
	}
}

func (l *localPods) snapshot() []LocalPod {
	l.mu.Lock()
	out := make([]LocalPod, 0, len(l.pods))
	for _, e := range l.pods {
		if mode := l.effective(e); mode != ipindex.L7Unset && len(e.ips) > 0 {
			out = append(out, LocalPod{Namespace: e.namespace, Name: e.name, IPs: slices.Clone(e.ips), L7: mode})
		}
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b LocalPod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}
