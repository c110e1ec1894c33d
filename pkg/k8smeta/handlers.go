package k8smeta

import (
	"net/netip"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipindex"
)

// l7Mode reads the annotation of one object; an invalid value is logged
// (once per object and value) and treated as absent.
func (m *Meta) l7Mode(kind, namespace, name string, ann map[string]string) ipindex.L7Mode {
	key := kind + "/" + namespace + "/" + name
	v, ok := ann[ipindex.L7Annotation]
	if !ok {
		m.forgetInvalid(key)
		return ipindex.L7Unset
	}
	mode, err := ipindex.ParseL7Mode(v)
	if err != nil {
		m.invalidMu.Lock()
		seen, logged := m.invalid[key]
		m.invalid[key] = v
		m.invalidMu.Unlock()
		if !logged || seen != v {
			m.metrics.invalidL7.Inc()
			klog.InfoS("Ignoring invalid L7 export annotation", "kind", kind, "namespace", namespace, "name", name,
				"annotation", ipindex.L7Annotation, "value", v, "err", err)
		}
		return ipindex.L7Unset
	}
	m.forgetInvalid(key)
	return mode
}

func (m *Meta) forgetInvalid(key string) {
	m.invalidMu.Lock()
	delete(m.invalid, key)
	m.invalidMu.Unlock()
}

func (m *Meta) parseAddrs(resource string, ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		if s == "" || s == corev1.ClusterIPNone {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			m.metrics.badAddresses.WithLabelValues(resource).Inc()
			klog.V(2).InfoS("Ignoring unparsable address", "resource", resource, "address", s)
			continue
		}
		if !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func (m *Meta) onPod(p *cachedPod) {
	id := string(p.UID)
	if p.HostNetwork {
		// A host-network pod's address is its node's: it maps to the node.
		m.idx.SetHost("pod/"+id, p.NodeName, m.parseAddrs("pod", p.IPs...))
		m.local.deletePod(id) // its traffic is the node's: never mirrored
		return
	}
	var ips []netip.Addr
	// A finished pod keeps status.podIPs, but its sandbox is gone and the
	// address may already belong to another pod.
	if !p.Finished {
		ips = m.parseAddrs("pod", p.IPs...)
	}
	var ann map[string]string
	if p.HasL7 {
		ann = map[string]string{ipindex.L7Annotation: p.L7}
	}
	own := m.l7Mode("pod", p.Namespace, p.Name, ann)
	pod := &ipindex.Pod{
		Name:            p.Name,
		Namespace:       p.Namespace,
		Node:            p.NodeName,
		Labels:          p.LabelsJSON,
		L7:              own,
		OwnerKind:       p.OwnerKind,
		OwnerName:       p.OwnerName,
		TemplateHashLen: p.TemplateHashLen,
	}
	if err := m.idx.SetPod(id, ips, p.Start, pod); err != nil {
		klog.ErrorS(err, "Indexing pod", "pod", klog.KObj(p))
	}
	m.local.setPod(id, p.Namespace, p.Name, p.NodeName, ips, own)
}

func (m *Meta) onPodDelete(p *cachedPod) {
	m.idx.DeletePod(string(p.UID), time.Time{})
	m.idx.DeleteHost("pod/" + string(p.UID))
	m.local.deletePod(string(p.UID))
	m.forgetInvalid("pod/" + p.Namespace + "/" + p.Name)
}

func (m *Meta) onNamespace(n *corev1.Namespace) {
	mode := m.l7Mode("namespace", "", n.Name, n.Annotations)
	m.idx.SetNamespaceL7(n.Name, mode)
	m.local.setNamespace(n.Name, mode)
}

func (m *Meta) onNamespaceDelete(n *corev1.Namespace) {
	m.idx.SetNamespaceL7(n.Name, ipindex.L7Unset)
	m.local.setNamespace(n.Name, ipindex.L7Unset)
	m.forgetInvalid("namespace//" + n.Name)
}

func protoNumber(p corev1.Protocol) uint8 {
	switch p {
	case corev1.ProtocolUDP:
		return flow.ProtoUDP
	case corev1.ProtocolSCTP:
		return flow.ProtoSCTP
	}
	return flow.ProtoTCP // the API's default
}

// servicePortName is Antrea's encoding: "namespace/service:port-name"; a
// single unnamed port gives an empty port name.
func servicePortName(namespace, service, port string) string {
	return namespace + "/" + service + ":" + port
}

func (m *Meta) onService(s *corev1.Service) {
	key := s.Namespace + "/" + s.Name
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		m.idx.DeleteService(key)
		return
	}
	ports := make([]ipindex.ServicePort, 0, len(s.Spec.Ports))
	for _, p := range s.Spec.Ports {
		ports = append(ports, ipindex.ServicePort{
			Port: uint16(p.Port), Proto: protoNumber(p.Protocol), Name: servicePortName(s.Namespace, s.Name, p.Name),
		})
	}
	ips := append(append([]string(nil), s.Spec.ClusterIPs...), s.Spec.ClusterIP)
	m.idx.SetService(key, m.parseAddrs("service", ips...), ports)
}

