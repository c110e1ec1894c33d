// Package ipindex is the lookup structure behind enrichment: IP -> pod by
// time, IP -> node, Service ClusterIP -> port names, endpoint -> Service, and
// the L7 opt-in modes of pods and their namespaces. pkg/k8smeta feeds it from
// informers and pkg/inventory from a file; both answer Enrich and L7Want
// through it, so the semantics are the same with or without Kubernetes.
//
// Time semantics. Pod IPs are reused, so every IP keeps a short history of
// holders, each covering [from, until). A connection is attributed to the
// holder whose interval contains the connection's start time:
//   - the first holder an IP ever had (as far as the index knows) also covers
//     everything before its start, which absorbs clock skew between the node
//     (conntrack timestamps) and the API server (pod timestamps);
//   - a new holder ends the previous one at the new holder's start, whichever
//     order the "new pod" and "old pod deleted" events arrive in;
//   - a deleted holder's interval is closed at the deletion time and kept for
//     the grace period, so a late export of a connection that started while
//     it lived still maps to it; after that it is forgotten.
//
// Connections with an unknown start time (nf_conntrack_timestamp off) map to
// the current holder, or to the last holder if it left less than the grace
// period ago.
package ipindex

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Pod is one workload instance: a Kubernetes pod or an inventory entry. The
// index keeps the pointer; callers must not modify a Pod after passing it in
// (send a new one with SetPod instead).
type Pod struct {
	Name      string
	Namespace string
	Node      string
	// Labels is the pod's labels as a JSON object, precomputed so that
	// enrichment copies a string instead of encoding per record.
	Labels string
	// L7 is the pod's own annotation; L7Unset defers to the namespace.
	L7 L7Mode
	// OwnerKind/OwnerName are the pod's controller as its ownerReferences name
	// it (empty for a bare pod). The workload is one more step up through
	// SetOwner: ReplicaSet -> Deployment, Job -> CronJob.
	OwnerKind string
	OwnerName string
	// TemplateHashLen is the length of the pod's pod-template-hash label
	// when OwnerName (a ReplicaSet) ends in "-<hash>", else 0. Only the
	// Deployment controller sets that label, so a pod whose ReplicaSet
	// the index does not know (yet: informers deliver kinds in no set
	// order) still resolves to its Deployment: the ReplicaSet's name minus
	// "-<hash>". A length rather than the hash: a byte per pod, not a string.
	TemplateHashLen uint8
}

// PodInfo is what LookupPod returns: a copy, safe to keep.
type PodInfo struct {
	Name, Namespace, Node string
	Labels                string
	WorkloadKind          string
	WorkloadName          string
	// L7 is the effective mode: the pod's annotation, else its namespace's.
	L7 L7Mode
}

// ServicePort is one port of a Service as clients dial it.
type ServicePort struct {
	Port  uint16
	Proto uint8
	// Name is the exported ServicePortName, "namespace/service:port-name".
	Name string
}

// EndpointPort is one (address, port) an EndpointSlice routes a Service port to.
type EndpointPort struct {
	IP    netip.Addr
	Port  uint16
	Proto uint8
	Name  string // "namespace/service:port-name"
}

