package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/k8smeta"
	"github.com/flowlens/flowlens/pkg/mirror"
)

// localOptIns is what the mirror stage needs of the context source: this
// node's pods that opted into L7, and word when they may have changed.
type localOptIns interface {
	LocalL7Pods() []k8smeta.LocalPod
	LocalL7Changes() <-chan struct{}
}

// trafficMirror is what the stage needs of pkg/mirror.
type trafficMirror interface {
	Reconcile(want []netip.Addr) error
	Close() error
}

// mirrorStage keeps the traffic mirror (pkg/mirror) equal to the local
// opted-in pods: it reconciles on every change the context source
// reports and on a timer (a bridged pod is only found once it talked; a
// deleted capture veth is re-created), and removes every mirror and the
// capture veth on a clean shutdown. Both directions of each opted-in pod
// are mirrored whatever its annotation names: Suricata cannot parse half a
// conversation, and the annotation's direction filters events later (l7).
type mirrorStage struct {
	pods     localOptIns
	open     func() (trafficMirror, error)
	interval time.Duration
	m        mirrorStageMetrics
}

type mirrorStageMetrics struct {
	reconciles prometheus.Counter
	errors     prometheus.Counter
	wanted     prometheus.Gauge
}

// newMirrorStage returns the stage mirror.enabled asks for, or nil. The
// capture veth is only created by start: New opens nothing.
func newMirrorStage(cfg agentconfig.Config, ctxStage *contextStage, reg prometheus.Registerer) (*mirrorStage, error) {
	if cfg.Mirror.Enabled == nil || !*cfg.Mirror.Enabled {
		return nil, nil
	}
	var pods localOptIns
	if ctxStage != nil {
		pods, _ = ctxStage.src.(localOptIns)
	}
	if pods == nil {
		return nil, errors.New("mirror.enabled: needs kubernetes.enabled (the source of this node's opted-in pods)")
	}
	mcfg := mirror.Config{
		NetnsPath:   cfg.Conntrack.NetNS,
		CaptureName: cfg.Mirror.CaptureInterface,
		PeerName:    cfg.Mirror.PeerInterface,
		Mechanism:   cfg.Mirror.Mechanism,
	}
	open := func() (trafficMirror, error) {
		m, err := mirror.New(mcfg, reg)
		if err != nil {
			return nil, err
		}
		return m, nil
	}
	return newMirrorStageWith(pods, open, cfg.Mirror.ReconcileInterval.D(), reg)
}

func newMirrorStageWith(pods localOptIns, open func() (trafficMirror, error), interval time.Duration, reg prometheus.Registerer) (*mirrorStage, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("mirror.reconcileInterval: %s is not positive", interval)
	}
	s := &mirrorStage{pods: pods, open: open, interval: interval}
	s.m = mirrorStageMetrics{
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_mirror_reconciles_total",
			Help: "Reconciliations of the traffic mirror with this node's opted-in pods (on changes and every mirror.reconcileInterval).",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_agent_mirror_reconcile_errors_total",
			Help: "Reconciliations of the traffic mirror that left some pod interface unconverged (retried at the next one; details in flowlens_mirror_errors_total and the log).",
		}),
		wanted: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_agent_mirror_wanted_addresses",
			Help: "Addresses of this node's pods opted into L7, whose traffic the mirror should copy to Suricata.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.m.reconciles, s.m.errors, s.m.wanted} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register mirror stage metrics: %w", err)
			}
		}
	}
	return s, nil
}

// start creates the capture veth (or adopts ours from a previous run),
// reconciles once, and keeps reconciling until ctx ends. Call it once the
// context source is synced: an unsynced one would look like every pod
// opted out and tear down mirrors a previous run left working. stop ends
// the goroutine and removes everything the mirror made.
func (s *mirrorStage) start(ctx context.Context) (stop func() error, err error) {
	m, err := s.open()
	if err != nil {
		return nil, fmt.Errorf("traffic mirror (set mirror.enabled: false to run without one; L7 then sees no traffic): %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.run(ctx, m)
	}()
	return func() error {
		cancel()
		<-done
		if err := m.Close(); err != nil {
			return fmt.Errorf("traffic mirror: %w", err)
		}
		return nil
	}, nil
}

func (s *mirrorStage) run(ctx context.Context, m trafficMirror) {
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	var lastErr string
	for {
		err := s.reconcile(m)
		switch {
		case err != nil && err.Error() != lastErr:
			klog.ErrorS(err, "Traffic mirror not converged; retrying", "every", s.interval)
		case err == nil && lastErr != "":
			klog.InfoS("Traffic mirror converged")
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return
		case <-s.pods.LocalL7Changes():
		case <-tick.C:
		}
	}
}

// reconcile gives the mirror every address of every opted-in local pod.
func (s *mirrorStage) reconcile(m trafficMirror) error {
	var want []netip.Addr
	for _, p := range s.pods.LocalL7Pods() {
		want = append(want, p.IPs...)
	}
	s.m.wanted.Set(float64(len(want)))
	s.m.reconciles.Inc()
	if err := m.Reconcile(want); err != nil {
		s.m.errors.Inc()
		return err
	}
	return nil
}

// removeMirrorLeftovers runs once at start when this agent mirrors
// nothing: a previous run killed before its Close (SIGKILL, OOM, grace
// period over) left tc filters cloning every packet of the pods it
// mirrored, and its capture veth pair; nothing else would ever remove
// them. Not fatal: without CAP_NET_ADMIN (or netns access) it says what
// is left and the agent runs on.
func removeMirrorLeftovers(netnsPath string) {
	n, err := mirror.RemoveLeftovers(netnsPath)
	switch {
	case errors.Is(err, unix.EPERM):
		klog.InfoS("A traffic mirror left by a previous run may still be copying pod traffic: removing it needs CAP_NET_ADMIN; the mirror is off in this run",
			"netns", netnsPath, "removed", n, "err", err)
	case err != nil:
		klog.ErrorS(err, "Could not remove all of the traffic mirror left by a previous run; the mirror is off in this run", "netns", netnsPath, "removed", n)
	case n > 0:
		klog.InfoS("Removed the traffic mirror left by a previous run (mirror.enabled is false)", "netns", netnsPath, "removed", n)
	}
}
