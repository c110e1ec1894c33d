// Package agent is the flowlens agent: New wires its stages from the
// configuration and Run drives them.
//
//	conntrack dump/events -> Loop (connstore -> expirequeue) -> enrich -> ipfixexport
//	                            ^ EVE events (Handoff) -> L7 stage (pkg/l7)
//
// The Loop (loop.go) is the part that decides what events mean and owns
// the connection store and the expire queue on one goroutine; it consumes
// small interfaces (Source, Sink, Enricher, L7, Clock) so that it is tested
// with fakes. Everything else here is wiring: which stages the
// configuration asks for, and the order in which they start and stop.
package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/dnsnames"
	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/l7"
)

// Capacities of the channels into the loop. A full channel makes its
// producer wait (see LoopConfig.EventQueue and Handoff), so they bound
// memory, not what is counted.
const (
	// podLinksSyncWait bounds the wait for the eBPF counters to be attached
	// to the pods present at start-up.
	podLinksSyncWait = 30 * time.Second

	conntrackEventQueue = 4096
	eveEventQueue       = 4096
)

// Agent is a configured agent, ready to Run.
type Agent struct {
	cfg      agentconfig.Config
	reg      *prometheus.Registry
	source   *conntrack.Source
	bpf      *bpfStage             // nil: counters come from conntrack dumps
	observe  *observeStage         // the eBPF observers that loaded
	links    *podLinkStage         // nil: no program on the pod interfaces
	exporter *ipfixexport.Exporter // export.collector; nil when sharded
	sharded  *ShardedSink          // export.collectors or collectorDNS
	out      exportOutput          // whichever of the two is in use
	context  *contextStage         // nil: no workload context
	mirror   *mirrorStage          // nil: no traffic mirror
	reader   *eve.Reader           // nil: no L7
	handoff  *Handoff
	health   *Health
	loop     *Loop
	ident    *clusterIdentity // the clusterId every record carries
}