// Config configures an Index.
type Config struct {
	// LocalNode is the node the agent runs on; flow types are relative to it.
	LocalNode string
	// GracePeriod is how long a deleted pod's IP history is kept. Zero means
	// DefaultGracePeriod.
	GracePeriod time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// DefaultGracePeriod covers an exporter's idle timeout plus conntrack's
// delayed DESTROY events with a wide margin.
const DefaultGracePeriod = 5 * time.Minute

type holding struct {
	pod   *Pod
	ns    *nsState // the pod's namespace, resolved once so lookups hash no strings
	id    string
	from  int64 // Unix ns; math.MinInt64 for the first holder
	until int64 // Unix ns; 0 while the holder still has the IP
}

type ipKey = [16]byte

type epKey struct {
	ip    ipKey
	port  uint16
	proto uint8
}

type objKey struct{ kind, namespace, name string }

type ownerRef struct{ kind, name string }

type hostIP struct {
	node   string
	owners map[string]struct{}
}

// nsState is shared by all holdings in one namespace; SetNamespaceL7
// updates it in place.
type nsState struct{ l7 L7Mode }

type service struct {
	key   string
	ports []ServicePort
}

// Index is safe for concurrent use: many readers (enrichment, L7 policy) and
// the writers that feed it.
type Index struct {
	localNode string
	grace     int64
	now       func() time.Time

	mu        shardedRWMutex
	ips       map[ipKey][]holding
	podIPs    map[string][]ipKey // holder id -> IPs it holds or held
	hosts     map[ipKey]*hostIP
	hostIPs   map[string][]ipKey // host owner id -> IPs
	services  map[ipKey]*service
	svcIPs    map[string][]ipKey // service key -> ClusterIPs
	epRefs    map[epKey]map[string]int
	epBest    map[epKey]string
	slices    map[string][]EndpointPort
	nsL7      map[string]*nsState
	owners    map[objKey]ownerRef
	lastPurge int64
}

// New returns an empty Index.
func New(cfg Config) (*Index, error) {
	if cfg.GracePeriod < 0 {
		return nil, fmt.Errorf("ipindex: GracePeriod %v is negative", cfg.GracePeriod)
	}
	if cfg.GracePeriod == 0 {
		cfg.GracePeriod = DefaultGracePeriod
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Index{
		localNode: cfg.LocalNode,
		grace:     int64(cfg.GracePeriod),
		now:       cfg.Now,
		ips:       map[ipKey][]holding{},
		podIPs:    map[string][]ipKey{},
		hosts:     map[ipKey]*hostIP{},
		hostIPs:   map[string][]ipKey{},
		services:  map[ipKey]*service{},
		svcIPs:    map[string][]ipKey{},
		epRefs:    map[epKey]map[string]int{},
		epBest:    map[epKey]string{},
		slices:    map[string][]EndpointPort{},
		nsL7:      map[string]*nsState{},
		owners:    map[objKey]ownerRef{},
	}, nil
}

// ErrNilPod is returned by SetPod for a nil pod.
var ErrNilPod = errors.New("ipindex: nil pod")

// SetPod records that holder id (a pod UID, an inventory entry key) has
// exactly the given IPs, holding them since from (zero: now). IPs it no
// longer lists are released now. Calling it again with the same IPs only
// replaces the Pod (labels, annotation): the intervals stay as first recorded.
func (x *Index) SetPod(id string, ips []netip.Addr, from time.Time, p *Pod) error {
	if p == nil {
		return ErrNilPod
	}
	now := x.now().UnixNano()
	f := now
	if !from.IsZero() {
		f = from.UnixNano()
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.purgeLocked(now)

	old := x.podIPs[id]
	keep := old[:0:0]
	for _, k := range old {
		if !containsAddr(ips, k) {
			x.closeLocked(k, id, now)
		}
		// A released IP stays listed until purge forgets its history.
		keep = append(keep, k)
	}
	for _, a := range ips {
		if !a.IsValid() {
			continue
		}
		k := a.As16()
		if !x.updateHolderLocked(k, id, p) {
			if x.openLocked(k, id, f, p) && !containsKey(keep, k) {
				keep = append(keep, k)
			}
		}
	}
	x.podIPs[id] = keep
	return nil
}

// DeletePod records that holder id released all its IPs at `at` (zero: now).
func (x *Index) DeletePod(id string, at time.Time) {
	now := x.now().UnixNano()
	t := now
	if !at.IsZero() {
		t = at.UnixNano()
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, k := range x.podIPs[id] {
		x.closeLocked(k, id, t)
	}
	x.purgeLocked(now)
}

func containsAddr(ips []netip.Addr, k ipKey) bool {
	for _, a := range ips {
		if a.IsValid() && a.As16() == k {
			return true
		}
	}
	return false
}

func containsKey(ks []ipKey, k ipKey) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

// updateHolderLocked replaces the Pod of id's current holding of k. A closed
// holding does not count: an inventory entry removed and added back holds the
// IP anew.
func (x *Index) updateHolderLocked(k ipKey, id string, p *Pod) bool {
	hs := x.ips[k]
	for i := range hs {
		if hs[i].id == id && hs[i].until == 0 {
			hs[i].pod = p
			hs[i].ns = x.nsLocked(p.Namespace)
			return true
		}
	}
	return false
}

// openLocked appends a holding of k by id starting at from; it ends the
// previous holder's interval there. It refuses a holder that starts before
// the current one: that is a stale report of a pod the IP already moved on
// from, and accepting it would cut the current holder off.
func (x *Index) openLocked(k ipKey, id string, from int64, p *Pod) bool {
	hs := x.ips[k]
	if len(hs) == 0 {
		x.ips[k] = []holding{{pod: p, ns: x.nsLocked(p.Namespace), id: id, from: math.MinInt64}}
		return true
	}
	last := &hs[len(hs)-1]
	if last.from != math.MinInt64 && from < last.from {
		return false
	}
	if from <= last.from {
		from = last.from + 1
	}
	if last.until == 0 || last.until > from {
		last.until = from
	}
	x.ips[k] = append(hs, holding{pod: p, ns: x.nsLocked(p.Namespace), id: id, from: from})
	return true
}

func (x *Index) closeLocked(k ipKey, id string, at int64) {
	hs := x.ips[k]
	for i := range hs {
		h := &hs[i]
		if h.id != id {
			continue
		}
		if at <= h.from {
			at = h.from + 1
		}
		if h.until == 0 || at < h.until {
			h.until = at
		}
	}
}

// purgeLocked forgets holdings that ended more than the grace period ago. It
// runs from the writers, at most a few times per grace period, so the hot
// path never pays for it.
func (x *Index) purgeLocked(now int64) {
	every := x.grace / 10
	if now-x.lastPurge < every {
		return
	}
	x.lastPurge = now
	cutoff := now - x.grace
	var gone []string
	for k, hs := range x.ips {
		n := 0
		gone = gone[:0]
		for _, h := range hs {
			if h.until != 0 && h.until < cutoff {
				gone = append(gone, h.id)
				continue
			}
			hs[n] = h
			n++
		}
		clear(hs[n:])
		hs = hs[:n]
		if n == 0 {
			delete(x.ips, k)
		} else {
			x.ips[k] = hs
		}
		for _, id := range gone {
			// An inventory entry removed and added back holds k again
			// under the same id: keep tracking k for it.
			if !slices.ContainsFunc(hs, func(h holding) bool { return h.id == id }) {
				x.forgetLocked(id, k)
			}
		}
	}
}

func (x *Index) forgetLocked(id string, k ipKey) {
	ks := x.podIPs[id]
	for i, v := range ks {
		if v == k {
			ks = append(ks[:i], ks[i+1:]...)
			break
		}
	}
	if len(ks) == 0 {
		delete(x.podIPs, id)
	} else {
		x.podIPs[id] = ks
	}
}

// SetHost maps ips to node for owner id (a Node, a host-network pod); those
// IPs then resolve to the node, not to a pod.
func (x *Index) SetHost(id, node string, ips []netip.Addr) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deleteHostLocked(id)
	var ks []ipKey
	for _, a := range ips {
		if !a.IsValid() {
			continue
		}
		k := a.As16()
		h := x.hosts[k]
		if h == nil {
			h = &hostIP{node: node, owners: map[string]struct{}{}}
			x.hosts[k] = h
		}
		h.owners[id] = struct{}{}
		ks = append(ks, k)
	}
	if len(ks) > 0 {
		x.hostIPs[id] = ks
	}
}

// DeleteHost removes what SetHost recorded for id.
func (x *Index) DeleteHost(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deleteHostLocked(id)
}

func (x *Index) deleteHostLocked(id string) {
	for _, k := range x.hostIPs[id] {
		h := x.hosts[k]
		if h == nil {
			continue
		}
		delete(h.owners, id)
		if len(h.owners) == 0 {
			delete(x.hosts, k)
		}
	}
	delete(x.hostIPs, id)
}

// SetService records a Service's ClusterIPs and ports under key
// ("namespace/name"), replacing what was there.
func (x *Index) SetService(key string, clusterIPs []netip.Addr, ports []ServicePort) {
	s := &service{key: key, ports: append([]ServicePort(nil), ports...)}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deleteServiceLocked(key)
	var ks []ipKey
	for _, a := range clusterIPs {
		if !a.IsValid() {
			continue
		}
		k := a.As16()
		x.services[k] = s
		ks = append(ks, k)
	}
	if len(ks) > 0 {
		x.svcIPs[key] = ks
	}
}

// DeleteService removes a Service recorded by SetService.
func (x *Index) DeleteService(key string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deleteServiceLocked(key)
}

func (x *Index) deleteServiceLocked(key string) {
	for _, k := range x.svcIPs[key] {
		// Another Service may have taken the IP since (deleted and recreated
		// with the same ClusterIP); leave that one alone.
		if s := x.services[k]; s != nil && s.key == key {
			delete(x.services, k)
		}
	}
	delete(x.svcIPs, key)
}

// SetEndpoints records the endpoints one EndpointSlice (key) contributes,
// replacing its previous contribution.
func (x *Index) SetEndpoints(key string, eps []EndpointPort) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deleteEndpointsLocked(key)
	kept := make([]EndpointPort, 0, len(eps))
	for _, e := range eps {
		if !e.IP.IsValid() {
			continue
		}
		kept = append(kept, e)
		k := epKey{ip: e.IP.As16(), port: e.Port, proto: e.Proto}
		refs := x.epRefs[k]
		if refs == nil {
			refs = map[string]int{}
			x.epRefs[k] = refs
		}
		refs[e.Name]++
		x.pickEndpointLocked(k)
	}
	if len(kept) > 0 {
		x.slices[key] = kept
	}
}

// DeleteEndpoints removes what SetEndpoints recorded for key.
func (x *Index) DeleteEndpoints(key string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deleteEndpointsLocked(key)
}

func (x *Index) deleteEndpointsLocked(key string) {
	for _, e := range x.slices[key] {
		k := epKey{ip: e.IP.As16(), port: e.Port, proto: e.Proto}
		refs := x.epRefs[k]
		if refs == nil {
			continue
		}
		if refs[e.Name]--; refs[e.Name] <= 0 {
			delete(refs, e.Name)
		}
		if len(refs) == 0 {
			delete(x.epRefs, k)
		}
		x.pickEndpointLocked(k)
	}
	delete(x.slices, key)
}

// pickEndpointLocked precomputes the name an endpoint maps to. An endpoint
// behind several Services maps to the smallest name, so the answer does not
// depend on event order.
func (x *Index) pickEndpointLocked(k epKey) {
	refs := x.epRefs[k]
	if len(refs) == 0 {
		delete(x.epBest, k)
		return
	}
	names := make([]string, 0, len(refs))
	for n := range refs {
		names = append(names, n)
	}
	sort.Strings(names)
	x.epBest[k] = names[0]
}

// SetNamespaceL7 records a namespace's (or inventory group's) L7 mode;
// L7Unset removes it.
func (x *Index) SetNamespaceL7(ns string, m L7Mode) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.nsLocked(ns).l7 = m
}

// nsLocked returns the shared state of a namespace, creating it. States are
// never removed: there are few namespaces, and holdings point at them.
func (x *Index) nsLocked(ns string) *nsState {
	s := x.nsL7[ns]
	if s == nil {
		s = &nsState{}
		x.nsL7[ns] = s
	}
	return s
}

// SetOwner records that object (kind, namespace, name) is controlled by
// (ownerKind, ownerName); an empty ownerKind records that it has no
// controller, which is not the same as not knowing it (see
// Pod.TemplateHashLen: a ReplicaSet orphaned from its deleted Deployment
// is its pods' workload, whatever their labels say).
func (x *Index) SetOwner(kind, namespace, name, ownerKind, ownerName string) {
	k := objKey{kind: kind, namespace: namespace, name: name}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.owners[k] = ownerRef{kind: ownerKind, name: ownerName}
}

// DeleteOwner forgets object (kind, namespace, name) (it was deleted).
func (x *Index) DeleteOwner(kind, namespace, name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.owners, objKey{kind: kind, namespace: namespace, name: name})
}

