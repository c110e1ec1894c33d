package agent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipindex"
	"github.com/flowlens/flowlens/pkg/k8smeta"
)

type fakeOptIns struct {
	mu      sync.Mutex
	pods    []k8smeta.LocalPod
	changed chan struct{}
}

func newFakeOptIns(pods ...k8smeta.LocalPod) *fakeOptIns {
	return &fakeOptIns{pods: pods, changed: make(chan struct{}, 1)}
}

func (f *fakeOptIns) LocalL7Pods() []k8smeta.LocalPod {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.pods)
}

func (f *fakeOptIns) LocalL7Changes() <-chan struct{} { return f.changed }

func (f *fakeOptIns) set(pods ...k8smeta.LocalPod) {
	f.mu.Lock()
	f.pods = pods
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

type fakeMirror struct {
	calls  chan []netip.Addr
	mu     sync.Mutex
	err    error
	closed int
	after  int // Reconcile calls after Close
}

func newFakeMirror() *fakeMirror { return &fakeMirror{calls: make(chan []netip.Addr, 1000)} }

func (f *fakeMirror) Reconcile(want []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed > 0 {
		f.after++
	}
	f.calls <- want
	return f.err
}

func (f *fakeMirror) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
	return nil
}

func (f *fakeMirror) setErr(err error) { f.mu.Lock(); f.err = err; f.mu.Unlock() }

// next waits for a Reconcile call.
func (f *fakeMirror) next(t *testing.T, what string) []netip.Addr {
	t.Helper()
	select {
	case w := <-f.calls:
		return w
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no reconcile", what)
		return nil
	}
}

// until waits for a Reconcile call with exactly want.
func (f *fakeMirror) until(t *testing.T, what string, want ...netip.Addr) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case w := <-f.calls:
			if slices.Equal(w, want) {
				return
			}
		case <-deadline:
			t.Fatalf("%s: no reconcile with %v", what, want)
		}
	}
}