// New builds every stage cfg (validated by agentconfig) asks for and
// registers their metrics on reg, which Run serves on /metrics. Nothing
// runs and nothing is opened yet (Kubernetes' client aside).
func New(cfg agentconfig.Config, reg *prometheus.Registry) (*Agent, error) {
	if reg == nil {
		return nil, errors.New("agent: a registry is required (it is served on /metrics)")
	}
	a := &Agent{cfg: cfg, reg: reg}

	var err error
	if a.bpf, err = newCounterSource(cfg, reg, newBPFStage); err != nil {
		return nil, err
	}
	a.source, err = conntrack.New(conntrack.Config{
		NetNSPath: cfg.Conntrack.NetNS,
		Zones:     cfg.Conntrack.Zones,
		Mark:      cfg.Conntrack.Mark,
		MarkMask:  cfg.Conntrack.MarkMask,
		// UPDATE carries the FIN handshake, so a closed TCP connection is
		// exported at once rather than when TIME_WAIT expires. With eBPF
		// counters the program sees the FINs: the kernel then only sends
		// NEW and DESTROY (two wake-ups per connection instead of ~7).
		UpdateEvents: a.bpf == nil,
		// Events read in batches: the agent wakes a few times per tick
		// rather than for every event (two per connection at least), and
		// a record waits for a tick anyway.
		EventBatchDelay: eventBatchDelay(cfg),
	}, reg)
	if err != nil {
		return nil, fmt.Errorf("conntrack source: %w", err)
	}

	expCfg := ipfixexport.Config{
		Address:   cfg.Export.Collector,
		Transport: ipfixexport.Transport(cfg.Export.Transport),
		TLS: ipfixexport.TLSConfig{
			CAFile:     cfg.Export.TLS.CAFile,
			CertFile:   cfg.Export.TLS.CertFile,
			KeyFile:    cfg.Export.TLS.KeyFile,
			ServerName: cfg.Export.TLS.ServerName,
		},
		ObservationDomainID:     cfg.Export.ObservationDomainID,
		PathMTU:                 cfg.Export.PathMTU,
		BufferRecords:           cfg.Export.BufferRecords,
		FlushInterval:           cfg.Export.FlushInterval.D(),
		TemplateRefreshInterval: cfg.Export.TemplateRefresh.D(),
		TemplateRefreshMessages: cfg.Export.TemplateRefreshMessages,
		L7DetailElements:        *cfg.Export.L7DetailElements,
		HealthElements:          *cfg.Export.HealthElements,
		ReconnectMax:            cfg.Export.ReconnectMax.D(),
		// The exporter's first retry (500ms) must not exceed the cap.
		ReconnectMin: min(500*time.Millisecond, cfg.Export.ReconnectMax.D()),
	}
	if err := a.newOutput(expCfg, reg); err != nil {
		return nil, err
	}

	a.ident = newClusterIdentity(cfg.ClusterID)
	if a.context, err = newContextStage(cfg, a.ident, reg); err != nil {
		return nil, err
	}
	if a.mirror, err = newMirrorStage(cfg, a.context, reg); err != nil {
		return nil, err
	}

	// After the context source, which gives DNS names their pods'
	// namespaces.
	var namespaces dnsnames.NamespaceResolver
	if a.context != nil {
		namespaces = a.context.src
	}
	if a.observe, err = newObserveStage(cfg, namespaces, reg); err != nil {
		return nil, errors.Join(err, a.closeBPF())
	}
	var programs []podProgram
	if a.bpf != nil {
		programs = append(programs, podProgram{"counters", "its connections are counted by conntrack", a.bpf.counters})
	}
	if a.observe.names != nil {
		programs = append(programs, podProgram{"dns-names", "no destination names from its DNS responses", a.observe.names})
	}
	if len(programs) > 0 {
		if a.links, err = newPodLinkStage(cfg, programs, reg); err != nil {
			return nil, errors.Join(err, a.observe.close(), a.closeBPF())
		}
	}
	dumpEvery := cfg.Conntrack.PollInterval.D()
	if a.bpf != nil {
		dumpEvery = cfg.Conntrack.ResyncInterval.D()
	}
	// Healthy while dumps succeed; three missed polls (plus slack for a
	// slow dump of a huge table) mean the source is broken.
	a.health = NewHealth(SystemClock{}, 3*dumpEvery+10*time.Second)

	loopCfg := LoopConfig{
		Source:     a.source,
		Events:     *cfg.Conntrack.Events,
		EventQueue: conntrackEventQueue,
		// Events are read at each tick (OpenEvents), up to a tick after
		// the kernel sent them; a listener, where that fails, batches them
		// for half a tick (eventBatchDelay).
		EventDelay: cfg.Connections.TickInterval.D(),
		OpenEvents: func() (EventStream, error) {
			es, err := a.source.OpenEvents()
			if err != nil {
				return nil, err
			}
			return es, nil
		},
		PollInterval:   dumpEvery,
		TickInterval:   cfg.Connections.TickInterval.D(),
		MaxConnections: cfg.Connections.MaxConnections,
		Queue: expirequeue.Config{
			ActiveTimeout: cfg.Connections.ActiveTimeout.D(),
			IdleTimeout:   cfg.Connections.IdleTimeout.D(),
			// A start-up dump of the whole table must not come due in
			// one tick (issue 12).
			SpreadActiveDeadlines: true,
		},
		Sink:   a.out,
		Health: a.health,
	}
	if a.bpf != nil {
		loopCfg.Counters = a.bpf
		loopCfg.CrossCheck = CrossCheck(cfg.Counters.CrossCheck)
	}
	// Workload context, then L7: records are enriched in this order, and
	// the L7 opt-in is decided by the context source.
	if a.context != nil {
		loopCfg.Enrichers = []Enricher{a.context.src}
	}
	if cfg.Export.CollectorKind == agentconfig.CollectorAntrea {
		// In front of the Sink, not among the enrichers: it may skip a
		// record, and only after the store and the queue took it as
		// exported (agentconfig requires a context source for this mode).
		if loopCfg.Sink, err = newAntreaHalves(cfg.NodeName, a.out, reg); err != nil {
			return nil, err
		}
	}
	if cfg.ClusterID != "" || cfg.Kubernetes.Enabled {
		loopCfg.Enrichers = append(loopCfg.Enrichers, a.ident)
	}
	// After the context: DNS names are kept per pod namespace.
	loopCfg.Enrichers = append(loopCfg.Enrichers, a.observe.enrichers...)
	if cfg.L7.EVE.Source != "" {
		if a.context == nil {
			return nil, errors.New("l7: needs a context source for the L7 export opt-in")
		}
		loopCfg.Queue.CloseDelay = cfg.L7.CloseDelay.D()
		if a.handoff, err = NewHandoff(eveEventQueue, reg); err != nil {
			return nil, err
		}
		loopCfg.L7Events = a.handoff.Events()
		loopCfg.NewL7 = func(conns l7.Connections) (L7, error) {
			e, err := l7.New(l7Config(cfg, conns, a.context.src), reg)
			if err != nil {
				return nil, fmt.Errorf("l7 enricher: %w", err)
			}
			return e, nil
		}
		if a.reader, err = newEVEReader(cfg, a.handoff.Handle, reg); err != nil {
			return nil, err
		}
		// A missing or foreign EVE socket means no L7 at all: say so.
		a.health.AddCheck("eve", a.reader.Health)
	}
	if a.loop, err = NewLoop(loopCfg, reg); err != nil {
		return nil, err
	}
	return a, nil
}

