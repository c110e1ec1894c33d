package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/connstore"
	"github.com/flowlens/flowlens/pkg/conntrack"
	"github.com/flowlens/flowlens/pkg/expirequeue"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
)

// ctEvent is a conntrack event copied out of the listener's reused buffer so
// it can cross to the loop goroutine.
type ctEvent struct {
	typ  conntrack.EventType
	conn flow.Conn
}

// run builds the pipeline and drives it until ctx ends:
//
//	conntrack dump/events -> connstore -> expirequeue -> enrich -> ipfixexport
//
// One goroutine (this one) owns the store and the queue; the event listener
// and the exporter run beside it and talk to it through a channel and the
// exporter's bounded buffer.
func run(ctx context.Context, cfg agentconfig.Config) error {
	// stopAll ends every stage when one fails fatally, not only on a signal.
	ctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ctMetrics, err := conntrack.NewMetrics(reg)
	if err != nil {
		return err
	}
	source, err := conntrack.New(conntrack.Config{
		NetNSPath: cfg.Conntrack.NetNS,
		Zones:     cfg.Conntrack.Zones,
		Mark:      cfg.Conntrack.Mark,
		MarkMask:  cfg.Conntrack.MarkMask,
		Metrics:   ctMetrics,
		// UPDATE carries the FIN handshake, so a closed TCP connection is
		// exported at once rather than when TIME_WAIT expires.
		UpdateEvents: true,
	})
	if err != nil {
		return fmt.Errorf("conntrack source: %w", err)
	}
	defer source.Close()
	if *cfg.Conntrack.EnableAccounting {
		if err := source.EnableAccounting(); err != nil {
			// Running on is more useful than failing: 5-tuples and close
			// times still flow, only counters or start times are missing.
			klog.ErrorS(err, "Conntrack accounting not enabled; records may lack counters or start times")
		}
	}

	exporter, err := ipfixexport.New(ipfixexport.Config{
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
		L7DetailElements:        cfg.Export.L7DetailElements,
	}, reg)
	if err != nil {
		return fmt.Errorf("ipfix exporter: %w", err)
	}

	// Enrichers fill Kubernetes and L7 context into each record right
	// before it is exported; each is a stage of its own.
	var enrichers []func(*flow.Record)
	export := func(r *flow.Record) {
		for _, enrich := range enrichers {
			enrich(r)
		}
		exporter.Export(r)
	}

	queueCfg := expirequeue.Config{
		ActiveTimeout: cfg.Connections.ActiveTimeout.D(),
		IdleTimeout:   cfg.Connections.IdleTimeout.D(),
	}
	if cfg.L7.EVE.Source != "" {
		queueCfg.CloseDelay = cfg.L7.CloseDelay.D()
	}
	queue, err := expirequeue.New(queueCfg, reg)
	if err != nil {
		return fmt.Errorf("expire queue: %w", err)
	}
	store, err := connstore.New(connstore.Config{
		MaxConnections: cfg.Connections.MaxConnections,
		Scheduler:      queue,
		Emit:           export,
	}, reg)
	if err != nil {
		return fmt.Errorf("connection store: %w", err)
	}

	// Workload context, then L7: records are enriched in this order, and
	// the L7 opt-in is decided by the context source.
	ctxSource, waitContext, err := newContextSource(ctx, cfg, reg)
	if err != nil {
		return err
	}
	if ctxSource != nil {
		enrichers = append(enrichers, ctxSource.Enrich)
	}
	l7Done := make(chan error, 1)
	if cfg.L7.EVE.Source != "" {
		stage, err := newL7Stage(cfg, store, ctxSource, reg)
		if err != nil {
			return err
		}
		enrichers = append(enrichers, stage.enricher.Enrich)
		go func() { l7Done <- stage.run(ctx) }()
	} else {
		l7Done <- nil
	}

	// Healthy while dumps succeed; three missed polls (plus slack for a
	// slow dump of a huge table) mean the source is broken.
	hc := &health{maxAge: 3*cfg.Conntrack.PollInterval.D() + 10*time.Second}
	waitHTTP, err := serveHTTP(ctx, cfg.Server.Listen, reg, hc)
	if err != nil {
		return err
	}

	// The exporter outlives the loop so the records of the last tick are
	// still sent after ctx ends.
	exportCtx, stopExporter := context.WithCancel(context.Background())
	exporterDone := make(chan error, 1)
	go func() { exporterDone <- exporter.Run(exportCtx) }()

	events := make(chan ctEvent, 4096)
	listenerDone := make(chan error, 1)
	if *cfg.Conntrack.Events {
		go func() {
			listenerDone <- source.Listen(ctx, func(ev conntrack.Event) {
				msg := ctEvent{typ: ev.Type}
				if ev.Conn != nil {
					msg.conn = *ev.Conn
				}
				// Blocking here lets the kernel socket buffer absorb a
				// burst; if that overflows too the source reports an
				// overrun and the loop resyncs with a dump.
				select {
				case events <- msg:
				case <-ctx.Done():
				}
			})
		}()
	} else {
		listenerDone = nil
	}

	klog.InfoS("flowlens-agent started", "node", cfg.NodeName, "netns", cfg.Conntrack.NetNS,
		"collector", cfg.Export.Collector, "transport", cfg.Export.Transport)

	// report hands the store one observation of a connection.
	report := func(c *flow.Conn, now time.Time) {
		if conntrack.Finished(c) {
			store.Close(c, now)
			return
		}
		store.Upsert(c, now)
	}
	poll := func() {
		started := time.Now()
		if err := source.Dump(func(c *flow.Conn) { report(c, started) }); err != nil {
			// A partial dump must not be taken as complete, or every
			// connection it missed would be closed as stale.
			klog.ErrorS(err, "Conntrack dump failed")
			return
		}
		store.EndDump(started)
		hc.ok()
	}
	expire := func(now time.Time) {
		if _, err := queue.Expire(now, store, export); err != nil {
			klog.ErrorS(err, "Expire connections")
		}
	}

	poll()
	pollTicker := time.NewTicker(cfg.Conntrack.PollInterval.D())
	defer pollTicker.Stop()
	expireTicker := time.NewTicker(cfg.Connections.TickInterval.D())
	defer expireTicker.Stop()

	var fatal error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-l7Done:
			l7Done = nil
			// The EVE input could not be set up (socket path taken, not
			// a socket...): the configured job cannot be done.
			if err != nil {
				fatal = fmt.Errorf("l7: %w", err)
				break loop
			}
		case ev := <-events:
			now := time.Now()
			switch ev.typ {
			case conntrack.EventNew:
				report(&ev.conn, now)
			case conntrack.EventUpdate:
				if conntrack.Finished(&ev.conn) {
					// UPDATE events carry no counters or start time; the
					// entry still holds them during TIME_WAIT.
					if err := source.Get(&ev.conn); err != nil && !errors.Is(err, conntrack.ErrNotFound) {
						klog.V(2).InfoS("Could not read final counters of a finished connection", "conn", ev.conn.Tuple, "err", err)
					}
				}
				report(&ev.conn, now)
			case conntrack.EventDestroy:
				store.Close(&ev.conn, now)
			case conntrack.EventOverrun:
				klog.InfoS("Conntrack events were lost; resynchronising with a dump")
				poll()
			}
		case err := <-listenerDone:
			// Without events closes are noticed by the next dump instead:
			// degraded, not broken.
			if ctx.Err() == nil {
				klog.ErrorS(err, "Conntrack event listener stopped; closed connections are found by polling only")
			}
			listenerDone = nil
		case <-pollTicker.C:
			poll()
		case now := <-expireTicker.C:
			expire(now)
		}
	}

	// What the store holds that was not exported yet goes out before the
	// exporter is told to finish: closed connections with end-of-flow, the
	// others with flowEndReason forced, so a restart loses no delta.
	expire(time.Now())
	if n := store.ExportAll(time.Now(), export); n > 0 {
		klog.InfoS("Exported open connections at shutdown", "records", n)
	}
	stopExporter()
	errs := []error{fatal}
	if fatal != nil {
		stopAll()
	}
	if err := <-exporterDone; err != nil {
		errs = append(errs, fmt.Errorf("ipfix exporter: %w", err))
	}
	if listenerDone != nil {
		if err := <-listenerDone; err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("conntrack events: %w", err))
		}
	}
	if err := waitHTTP(); err != nil {
		errs = append(errs, err)
	}
	if l7Done != nil {
		if err := <-l7Done; err != nil {
			errs = append(errs, fmt.Errorf("l7: %w", err))
		}
	}
	if err := waitContext(); err != nil {
		errs = append(errs, fmt.Errorf("context source: %w", err))
	}
	klog.InfoS("flowlens-agent stopped")
	return errors.Join(errs...)
}