// Stats are sizes for gauges.
type Stats struct {
	IPs, Holders, HostIPs, ClusterIPs, Endpoints int
}

// Stats returns the current sizes.
func (x *Index) Stats() Stats {
	defer x.mu.RUnlock(x.mu.RLock())
	return Stats{IPs: len(x.ips), Holders: len(x.podIPs), HostIPs: len(x.hosts), ClusterIPs: len(x.services), Endpoints: len(x.epBest)}
}

// endKind classifies one end of a connection.
type endKind uint8

const (
	endExternal endKind = iota
	endPod
	endHost
)

type end struct {
	kind endKind
	pod  *Pod
	node string
}

// resolveLocked finds who had ip at start (Unix ns, 0 = unknown); now is
// needed only for an unknown start and is read lazily, because the clock
// costs more than the rest of a lookup. It does not allocate.
func (x *Index) resolveLocked(ip ipKey, start int64, now *int64) end {
	if h := x.holderLocked(ip, start, now); h != nil {
		return end{kind: endPod, pod: h.pod, node: h.pod.Node}
	}
	if h := x.hosts[ip]; h != nil {
		return end{kind: endHost, node: h.node}
	}
	return end{}
}

func (x *Index) holderLocked(ip ipKey, start int64, now *int64) *holding {
	hs := x.ips[ip]
	if len(hs) == 0 {
		return nil
	}
	if start == 0 {
		last := &hs[len(hs)-1]
		if last.until == 0 {
			return last
		}
		if *now == 0 {
			*now = x.now().UnixNano()
		}
		if *now-last.until <= x.grace {
			return last
		}
		return nil
	}
	for i := len(hs) - 1; i >= 0; i-- {
		h := &hs[i]
		if start >= h.from {
			if h.until == 0 || start < h.until {
				return h
			}
			return nil
		}
	}
	return nil
}

