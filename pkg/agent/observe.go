package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/dnsnames"
	"github.com/flowlens/flowlens/pkg/packetdrops"
	"github.com/flowlens/flowlens/pkg/tcphealth"
)

// observeStage is the eBPF observers that add to records what conntrack
// cannot tell: TCP health (pkg/tcphealth), drops with the kernel's reason
// (pkg/packetdrops) and destination names (pkg/dnsnames). Each one that
// loads is an Enricher of the loop; one that cannot is left out, saying
// which program and why (observe.*.mode auto), or stops the agent (on).
type observeStage struct {
	running   *prometheus.GaugeVec
	enrichers []Enricher
	runners   []observeRunner
	closers   []func() error
	names     *dnsnames.Names // nil: no destination names
}

// observeRunner is an observer with a ring buffer to read.
type observeRunner struct {
	name   string // for logs
	metric string // its flowlens_agent_observer_running label
	run    func(context.Context) error
}

func newObserveStage(cfg agentconfig.Config, namespaces dnsnames.NamespaceResolver, reg prometheus.Registerer) (*observeStage, error) {
	running := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flowlens_agent_observer_running",
		Help: "1 for each eBPF observer that runs (tcp-health, packet-drops, dns-names), 0 for one that is off, could not load, or stopped reading its events.",
	}, []string{"observer"})
	if err := reg.Register(running); err != nil {
		return nil, fmt.Errorf("register observer metric: %w", err)
	}
	s := &observeStage{running: running}
	o := cfg.Observe
	if !*cfg.Export.HealthElements {
		// No record would carry what they add (Antrea's Flow Aggregator,
		// the default for collectorKind antrea, discards those elements):
		// auto loads nothing for nothing; on still loads (their metrics,
		// e.g. drops per reason, stand on their own).
		for _, m := range []*string{&o.TCPHealth.Mode, &o.PacketDrops.Mode, &o.DNSNames.Mode} {
			if *m == agentconfig.ObserveAuto {
				*m = agentconfig.ObserveOff
			}
		}
		klog.InfoS("eBPF observers in mode auto are off: export.healthElements is off, so no record would carry what they add")
	}
	t, err := loadObserver(o.TCPHealth.Mode, "observe.tcpHealth", func() (*tcphealth.Tracker, error) {
		return tcphealth.New(tcphealth.Config{MapEntries: o.TCPHealth.MapEntries}, reg)
	})
	if err != nil {
		return nil, s.fail(err)
	}
	running.WithLabelValues("tcp-health").Set(b2f(t != nil))
	if t != nil {
		s.enrichers = append(s.enrichers, t)
		s.closers = append(s.closers, t.Close)
	}

	d, err := loadObserver(o.PacketDrops.Mode, "observe.packetDrops", func() (*packetdrops.Drops, error) {
		return packetdrops.New(packetdrops.Config{
			RatePerCPU: o.PacketDrops.RatePerCPU,
			MaxTuples:  o.PacketDrops.MaxFlows,
			TTL:        o.PacketDrops.UnattributedAfter.D(),
		}, reg)
	})
	if err != nil {
		return nil, s.fail(err)
	}
	running.WithLabelValues("packet-drops").Set(b2f(d != nil))
	if d != nil {
		s.enrichers = append(s.enrichers, d)
		s.runners = append(s.runners, observeRunner{"packet drops", "packet-drops", d.Run})
		s.closers = append(s.closers, d.Close)
	}

	n, err := loadObserver(o.DNSNames.Mode, "observe.dnsNames", func() (*dnsnames.Names, error) {
		return dnsnames.New(dnsnames.Config{
			CacheEntries:          o.DNSNames.CacheEntries,
			TTLFloor:              o.DNSNames.MinTTL.D(),
			TTLCeiling:            o.DNSNames.MaxTTL.D(),
			MaxResponsesPerSecond: o.DNSNames.RatePerCPU,
			Attach:                cfg.Counters.Attach,
			Namespaces:            namespaces,
		}, reg)
	})
	if err != nil {
		return nil, s.fail(err)
	}
	running.WithLabelValues("dns-names").Set(b2f(n != nil))
	if n != nil {
		s.names = n
		s.enrichers = append(s.enrichers, n)
		s.runners = append(s.runners, observeRunner{"DNS names", "dns-names", n.Run})
		s.closers = append(s.closers, n.Close)
	}
	return s, nil
}

// loadObserver loads one observer as its mode says: nil without error
// when it is off, or cannot load and may be left out.
func loadObserver[T any](mode, field string, load func() (*T, error)) (*T, error) {
	if mode == agentconfig.ObserveOff {
		return nil, nil
	}
	v, err := load()
	if err == nil {
		return v, nil
	}
	if mode == agentconfig.ObserveOn {
		return nil, fmt.Errorf("%s.mode on: %w", field, err)
	}
	klog.ErrorS(err, "An eBPF observer cannot load; running without it", "observer", field)
	return nil, nil
}

// fail closes what loaded before err.
func (s *observeStage) fail(err error) error {
	return errors.Join(err, s.close())
}

// start runs the ring buffer readers until ctx ends; wait returns once
// they stopped. A reader that fails leaves its observer without new
// events: logged, the agent goes on.
func (s *observeStage) start(ctx context.Context) (wait func()) {
	done := make(chan struct{}, len(s.runners))
	for _, r := range s.runners {
		go func() {
			defer func() { done <- struct{}{} }()
			if err := r.run(ctx); err != nil && ctx.Err() == nil {
				// Its records go on without what it adds: say so.
				s.running.WithLabelValues(r.metric).Set(0)
				klog.ErrorS(err, "An eBPF observer stopped reading its events", "observer", r.name)
			}
		}()
	}
	return func() {
		for range s.runners {
			<-done
		}
	}
}

// close unloads every observer.
func (s *observeStage) close() error {
	var errs []error
	for _, c := range s.closers {
		errs = append(errs, c())
	}
	s.closers = nil
	return errors.Join(errs...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
