package k8smeta

import (
	"encoding/json"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/flowlens/flowlens/pkg/ipindex"
)

// The informer caches hold every object of a kind; on a large cluster most
// of each object (managed fields, specs, container statuses) is never read
// here. These transforms run before an object enters the cache and rebuild
// it with only the fields the handlers read, which keeps the agent's memory
// proportional to what enrichment needs.

func stripMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	out := metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp,
	}
	if v, ok := m.Annotations[ipindex.L7Annotation]; ok {
		out.Annotations = map[string]string{ipindex.L7Annotation: v}
	}
	if c := metav1.GetControllerOfNoCopy(m); c != nil {
		out.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: c.APIVersion, Kind: c.Kind, Name: c.Name, UID: c.UID, Controller: c.Controller,
		}}
	}
	return out
}

// cachedPod is what the pod informer caches instead of a corev1.Pod: a
// corev1.Pod is 1.2 KB before any field is set, and pods are most of the
// objects an agent watches. The transform computes everything the handler
// needs (addresses, start estimate, owner, labels JSON), so the cache holds
// a few hundred bytes per pod. Only this package reads the cache (no
// listers), so no one expects a *corev1.Pod from it.
type cachedPod struct {
	metav1.TypeMeta
	// ObjectMeta carries only Name, Namespace, UID, ResourceVersion and
	// CreationTimestamp: what the informer's store and event handlers use.
	metav1.ObjectMeta
	NodeName    string
	HostNetwork bool
	// Finished: phase Succeeded or Failed; the sandbox and its IP are gone.
	Finished  bool
	IPs       []string
	Start     time.Time
	OwnerKind string
	OwnerName string
	// TemplateHashLen: see ipindex.Pod.TemplateHashLen.
	TemplateHashLen uint8
	L7              string
	HasL7           bool
	LabelsJSON      string
}

// DeepCopyObject implements runtime.Object.
func (p *cachedPod) DeepCopyObject() runtime.Object {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.IPs = append([]string(nil), p.IPs...)
	return &c
}

func podIPs(p *corev1.Pod) []string {
	ss := make([]string, 0, len(p.Status.PodIPs)+1)
	for _, ip := range p.Status.PodIPs {
		ss = append(ss, ip.IP)
	}
	if p.Status.PodIP != "" && !slices.Contains(ss, p.Status.PodIP) {
		ss = append(ss, p.Status.PodIP)
	}
	return ss
}

// podStart estimates when the pod received its IP: not before it was
// created, scheduled, or its sandbox became ready (PodReadyToStartContainers,
// set right after the CNI configured the network). Only matters when the IP
// had a previous holder: it is where that holder's interval ends.
func podStart(p *corev1.Pod) time.Time {
	t := p.CreationTimestamp.Time
	for _, c := range p.Status.Conditions {
		if c.Status == corev1.ConditionTrue && c.LastTransitionTime.After(t) &&
			(c.Type == corev1.PodScheduled || c.Type == corev1.PodReadyToStartContainers) {
			t = c.LastTransitionTime.Time
		}
	}
	return t
}

func labelsJSON(l map[string]string) string {
	if len(l) == 0 {
		return ""
	}
	b, err := json.Marshal(l) // map keys come out sorted: stable output
	if err != nil {
		return ""
	}
	return string(b)
}

func transformPod(p *corev1.Pod) *cachedPod {
	c := &cachedPod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID,
			ResourceVersion: p.ResourceVersion, CreationTimestamp: p.CreationTimestamp,
		},
		NodeName:    p.Spec.NodeName,
		HostNetwork: p.Spec.HostNetwork,
		Finished:    p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
		IPs:         podIPs(p),
		Start:       podStart(p),
		LabelsJSON:  labelsJSON(p.Labels),
	}
	c.L7, c.HasL7 = p.Annotations[ipindex.L7Annotation]
	if o := metav1.GetControllerOfNoCopy(p); o != nil {
		c.OwnerKind, c.OwnerName = o.Kind, o.Name
		if h := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]; o.Kind == "ReplicaSet" && h != "" && len(h) < 256 &&
			len(o.Name) > len(h)+1 && strings.HasSuffix(o.Name, "-"+h) {
			c.TemplateHashLen = uint8(len(h))
		}
	}
	return c
}

// ownerOnly is what the ReplicaSet and Job informers cache: a workload's
// identity and its controller, the one step up the owner chain the index
// follows. Every other field (spec, status, labels, annotations) is left
// out, so a cluster's thousands of old ReplicaSets (a Deployment keeps
// revisionHistoryLimit of them) cost a few hundred bytes each.
func ownerOnly(m *metav1.ObjectMeta) metav1.ObjectMeta {
	out := metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion}
	if c := metav1.GetControllerOfNoCopy(m); c != nil {
		out.OwnerReferences = []metav1.OwnerReference{{Kind: c.Kind, Name: c.Name, Controller: c.Controller}}
	}
	return out
}

func transformNamespace(n *corev1.Namespace) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: stripMeta(&n.ObjectMeta)}
}

func transformService(s *corev1.Service) *corev1.Service {
	out := &corev1.Service{
		ObjectMeta: stripMeta(&s.ObjectMeta),
		Spec: corev1.ServiceSpec{
			Type: s.Spec.Type, ClusterIP: s.Spec.ClusterIP, ClusterIPs: s.Spec.ClusterIPs,
		},
	}
	for _, p := range s.Spec.Ports {
		out.Spec.Ports = append(out.Spec.Ports, corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port})
	}
	return out
}

func transformEndpointSlice(s *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	out := &discoveryv1.EndpointSlice{
		ObjectMeta:  stripMeta(&s.ObjectMeta),
		AddressType: s.AddressType,
		Ports:       s.Ports,
	}
	if v, ok := s.Labels[discoveryv1.LabelServiceName]; ok {
		out.Labels = map[string]string{discoveryv1.LabelServiceName: v}
	}
	for _, e := range s.Endpoints {
		ne := discoveryv1.Endpoint{Addresses: e.Addresses, NodeName: e.NodeName}
		if r := e.TargetRef; r != nil {
			ne.TargetRef = &corev1.ObjectReference{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name, UID: r.UID}
		}
		out.Endpoints = append(out.Endpoints, ne)
	}
	return out
}

func transformNode(n *corev1.Node) *corev1.Node {
	out := &corev1.Node{ObjectMeta: stripMeta(&n.ObjectMeta)}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			out.Status.Addresses = append(out.Status.Addresses, a)
		}
	}
	// The node's other addresses (see nodeAddresses): pod CIDRs and the
	// CNI's address annotations, nothing else of either.
	out.Spec.PodCIDR = n.Spec.PodCIDR
	out.Spec.PodCIDRs = slices.Clone(n.Spec.PodCIDRs)
	for k, v := range n.Annotations {
		if nodeAddressAnnotation(k) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out
}

// transform is the one transform installed on every informer; objects of
// other types (tombstones) pass through unchanged.
func transform(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return transformPod(o), nil
	case *corev1.Namespace:
		return transformNamespace(o), nil
	case *corev1.Service:
		return transformService(o), nil
	case *discoveryv1.EndpointSlice:
		return transformEndpointSlice(o), nil
	case *corev1.Node:
		return transformNode(o), nil
	case *appsv1.ReplicaSet:
		return &appsv1.ReplicaSet{ObjectMeta: ownerOnly(&o.ObjectMeta)}, nil
	case *batchv1.Job:
		return &batchv1.Job{ObjectMeta: ownerOnly(&o.ObjectMeta)}, nil
	}
	return obj, nil
}