// mode is a holder's effective L7 mode: its own, else its namespace's.
func (h *holding) mode() L7Mode {
	if h.pod.L7 != L7Unset {
		return h.pod.L7
	}
	return h.ns.l7
}

// workloadLocked is p's owning workload: its controller, or the
// controller's own controller where the index knows one (ReplicaSet ->
// Deployment, Job -> CronJob). A bare pod has none: empty, so that it is
// named by the pod alone rather than by a workload that looks like one.
// It does not allocate.
func (x *Index) workloadLocked(p *Pod) (kind, name string) {
	if p.OwnerKind == "" {
		return "", ""
	}
	if o, ok := x.owners[objKey{kind: p.OwnerKind, namespace: p.Namespace, name: p.OwnerName}]; ok {
		if o.kind == "" {
			return p.OwnerKind, p.OwnerName // known to have no controller
		}
		return o.kind, o.name
	}
	if n := int(p.TemplateHashLen); p.OwnerKind == "ReplicaSet" && n > 0 && len(p.OwnerName) > n+1 && p.OwnerName[len(p.OwnerName)-n-1] == '-' {
		return "Deployment", p.OwnerName[:len(p.OwnerName)-n-1]
	}
	return p.OwnerKind, p.OwnerName
}

// LookupPod returns the pod that had ip at `at` (zero: whoever has it now).
func (x *Index) LookupPod(ip netip.Addr, at time.Time) (PodInfo, bool) {
	var start, now int64
	if !at.IsZero() {
		start = at.UnixNano()
	}
	defer x.mu.RUnlock(x.mu.RLock())
	h := x.holderLocked(ip.As16(), start, &now)
	if h == nil {
		return PodInfo{}, false
	}
	p := h.pod
	kind, name := x.workloadLocked(p)
	return PodInfo{
		Name: p.Name, Namespace: p.Namespace, Node: p.Node, Labels: p.Labels,
		WorkloadKind: kind, WorkloadName: name, L7: h.mode(),
	}, true
}

