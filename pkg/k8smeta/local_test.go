package k8smeta

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flowlens/flowlens/pkg/ipindex"
)

// localSet renders LocalL7Pods as "ns/name=ip,ip:mode ..." for comparison.
func (e *env) localSet() string {
	var parts []string
	for _, p := range e.meta.LocalL7Pods() {
		ips := make([]string, len(p.IPs))
		for i, a := range p.IPs {
			ips[i] = a.String()
		}
		parts = append(parts, fmt.Sprintf("%s/%s=%s:%s", p.Namespace, p.Name, strings.Join(ips, ","), p.L7))
	}
	return strings.Join(parts, " ")
}

func (e *env) waitLocal(what, want string) {
	e.t.Helper()
	eventually(e.t, what, func() (string, bool) {
		got := e.localSet()
		return got, got == want
	})
}

// drain empties the change channel.
func (e *env) drain() {
	for {
		select {
		case <-e.meta.LocalL7Changes():
		default:
			return
		}
	}
}

// expectChange waits for a change notification.
func (e *env) expectChange(what string) {
	e.t.Helper()
	select {
	case <-e.meta.LocalL7Changes():
	case <-time.After(eventuallyWithin):
		e.t.Fatalf("%s: no change notification within %s", what, eventuallyWithin)
	}
}

