package kubeapi

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// RunningPod describes a pod as a kubelet would report it once running.
type RunningPod struct {
	Namespace, Name string
	Node            string
	// IPs become status.podIP(s); give the addresses of the netns that
	// stands in for the pod.
	IPs         []string
	HostNetwork bool
	Labels      map[string]string
	Annotations map[string]string
	// Owner, if set, becomes the pod's controller reference.
	Owner *metav1.OwnerReference
}

// CreateRunningPod creates the pod and sets its phase and IPs through the
// status subresource, standing in for the kubelet this harness does not run.
func CreateRunningPod(ctx context.Context, cs kubernetes.Interface, rp RunningPod) (*corev1.Pod, error) {
	if len(rp.IPs) == 0 {
		return nil, errors.New("kubeapi: RunningPod.IPs is empty")
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: rp.Namespace, Name: rp.Name, Labels: rp.Labels, Annotations: rp.Annotations},
		Spec: corev1.PodSpec{
			NodeName:    rp.Node,
			HostNetwork: rp.HostNetwork,
			// Never pulled: nothing runs pods here.
			Containers: []corev1.Container{{Name: "main", Image: "registry.invalid/none:1"}},
		},
	}
	if rp.Owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*rp.Owner}
	}
	p, err := cs.CoreV1().Pods(rp.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubeapi: create pod %s/%s: %w", rp.Namespace, rp.Name, err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = rp.IPs[0]
	for _, ip := range rp.IPs {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	p, err = cs.CoreV1().Pods(rp.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubeapi: set status of pod %s/%s: %w", rp.Namespace, rp.Name, err)
	}
	return p, nil
}