// Enrich fills r's Kubernetes context: both endpoints, the Service port name
// and ClusterIP flag, and the flow type. It overwrites those fields and does
// not allocate. A record without a start time is resolved as of its export
// time (else now).
func (x *Index) Enrich(r *flow.Record) {
	now := r.ExportNanos
	defer x.mu.RUnlock(x.mu.RLock())
	src := x.resolveLocked(r.Tuple.SrcIP, r.StartNanos, &now)
	dst := x.resolveLocked(r.Tuple.DstIP, r.StartNanos, &now)
	r.Source = x.endpointLocked(src)
	r.Destination = x.endpointLocked(dst)

	r.ClusterIP = false
	r.ServicePortName = ""
	if s := x.services[r.OrigDstIP]; s != nil {
		r.ClusterIP = true
		for i := range s.ports {
			if p := &s.ports[i]; p.Port == r.OrigDstPort && p.Proto == r.Tuple.Proto {
				r.ServicePortName = p.Name
				break
			}
		}
	} else if r.IsDNATed() {
		// NodePort, LoadBalancer, externalIPs: the dialled address is not a
		// ClusterIP, but the endpoint it was translated to names the Service.
		r.ServicePortName = x.epBest[epKey{ip: r.Tuple.DstIP, port: r.Tuple.DstPort, proto: r.Tuple.Proto}]
	}
	r.FlowType = x.flowType(src, dst)
}

