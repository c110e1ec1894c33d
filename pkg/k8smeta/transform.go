package k8smeta

import (
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flowlens/flowlens/pkg/k8smeta/ipindex"
)

// The informer caches hold every object of a kind; on a large cluster most
// of each object (managed fields, specs, container statuses) is never read
// here. These transforms run before an object enters the cache and rebuild
// it with only the fields the handlers read, which keeps the agent's memory
// proportional to what enrichment needs.

func stripMeta(m *metav1.ObjectMeta, keepLabels bool) metav1.ObjectMeta {
	out := metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp,
	}
	if keepLabels {
		out.Labels = m.Labels
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

// podConditionsKept are the conditions podStart reads.
var podConditionsKept = [...]corev1.PodConditionType{corev1.PodScheduled, corev1.PodReadyToStartContainers}

func transformPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		ObjectMeta: stripMeta(&p.ObjectMeta, true),
		Spec:       corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status:     corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	for _, c := range p.Status.Conditions {
		for _, k := range podConditionsKept {
			if c.Type == k {
				out.Status.Conditions = append(out.Status.Conditions, corev1.PodCondition{
					Type: c.Type, Status: c.Status, LastTransitionTime: c.LastTransitionTime,
				})
			}
		}
	}
	return out
}

func transformNamespace(n *corev1.Namespace) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: stripMeta(&n.ObjectMeta, false)}
}

func transformService(s *corev1.Service) *corev1.Service {
	out := &corev1.Service{
		ObjectMeta: stripMeta(&s.ObjectMeta, false),
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
		ObjectMeta:  stripMeta(&s.ObjectMeta, false),
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
	out := &corev1.Node{ObjectMeta: stripMeta(&n.ObjectMeta, false)}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			out.Status.Addresses = append(out.Status.Addresses, a)
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
		return &appsv1.ReplicaSet{ObjectMeta: stripMeta(&o.ObjectMeta, false)}, nil
	case *batchv1.Job:
		return &batchv1.Job{ObjectMeta: stripMeta(&o.ObjectMeta, false)}, nil
	}
	return obj, nil
}
