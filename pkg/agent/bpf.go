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

// bpfStage is the eBPF counter source.
type bpfStage struct {
	counters *bpfcounters.Counters
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
	return &bpfStage{counters: c}, nil
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

func (b *bpfStage) ForgetAll(cs []flow.Conn) error { return b.counters.ForgetAll(cs) }

func (b *bpfStage) Sweep(olderThan time.Duration, live func(view flow.Tuple) bool) (int, error) {
	return b.counters.Sweep(olderThan, live)
}

// linkAttacher is a TC program kept on every pod-facing interface
// (*bpfcounters.Counters, *dnsnames.Names).
type linkAttacher interface {
	Attach(ifindex int, netnsPath string) error
	Detach(ifindex int, netnsPath string) error
}

// podProgram is one linkAttacher and what a failure to attach it costs.
type podProgram struct {
	name string // the program's job, for logs and the metric's label
	// lost says what a pod interface without it lacks, for the log line.
	lost string
	at   linkAttacher
}

// podLinkStage keeps the TC programs attached to the node's pod-facing
// interfaces as pods come and go.
type podLinkStage struct {
	links        *podlinks.Watcher
	programs     []podProgram
	attachErrors *prometheus.CounterVec
}

func newPodLinkStage(cfg agentconfig.Config, programs []podProgram, reg prometheus.Registerer) (*podLinkStage, error) {
	w, err := podlinks.New(podlinks.Config{
		NetnsPath:       cfg.Conntrack.NetNS,
		ExcludePrefixes: []string{captureLinkPrefix},
	}, reg)
	if err != nil {
		return nil, fmt.Errorf("pod links: %w", err)
	}
	s := &podLinkStage{links: w, programs: programs}
	s.attachErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_agent_pod_program_attach_errors_total",
		Help: "Pod interfaces an eBPF program could not be attached to, by program (counters: their connections are counted by conntrack; dns-names: no names from their DNS responses).",
	}, []string{"program"})
	for _, p := range programs {
		s.attachErrors.WithLabelValues(p.name)
	}
	if reg != nil {
		if err := reg.Register(s.attachErrors); err != nil {
			return nil, fmt.Errorf("register pod program metrics: %w", err)
		}
	}
	return s, nil
}

// start follows the pod interfaces until ctx ends; synced is closed once
// the interfaces present at the start are attached, wait returns once the
// watcher stopped. An interface that appears is counted from then on; a
// connection that started on it before is seen from the middle and left to
// conntrack (Loop.fillBPF).
func (s *podLinkStage) start(ctx context.Context) (synced <-chan struct{}, wait func() error) {
	done := make(chan error, 1)
	first := make(chan struct{})
	var once sync.Once
	go func() {
		done <- s.links.Run(ctx, func(ev podlinks.Event) {
			switch ev.Kind {
			case podlinks.Synced:
				once.Do(func() { close(first) })
			case podlinks.Added:
				for _, p := range s.programs {
					if err := p.at.Attach(ev.Ifindex, ev.NetnsPath); err != nil {
						s.attachErrors.WithLabelValues(p.name).Inc()
						klog.ErrorS(err, "Could not attach an eBPF program to a pod interface", "program", p.name, "consequence", p.lost, "interface", ev.Name, "ifindex", ev.Ifindex)
						continue
					}
				}
				klog.V(2).InfoS("Observing a pod interface", "interface", ev.Name, "ifindex", ev.Ifindex)
			case podlinks.Removed:
				for _, p := range s.programs {
					if err := p.at.Detach(ev.Ifindex, ev.NetnsPath); err != nil {
						klog.V(2).InfoS("Detach an eBPF program", "program", p.name, "interface", ev.Name, "err", err)
					}
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