func (x *Index) endpointLocked(e end) flow.Endpoint {
	switch e.kind {
	case endPod:
		kind, name := x.workloadLocked(e.pod)
		return flow.Endpoint{PodName: e.pod.Name, PodNamespace: e.pod.Namespace, NodeName: e.pod.Node, Labels: e.pod.Labels,
			WorkloadKind: kind, WorkloadName: name}
	case endHost:
		return flow.Endpoint{NodeName: e.node}
	}
	return flow.Endpoint{}
}

// flowType: both ends inside the cluster (pods or nodes) are intra-node when
// both are on the agent's node, else inter-node; one end outside makes it
// to- or from-external by which end that is.
func (x *Index) flowType(src, dst end) flow.FlowType {
	srcIn, dstIn := src.kind != endExternal, dst.kind != endExternal
	switch {
	case srcIn && dstIn:
		if src.node == x.localNode && dst.node == x.localNode {
			return flow.FlowTypeIntraNode
		}
		return flow.FlowTypeInterNode
	case srcIn:
		return flow.FlowTypeToExternal
	case dstIn:
		return flow.FlowTypeFromExternal
	}
	return flow.FlowTypeUnknown
}

// L7Want says which ends of c opted into L7 export. Only pods opt in: node
// and external ends never do. It does not allocate.
func (x *Index) L7Want(c *flow.Conn) flow.L7Want {
	var now int64
	defer x.mu.RUnlock(x.mu.RLock())
	var sm, dm L7Mode
	if h := x.holderLocked(c.Tuple.SrcIP, c.StartNanos, &now); h != nil {
		sm = h.mode()
	}
	if h := x.holderLocked(c.Tuple.DstIP, c.StartNanos, &now); h != nil {
		dm = h.mode()
	}
	return want(sm, dm)
}

// NamespaceOf returns the namespace of the pod that has addr now (or left it
// less than the grace period ago), "" for anything else. It matches
// pkg/l7's Config.NamespaceOf and does not allocate.
func (x *Index) NamespaceOf(addr netip.Addr) string {
	var now int64
	defer x.mu.RUnlock(x.mu.RLock())
	if h := x.holderLocked(addr.As16(), 0, &now); h != nil {
		return h.pod.Namespace
	}
	return ""
}
