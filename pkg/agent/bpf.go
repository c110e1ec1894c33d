package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/bpfcounters"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/podlinks"
)

// captureLinkPrefix names the interfaces a traffic mirror owns; they face a
// namespace of their own but carry copies, which must not be counted.
const captureLinkPrefix = "flc"

// bpfStage is the eBPF counter source and what keeps it attached to the
// node's pod-facing interfaces as pods come and go.
type bpfStage struct {
	counters *bpfcounters.Counters
	links    *podlinks.Watcher
	netns    string
	m        bpfStageMetrics
}

type bpfStageMetrics struct {
	attachErrors prometheus.Counter
}

// newBPFStage loads the programs. An error names the program and the
// kernel's reason; the caller decides whether the agent can do without.
func newBPFStage(cfg agentconfig.Config, reg prometheus.Registerer) (*bpfStage, error) {
	c, err := bpfcounters.New(bpfcounters.Config{
		MapEntries: cfg.Counters.MapEntries,
		Attach:     cfg.Counters.Attach,
	}, reg)
	if err != nil {
		return nil, err
	}
	w, err := podlinks.New(podlinks.Config{
		NetnsPath:       cfg.Conntrack.NetNS,
		ExcludePrefixes: []string{captureLinkPrefix},
	}, reg)
	if err != nil {
		return nil, fmt.Errorf("pod links: %w", err)
	}
	b := &bpfStage{counters: c, links: w, netns: cfg.Conntrack.NetNS}
	b.m.attachErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "flowlens_agent_counter_attach_errors_total",
		Help: "Pod interfaces the eBPF counters could not be attached to (their connections are counted by conntrack).",
	})
	if reg != nil {
		if err := reg.Register(b.m.attachErrors); err != nil {
			return nil, fmt.Errorf("register counter attach metrics: %w", err)
		}
	}
	return b, nil
}

// start follows the pod interfaces until ctx ends; synced is closed once
// the interfaces present at the start are attached, wait returns once the
// watcher stopped. An interface that appears is counted from then on; a
// connection that started on it before is seen from the middle and left to
// conntrack (Loop.fillBPF).
func (b *bpfStage) start(ctx context.Context) (synced <-chan struct{}, wait func() error) {
	done := make(chan error, 1)
	first := make(chan struct{})
	var once sync.Once
	go func() {
		done <- b.links.Run(ctx, func(ev podlinks.Event) {
			switch ev.Kind {
			case podlinks.Synced:
				once.Do(func() { close(first) })
			case podlinks.Added:
				if err := b.counters.Attach(ev.Ifindex, ev.NetnsPath); err != nil {
					b.m.attachErrors.Inc()
					klog.ErrorS(err, "Could not attach eBPF counters to a pod interface; its connections are counted by conntrack", "interface", ev.Name, "ifindex", ev.Ifindex)
					return
				}
				klog.V(2).InfoS("Counting a pod interface", "interface", ev.Name, "ifindex", ev.Ifindex)
			case podlinks.Removed:
				if err := b.counters.Detach(ev.Ifindex, ev.NetnsPath); err != nil {
					klog.V(2).InfoS("Detach eBPF counters", "interface", ev.Name, "err", err)
				}
			}
		})
	}()
	return first, func() error {
		if err := <-done; err != nil {
			return fmt.Errorf("watch pod interfaces: %w", err)
		}
		return nil
	}
}

// close detaches the programs from every interface and frees the maps.
func (b *bpfStage) close() error { return b.counters.Close() }

// The loop's Counters, over *bpfcounters.Counters.

func (b *bpfStage) ReadChanged(fn func(view flow.Tuple, fin bool)) error {
	return b.counters.ReadChanged(fn)
}

func (b *bpfStage) Fill(c *flow.Conn) (CounterFill, error) {
	r, err := b.counters.Fill(c)
	return CounterFill{Seen: r.Seen, Lossy: r.Lossy, Finished: r.Finished, AttachedAt: r.AttachedAt, FirstNanos: r.FirstNanos, LastNanos: r.LastNanos, FwdFlags: r.FwdFlags}, err
}

func (b *bpfStage) Born(c *flow.Conn) (CounterFill, error) {
	r, err := b.counters.Born(c)
	return CounterFill{Seen: r.Seen, Lossy: r.Lossy, AttachedAt: r.AttachedAt, FirstNanos: r.FirstNanos, LastNanos: r.LastNanos, FwdFlags: r.FwdFlags}, err
}

func (b *bpfStage) Forget(c *flow.Conn) error { return b.counters.Forget(c) }

func (b *bpfStage) Sweep(olderThan time.Duration, live func(view flow.Tuple) bool) (int, error) {
	return b.counters.Sweep(olderThan, live)
}