func (m *Meta) onServiceDelete(s *corev1.Service) {
	m.idx.DeleteService(s.Namespace + "/" + s.Name)
}

func (m *Meta) onSlice(s *discoveryv1.EndpointSlice) {
	key := s.Namespace + "/" + s.Name
	svc := s.Labels[discoveryv1.LabelServiceName]
	if svc == "" || s.AddressType == discoveryv1.AddressTypeFQDN {
		m.idx.DeleteEndpoints(key)
		m.setRemote(key, nil)
		return
	}
	var eps []ipindex.EndpointPort
	remote := map[string]remoteEntry{}
	for _, e := range s.Endpoints {
		addrs := m.parseAddrs("endpointslice", e.Addresses...)
		for _, p := range s.Ports {
			if p.Port == nil {
				continue
			}
			proto := corev1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			for _, a := range addrs {
				eps = append(eps, ipindex.EndpointPort{
					IP: a, Port: uint16(*p.Port), Proto: protoNumber(proto), Name: servicePortName(s.Namespace, svc, name),
				})
			}
		}
		if m.cfg.OwnNodeOnly && e.TargetRef != nil && e.TargetRef.Kind == "Pod" &&
			e.NodeName != nil && *e.NodeName != m.cfg.NodeName {
			ns := e.TargetRef.Namespace
			if ns == "" {
				ns = s.Namespace
			}
			// The EndpointSlice controller sets the UID; hand-made slices
			// may not, and then the name stands in for it.
			id := string(e.TargetRef.UID)
			if id == "" {
				id = ns + "/" + e.TargetRef.Name
			}
			r := remote[id]
			r.pod = &ipindex.Pod{Name: e.TargetRef.Name, Namespace: ns, Node: *e.NodeName}
			r.addrs = append(r.addrs, addrs...)
			remote[id] = r
		}
	}
	m.idx.SetEndpoints(key, eps)
	if m.cfg.OwnNodeOnly {
		m.setRemote(key, remote)
	}
}

func (m *Meta) onSliceDelete(s *discoveryv1.EndpointSlice) {
	key := s.Namespace + "/" + s.Name
	m.idx.DeleteEndpoints(key)
	m.setRemote(key, nil)
}

type remoteEntry struct {
	pod   *ipindex.Pod
	addrs []netip.Addr
}

// setRemote replaces what slice key says about remote pods. A remote pod is
// indexed under the union of the addresses all slices list for it (one
// slice per address family) and removed when no slice lists it any more.
func (m *Meta) setRemote(key string, entries map[string]remoteEntry) {
	m.remoteMu.Lock()
	defer m.remoteMu.Unlock()
	touched := map[string]bool{}
	for _, uid := range m.sliceRem[key] {
		if r := m.remote[uid]; r != nil {
			delete(r.bySlic, key)
			touched[uid] = true
		}
	}
	delete(m.sliceRem, key)
	for uid, e := range entries {
		r := m.remote[uid]
		if r == nil {
			r = &remotePod{bySlic: map[string][]netip.Addr{}}
			m.remote[uid] = r
		}
		r.pod = e.pod
		r.bySlic[key] = e.addrs
		m.sliceRem[key] = append(m.sliceRem[key], uid)
		touched[uid] = true
	}
	for uid := range touched {
		r := m.remote[uid]
		id := "endpoint/" + uid
		if len(r.bySlic) == 0 {
			delete(m.remote, uid)
			m.idx.DeletePod(id, time.Time{})
			continue
		}
		var all []netip.Addr
		for _, as := range r.bySlic {
			for _, a := range as {
				if !slices.Contains(all, a) {
					all = append(all, a)
				}
			}
		}
		if err := m.idx.SetPod(id, all, time.Time{}, r.pod); err != nil {
			klog.ErrorS(err, "Indexing remote pod", "uid", uid)
		}
	}
}

func (m *Meta) onNode(n *corev1.Node) {
	m.idx.SetHost("node/"+n.Name, n.Name, m.nodeAddresses(n))
}

func (m *Meta) onNodeDelete(n *corev1.Node) { m.idx.DeleteHost("node/" + n.Name) }

// ownedKind names the objects whose controller the index follows one step
// up from a pod's owner: ReplicaSet (-> Deployment), Job (-> CronJob).
func ownedKind(obj metav1.Object) string {
	switch obj.(type) {
	case *appsv1.ReplicaSet:
		return "ReplicaSet"
	case *batchv1.Job:
		return "Job"
	}
	return ""
}

func (m *Meta) onOwned(obj metav1.Object) {
	kind := ownedKind(obj)
	if kind == "" {
		return
	}
	var ownerKind, ownerName string
	if c := metav1.GetControllerOfNoCopy(obj); c != nil {
		ownerKind, ownerName = c.Kind, c.Name
	}
	m.idx.SetOwner(kind, obj.GetNamespace(), obj.GetName(), ownerKind, ownerName)
}

func (m *Meta) onOwnedDelete(obj metav1.Object) {
	if kind := ownedKind(obj); kind != "" {
		m.idx.DeleteOwner(kind, obj.GetNamespace(), obj.GetName())
	}
}