func (e *env) setNamespaceAnnotation(name, v string) {
	e.t.Helper()
	n, err := e.client.CoreV1().Namespaces().Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if v == "" {
		delete(n.Annotations, ipindex.L7Annotation)
	} else {
		if n.Annotations == nil {
			n.Annotations = map[string]string{}
		}
		n.Annotations[ipindex.L7Annotation] = v
	}
	if _, err := e.client.CoreV1().Namespaces().Update(e.ctx, n, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func TestLocalL7PodsSelection(t *testing.T) {
	for _, ownNode := range []bool{false, true} {
		t.Run(fmt.Sprintf("ownNodeOnly=%v", ownNode), func(t *testing.T) {
			e := start(t, ownNode,
				namespace("shop", "both"), namespace("plain", ""), namespace("bad", "sideways"),
				// Namespace opt-in, any value of the pod's own wins.
				pod("shop", "web", "10.244.0.2"),
				pod("shop", "api", "10.244.0.3", annotate("egress")),
				// Pod opt-in in a namespace without one.
				pod("plain", "db", "10.244.0.4", annotate("ingress")),
				pod("plain", "cache", "10.244.0.5"),
				// Invalid values count as absent.
				pod("plain", "odd", "10.244.0.6", annotate("yes")),
				pod("bad", "x", "10.244.0.7"),
				// Other node, host network, finished: never listed.
				pod("shop", "remote", "10.244.1.2", onNode("node-b")),
				pod("shop", "hostnet", "192.168.1.10", hostNetwork()),
				pod("shop", "done", "10.244.0.8", phase(corev1.PodSucceeded)),
			)
			e.waitLocal("initial set",
				"plain/db=10.244.0.4:ingress shop/api=10.244.0.3:egress shop/web=10.244.0.2:both")
		})
	}
}

func TestLocalL7PodsFollowChanges(t *testing.T) {
	e := start(t, false, namespace("shop", ""), namespace("other", ""),
		pod("shop", "web", "10.244.0.2"))
	e.waitLocal("nothing opted in", "")
	e.drain()

	// Pod annotation added live.
	web := pod("shop", "web", "10.244.0.2", annotate("ingress"))
	e.updatePod(web)
	e.expectChange("pod annotated")
	e.waitLocal("pod opted in", "shop/web=10.244.0.2:ingress")

	// Namespace annotation: the pod's own still decides its mode.
	e.setNamespaceAnnotation("shop", "both")
	e.waitLocal("namespace annotated", "shop/web=10.244.0.2:ingress")

	// Pod opts out; the namespace's opt-in still covers it.
	e.drain()
	web = pod("shop", "web", "10.244.0.2")
	e.updatePod(web)
	e.waitLocal("pod annotation removed", "shop/web=10.244.0.2:both")

	// Namespace opts out: nothing left, and the consumer is told.
	e.drain()
	e.setNamespaceAnnotation("shop", "")
	e.expectChange("namespace annotation removed")
	e.waitLocal("namespace opted out", "")

	// A new local pod in an opted-in namespace, then its deletion.
	e.setNamespaceAnnotation("other", "egress")
	e.drain()
	e.createPod(pod("other", "job", "10.244.0.9"))
	e.expectChange("pod created")
	e.waitLocal("new pod", "other/job=10.244.0.9:egress")
	e.drain()
	e.deletePod("other", "job")
	e.expectChange("pod deleted")
	e.waitLocal("pod deleted", "")

	// A pod that gets its address later (scheduled, then sandbox ready).
	e.drain()
	late := pod("other", "late", "")
	late.Status.PodIPs = nil
	e.createPod(late)
	late = pod("other", "late", "10.244.0.10")
	e.updatePod(late)
	e.expectChange("pod got an address")
	e.waitLocal("pod with address", "other/late=10.244.0.10:egress")

	// A pod of another node opting in changes nothing here.
	e.drain()
	e.createPod(pod("other", "remote", "10.244.1.9", onNode("node-b")))
	e.createPod(pod("other", "sentinel", "10.244.0.11"))
	e.waitLocal("remote pod ignored", "other/late=10.244.0.10:egress other/sentinel=10.244.0.11:egress")
}

// Events that do not change the mirrored set must not wake the consumer:
// on a large cluster most pod events are other nodes' or label changes.
func TestLocalL7ChangesOnlyWhenTheSetChanges(t *testing.T) {
	e := start(t, false, namespace("shop", "both"), namespace("idle", ""),
		pod("shop", "web", "10.244.0.2"))
	e.waitLocal("initial", "shop/web=10.244.0.2:both")
	e.drain()

	e.updatePod(pod("shop", "web", "10.244.0.2", labels("v", "2")))                     // labels only
	e.createPod(pod("shop", "remote", "10.244.1.2", onNode("node-b")))                  // other node
	e.setNamespaceAnnotation("idle", "both")                                            // no local pods
	e.updatePod(pod("shop", "web", "10.244.0.2", labels("v", "3"), annotate("egress"))) // mode only
	// A sentinel that does change the set, after the others: once it is
	// seen, every earlier event has been handled.
	e.setNamespaceAnnotation("idle", "")
	e.createPod(pod("idle", "sentinel", "10.244.0.3", annotate("both")))
	e.waitLocal("sentinel", "idle/sentinel=10.244.0.3:both shop/web=10.244.0.2:egress")
	// Exactly the sentinel's notification (the channel holds one).
	select {
	case <-e.meta.LocalL7Changes():
	default:
		t.Fatal("no notification for the sentinel")
	}
	// Nothing queued behind it: the channel coalesces, so check that the
	// earlier events did not notify by re-running them alone.
	e.updatePod(pod("shop", "web", "10.244.0.2", labels("v", "4"))) // back to the namespace's mode
	e.createPod(pod("shop", "remote2", "10.244.1.3", onNode("node-b"), annotate("both")))
	e.setNamespaceAnnotation("idle", "ingress") // idle's only pod has its own mode
	e.setNamespaceAnnotation("shop", "ingress") // both -> ingress: web stays opted in
	// Both informers caught up: the probes (after the pod events) are
	// indexed with the namespaces' new modes.
	e.createPod(pod("idle", "probe", "10.244.1.4", onNode("node-b")))
	e.createPod(pod("shop", "probe", "10.244.1.5", onNode("node-b")))
	for _, ip := range []string{"10.244.1.4", "10.244.1.5"} {
		eventually(t, "probe "+ip+" indexed with its namespace's new mode", func() (string, bool) {
			p, ok := e.meta.LookupPod(netip.MustParseAddr(ip), time.Time{})
			return fmt.Sprint(p.L7), ok && p.L7 == ipindex.L7Ingress
		})
	}
	e.waitLocal("web follows shop's mode", "idle/sentinel=10.244.0.3:both shop/web=10.244.0.2:ingress")
	select {
	case <-e.meta.LocalL7Changes():
		t.Error("notified for events that leave the set unchanged")
	default:
	}
}

// The index is per UID: a pod deleted and re-created under the same name
// with another address is followed.
func TestLocalL7PodRecreated(t *testing.T) {
	e := start(t, true, namespace("shop", "both"), pod("shop", "web", "10.244.0.2"))
	e.waitLocal("initial", "shop/web=10.244.0.2:both")
	e.deletePod("shop", "web")
	p := pod("shop", "web", "10.244.0.7")
	p.UID = "uid-new"
	e.createPod(p)
	e.waitLocal("re-created", "shop/web=10.244.0.7:both")
}