func lp(ns, name string, ips ...string) k8smeta.LocalPod {
	p := k8smeta.LocalPod{Namespace: ns, Name: name, L7: ipindex.L7Ingress}
	for _, ip := range ips {
		p.IPs = append(p.IPs, netip.MustParseAddr(ip))
	}
	return p
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestMirrorStageReconcilesOnStartChangesAndTimer(t *testing.T) {
	pods := newFakeOptIns(lp("shop", "web", "10.244.0.2", "fd00::2"))
	fm := newFakeMirror()
	reg := prometheus.NewRegistry()
	// A long interval first: only changes may cause reconciles.
	s, err := newMirrorStageWith(pods, func() (trafficMirror, error) { return fm, nil }, time.Hour, reg)
	if err != nil {
		t.Fatal(err)
	}
	stop, err := s.start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Both addresses of the dual-stack pod, at once.
	if got := fm.next(t, "start"); !slices.Equal(got, addrs("10.244.0.2", "fd00::2")) {
		t.Errorf("first reconcile %v", got)
	}
	pods.set(lp("shop", "web", "10.244.0.2", "fd00::2"), lp("shop", "api", "10.244.0.3"))
	if got := fm.next(t, "change"); !slices.Equal(got, addrs("10.244.0.2", "fd00::2", "10.244.0.3")) {
		t.Errorf("after the change %v", got)
	}
	if v := value(s.m.wanted); v != 3 {
		t.Errorf("wanted addresses gauge %v, want 3", v)
	}
	pods.set() // every pod opted out
	if got := fm.next(t, "opt-out"); len(got) != 0 {
		t.Errorf("after the opt-out %v, want nothing", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	fm.mu.Lock()
	closed, after := fm.closed, fm.after
	fm.mu.Unlock()
	if closed != 1 || after != 0 {
		t.Errorf("Close called %d times, %d reconciles after it; want 1 and 0", closed, after)
	}
	if n := value(s.m.reconciles); n != 3 {
		t.Errorf("reconciles %v, want 3 (start, two changes; no timer yet)", n)
	}
}

func TestMirrorStageRetriesOnTheTimerAndCountsErrors(t *testing.T) {
	pods := newFakeOptIns(lp("shop", "web", "10.244.0.2"))
	fm := newFakeMirror()
	fm.setErr(errors.New("mirror veth9 (ifindex 9): no such device"))
	s, err := newMirrorStageWith(pods, func() (trafficMirror, error) { return fm, nil }, 20*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop, err := s.start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stop() }()
	// Without any change, the timer retries.
	for i := range 3 {
		if got := fm.next(t, "retry"); !slices.Equal(got, addrs("10.244.0.2")) {
			t.Errorf("reconcile %d: %v", i, got)
		}
	}
	if n := value(s.m.errors); n < 3 {
		t.Errorf("errors counted %v, want >= 3", n)
	}
	fm.setErr(nil)
	fm.until(t, "converged", addrs("10.244.0.2")...)
}

func TestMirrorStageOpenFailureIsFatalAndNamesTheSetting(t *testing.T) {
	s, err := newMirrorStageWith(newFakeOptIns(), func() (trafficMirror, error) {
		return nil, errors.New("create capture veth flc0/flc1: operation not permitted")
	}, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "mirror.enabled") || !strings.Contains(err.Error(), "operation not permitted") {
		t.Errorf("start error %v; want the cause and the setting that turns the mirror off", err)
	}
}

func TestNewMirrorStageFromConfig(t *testing.T) {
	on, off := true, false
	cfg := agentconfig.Default()
	cfg.Mirror.Enabled = &off
	if s, err := newMirrorStage(cfg, nil, nil); s != nil || err != nil {
		t.Errorf("disabled: stage %v, err %v; want neither", s, err)
	}
	cfg.Mirror.Enabled = &on
	if _, err := newMirrorStage(cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "kubernetes.enabled") {
		t.Errorf("enabled without a context source: err %v, want one naming kubernetes.enabled", err)
	}
	// An inventory context knows no local pods of a node.
	inv := &contextStage{src: &fakeContext{}}
	if _, err := newMirrorStage(cfg, inv, nil); err == nil {
		t.Error("enabled with a context source that lists no local pods: no error")
	}
	k8s := &contextStage{src: struct {
		contextSource
		localOptIns
	}{&fakeContext{}, newFakeOptIns()}}
	s, err := newMirrorStage(cfg, k8s, nil)
	if err != nil || s == nil {
		t.Fatalf("enabled with a Kubernetes context: stage %v, err %v", s, err)
	}
	if s.interval != cfg.Mirror.ReconcileInterval.D() {
		t.Errorf("interval %v, want mirror.reconcileInterval %v", s.interval, cfg.Mirror.ReconcileInterval.D())
	}
}

// The counters skip interfaces by this prefix; agentconfig requires it of
// both capture names. If they disagreed, every mirrored byte would be
// counted twice.
func TestCapturePrefixAgreesWithCounterExclusion(t *testing.T) {
	if captureLinkPrefix != agentconfig.CapturePrefix {
		t.Errorf("counters exclude %q, capture interfaces start with %q", captureLinkPrefix, agentconfig.CapturePrefix)
	}
	d := agentconfig.Default()
	for _, n := range []string{d.Mirror.CaptureInterface, d.Mirror.PeerInterface} {
		if !strings.HasPrefix(n, captureLinkPrefix) {
			t.Errorf("default capture interface %q lacks %q", n, captureLinkPrefix)
		}
	}
}

// fakeContext is a context source without local pods (an inventory).
type fakeContext struct{}

func (fakeContext) Enrich(*flow.Record)           {}
func (fakeContext) L7Want(*flow.Conn) flow.L7Want { return flow.L7None }
func (fakeContext) NamespaceOf(netip.Addr) string { return "" }