// Run starts the stages, runs the loop until ctx ends or a stage fails
// fatally, then stops them in an order that loses nothing: the loop exports
// what it holds, the exporter sends it, and only then do the inputs stop.
func (a *Agent) Run(ctx context.Context) (err error) {
	defer a.source.Close()
	if *a.cfg.Conntrack.EnableAccounting {
		if err := a.source.EnableAccounting(); err != nil {
			// Running on is more useful than failing: 5-tuples and close
			// times still flow, only counters or start times are missing.
			klog.ErrorS(err, "Conntrack accounting not enabled; records may lack counters or start times")
		}
	}

	// stopAll ends every input when one fails fatally, not only on a
	// signal; the loop then shuts down as on a signal.
	ctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	// Deferred stops run in reverse order of the starts and add their
	// errors to errs; this one, deferred first, runs last.
	var errs []error
	started := false
	defer func() {
		err = errors.Join(append(errs, err)...)
		if started {
			klog.InfoS("flowlens-agent stopped")
		}
	}()

	// The context source first, so that the first records are enriched
	// and /metrics is only served once it is ready (tests wait for it).
	if a.context != nil {
		wait, err := a.context.start(ctx)
		defer func() {
			stopAll()
			if err := wait(); err != nil {
				errs = append(errs, fmt.Errorf("context source: %w", err))
			}
		}()
		if err != nil {
			return err
		}
	}
	// Once the context source is synced (see mirrorStage.start).
	if a.mirror != nil {
		stopMirror, err := a.mirror.start(ctx)
		if err != nil {
			return err
		}
		defer func() { errs = append(errs, stopMirror()) }()
	} else {
		removeMirrorLeftovers(a.cfg.Conntrack.NetNS)
	}
	waitHTTP, err := serveHTTP(ctx, a.cfg.Server.Listen, a.reg, a.health)
	if err != nil {
		return err
	}
	defer func() {
		stopAll()
		if err := waitHTTP(); err != nil {
			errs = append(errs, err)
		}
	}()

	// The exporter outlives the loop so that the records of its last
	// round are still sent after ctx ends.
	exportCtx, stopExporter := context.WithCancel(context.Background())
	exporterDone := make(chan error, 1)
	go func() { exporterDone <- a.out.Run(exportCtx) }()

	var fatal error
	readerDone := make(chan struct{})
	if a.reader != nil {
		go func() {
			defer close(readerDone)
			// The EVE input could not be set up (socket path taken, not a
			// socket...): the configured job cannot be done.
			if err := a.reader.Run(ctx); err != nil {
				fatal = fmt.Errorf("l7: %w", err)
				stopAll()
			}
		}()
	} else {
		close(readerDone)
	}

	klog.InfoS("flowlens-agent started", "node", a.cfg.NodeName, "netns", a.cfg.Conntrack.NetNS,
		"collector", a.cfg.Export.Collector, "collectors", a.cfg.Export.Collectors, "collectorDNS", a.cfg.Export.CollectorDNS, "transport", a.cfg.Export.Transport, "collectorKind", a.cfg.Export.CollectorKind)
	waitObservers := a.observe.start(ctx)
	defer func() {
		stopAll()
		waitObservers()
		// After the loop: its last records were enriched.
		if err := a.observe.close(); err != nil {
			errs = append(errs, fmt.Errorf("eBPF observers: %w", err))
		}
	}()
	if a.links != nil {
		synced, waitLinks := a.links.start(ctx)
		defer func() {
			stopAll()
			if err := waitLinks(); err != nil {
				errs = append(errs, err)
			}
			// After the loop: its last round read the counters.
			if err := a.closeBPF(); err != nil {
				errs = append(errs, fmt.Errorf("eBPF counters: %w", err))
			}
		}()
		// The loop starts listening only once the pods present now are
		// counted: a connection born before would be seen from the middle.
		select {
		case <-synced:
		case <-ctx.Done():
		case <-time.After(podLinksSyncWait):
			klog.InfoS("Pod interfaces not all attached yet; starting anyway (their connections may be counted by conntrack)", "waited", podLinksSyncWait)
		}
	}
	started = true
	a.loop.Run(ctx)

	// No loop reads EVE events any more: a reader waiting on a full
	// channel must give up (and count) rather than block its shutdown.
	if a.handoff != nil {
		a.handoff.Close()
	}
	stopExporter()
	if err := <-exporterDone; err != nil {
		errs = append(errs, fmt.Errorf("ipfix exporter: %w", err))
	}
	stopAll()
	<-readerDone
	if a.handoff != nil {
		a.handoff.DiscardRemaining()
	}
	return fatal
}

// newCounterSource loads the eBPF counters unless counters.source says
// conntrack. Where they cannot load, auto logs which program failed and why
// and returns nil (the loop polls conntrack); ebpf fails.
func newCounterSource(cfg agentconfig.Config, reg prometheus.Registerer, load func(agentconfig.Config, prometheus.Registerer) (*bpfStage, error)) (*bpfStage, error) {
	source := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flowlens_agent_counter_source",
		Help: "1 for the source of packet and byte counters in use: ebpf (conntrack counts what the program does not see) or conntrack (polled dumps).",
	}, []string{"source"})
	if err := reg.Register(source); err != nil {
		return nil, fmt.Errorf("register counter source metric: %w", err)
	}
	var b *bpfStage
	switch {
	case cfg.Counters.Source == agentconfig.CountersConntrack:
	case !*cfg.Conntrack.Events:
		klog.InfoS("eBPF counters need conntrack events; polling conntrack", "pollInterval", cfg.Conntrack.PollInterval.D())
	default:
		var err error
		if b, err = load(cfg, reg); err != nil {
			if cfg.Counters.Source == agentconfig.CountersEBPF {
				return nil, fmt.Errorf("counters.source ebpf: %w", err)
			}
			klog.ErrorS(err, "eBPF counters cannot load; polling conntrack instead", "pollInterval", cfg.Conntrack.PollInterval.D())
			b = nil
		}
	}
	if b != nil {
		source.WithLabelValues("ebpf").Set(1)
		klog.InfoS("Counting with eBPF on the pod interfaces; conntrack gives births, NAT and deaths", "resyncInterval", cfg.Conntrack.ResyncInterval.D())
	} else {
		source.WithLabelValues("conntrack").Set(1)
	}
	return b, nil
}

// newOutput builds the exporter of export.collector, or the sharded sink of
// export.collectors / export.collectorDNS with one exporter per replica
// (expCfg with the replica's address, its metrics labelled collector).
func (a *Agent) newOutput(expCfg ipfixexport.Config, reg prometheus.Registerer) error {
	ex := a.cfg.Export
	if len(ex.Collectors) == 0 && ex.CollectorDNS == "" {
		e, err := ipfixexport.New(expCfg, reg)
		if err != nil {
			return fmt.Errorf("ipfix exporter: %w", err)
		}
		a.exporter, a.out = e, e
		return nil
	}
	if ex.CollectorDNS != "" {
		// Replicas are only known once the name resolves: check the
		// exporter configuration now (TLS files...), not at every resolution.
		probe := expCfg
		probe.Address, probe.BufferRecords = ex.CollectorDNS, 1
		if _, err := ipfixexport.New(probe, nil); err != nil {
			return fmt.Errorf("ipfix exporter: %w", err)
		}
	}
	s, err := NewShardedSink(ShardedSinkConfig{
		Collectors:      ex.Collectors,
		CollectorDNS:    ex.CollectorDNS,
		ResolveInterval: ex.ResolveInterval.D(),
		FailoverAfter:   ex.FailoverAfter.D(),
		HoldRecords:     ex.BufferRecords,
		NewExporter: func(address string, reg prometheus.Registerer) (ReplicaExporter, error) {
			c := expCfg
			c.Address = address
			return ipfixexport.New(c, reg)
		},
	}, reg)
	if err != nil {
		return fmt.Errorf("ipfix exporters: %w", err)
	}
	a.sharded, a.out = s, s
	return nil
}

// closeBPF unloads the eBPF counters, if they loaded.
// eventBatchDelay is how long the conntrack listener lets events gather
// before reading them: half a tick, so that a connection born and ended
// within a tick is usually known by the round that reads its views.
func eventBatchDelay(cfg agentconfig.Config) time.Duration {
	return cfg.Connections.TickInterval.D() / 2
}

func (a *Agent) closeBPF() error {
	if a.bpf == nil {
		return nil
	}
	return a.bpf.close()
}
