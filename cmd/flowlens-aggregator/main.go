// Command flowlens-aggregator receives IPFIX from every flowlens (or Antrea)
// agent, merges the two halves of inter-node connections, aggregates
// updates and writes the result to ClickHouse, JSON lines and/or another
// IPFIX collector.
//
// The whole data flow is in (*aggregator).run:
//
//	ipfixcollect (one per listen URL) -> chan correlate.Input
//	  -> correlate.Correlator (one goroutine) -> sink.Fanout
//	  -> sink.Sink per destination (bounded queue, batches, retries)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/cli"
	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/pkg/linkmetrics"
	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
	"github.com/flowlens/flowlens/pkg/sink/ipfix"
	"github.com/flowlens/flowlens/pkg/sink/jsonl"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	code := runMain(os.Args[1:], os.Stderr)
	klog.Flush()
	os.Exit(code)
}

// runMain is main with its exit status: 0 (also for --help), 2 for a bad
// command line or configuration, 1 when the aggregator fails.
func runMain(args []string, stderr io.Writer) int {
	cfg, err := configure(args, stderr)
	if err != nil {
		if cli.ExitCode(err) == cli.ExitFailure {
			// One bad field per line, as a person fixing the file reads
			// them (a log line would quote them into one).
			fmt.Fprintf(stderr, "flowlens-aggregator: invalid configuration:\n  %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
			return cli.ExitUsage
		}
		return cli.ExitCode(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a, err := newAggregator(cfg, reg)
	if err != nil {
		klog.ErrorS(err, "Cannot start")
		return cli.ExitFailure
	}
	if err := a.run(ctx); err != nil {
		klog.ErrorS(err, "Aggregator failed")
		return cli.ExitFailure
	}
	return cli.ExitOK
}

// configure parses the command line (help and usage errors are printed to
// out and returned as pkg/cli errors), reads the file and applies the
// flags over it.
func configure(args []string, out io.Writer) (*aggregatorconfig.Config, error) {
	fs := flag.NewFlagSet("flowlens-aggregator", flag.ContinueOnError)
	fs.SetOutput(out)
	configPath := fs.String("config", "", "YAML configuration file (every option and default: docs/examples/aggregator.yaml)")
	var listen listFlag
	fs.Var(&listen, "listen", "collector endpoint scheme://host:port (tcp, udp, tls); repeatable; replaces the file's list")
	metricsAddr := fs.String("metrics-address", "", "address for /metrics and /healthz (overrides the file)")
	aggID := fs.String("aggregator-id", "", "identity stored with every row (overrides the file; default hostname)")
	chAddr := fs.String("clickhouse-addr", "", "enable the ClickHouse sink at this native-protocol host:port (overrides the file)")
	jsonlPath := fs.String("jsonl", "", "enable the JSON lines sink writing to this file, - for stdout (overrides the file)")
	if err := cli.Parse(fs, args, true); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, cli.Usagef(fs, "unexpected arguments %q", fs.Args())
	}

	cfg, err := aggregatorconfig.LoadWith(*configPath, func(cfg *aggregatorconfig.Config) {
		if len(listen) > 0 {
			cfg.Listen = listen
		}
		if *metricsAddr != "" {
			cfg.MetricsAddress = *metricsAddr
		}
		if *aggID != "" {
			cfg.AggregatorID = *aggID
		}
		if *chAddr != "" {
			cfg.Sinks.ClickHouse.Enabled, cfg.Sinks.ClickHouse.Addr = true, *chAddr
		}
		if *jsonlPath != "" {
			cfg.Sinks.JSONL.Enabled, cfg.Sinks.JSONL.Path = true, *jsonlPath
		}
	})
	if err != nil {
		return nil, err
	}
	return &cfg, nil
}

type inputMetrics struct {
	decoded   prometheus.Counter
	notFlow   prometheus.Counter
	waited    prometheus.Counter
	readiness prometheus.Gauge
}

func newInputMetrics(reg prometheus.Registerer) (*inputMetrics, error) {
	m := &inputMetrics{
		decoded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_input_records_total",
			Help: "Flow records decoded by the collectors and handed to the correlator.",
		}),
		notFlow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_input_ignored_total",
			Help: "Data records without flow addresses (options records and the like), ignored.",
		}),
		waited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_input_queue_full_total",
			Help: "Times a collector waited because the correlator's input queue was full.",
		}),
		readiness: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_aggregator_up",
			Help: "1 while the aggregator runs its pipeline.",
		}),
	}
	for _, c := range []prometheus.Collector{m.decoded, m.notFlow, m.waited, m.readiness} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register aggregator metrics: %w", err)
		}
	}
	return m, nil
}

// aggregator holds the stages built from the configuration.
type aggregator struct {
	cfg        *aggregatorconfig.Config
	reg        *prometheus.Registry
	collectors []*ipfixcollect.Collector
	correlator *correlate.Correlator
	sinks      sink.Fanout
	ipfixOut   *ipfix.Writer
	metrics    *inputMetrics
	httpLn     net.Listener
	in         chan correlate.Input
	health     *health
	wal        *walStage          // nil when wal.enabled is false
	links      *linkmetrics.Links // nil when metrics.links.enabled is false
}

// newAggregator builds every stage and binds every socket, so errors
// (ports in use, bad certificates) surface before anything runs.
func newAggregator(cfg *aggregatorconfig.Config, reg *prometheus.Registry) (*aggregator, error) {
	a := &aggregator{cfg: cfg, reg: reg, in: make(chan correlate.Input, cfg.InputQueue), health: newHealth()}
	var err error
	if a.metrics, err = newInputMetrics(reg); err != nil {
		return nil, err
	}
	if a.correlator, err = correlate.New(correlateConfig(cfg), reg); err != nil {
		return nil, err
	}
	if a.wal, err = newWALStage(cfg, reg); err != nil {
		return nil, err
	}
	if l := cfg.Metrics.Links; l.Enabled {
		if a.links, err = linkmetrics.New(linkmetrics.Config{MaxSeries: l.MaxSeries}, reg); err != nil {
			return nil, fmt.Errorf("metrics.links: %w", err)
		}
	}
	if err := a.buildSinks(); err != nil {
		a.close()
		return nil, err
	}
	for i, l := range cfg.Listen {
		network, addr, err := ipfixcollect.ParseListen(l)
		if err != nil {
			a.close()
			return nil, fmt.Errorf("listen[%d]: %w", i, err)
		}
		// Each listener's collector metrics carry its URL as a label.
		creg := prometheus.WrapRegistererWith(prometheus.Labels{"listener": l}, reg)
		c, err := ipfixcollect.New(ipfixcollect.Config{
			Network: network, Address: addr,
			TLS:                         ipfixcollect.TLSConfig{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, ClientCAFile: cfg.TLS.ClientCAFile},
			MaxConnections:              cfg.Limits.MaxConnections,
			MaxUDPSessions:              cfg.Limits.MaxUDPSessions,
			IdleTimeout:                 cfg.Limits.IdleTimeout.D(),
			MaxTemplatesPerSession:      cfg.Limits.MaxTemplatesPerSession,
			MaxTemplateFieldsPerSession: cfg.Limits.MaxTemplateFieldsPerSession,
			MaxFieldsPerMessage:         cfg.Limits.MaxFieldsPerMessage,
		}, creg)
		if err != nil {
			a.close()
			return nil, fmt.Errorf("listen[%d] %s: %w", i, l, err)
		}
		a.collectors = append(a.collectors, c)
	}
	if cfg.MetricsAddress != "" {
		if a.httpLn, err = net.Listen("tcp", cfg.MetricsAddress); err != nil {
			a.close()
			return nil, fmt.Errorf("metricsAddress %s: %w", cfg.MetricsAddress, err)
		}
	}
	return a, nil
}

func (a *aggregator) buildSinks() error {
	add := func(name string, w sink.Writer, q aggregatorconfig.Queue) error {
		w = a.wal.wrap(name, w, len(a.sinks))
		s, err := sink.New(sinkConfig(a.cfg, name, w, q), a.reg)
		if err != nil {
			return fmt.Errorf("sinks.%s: %w", name, err)
		}
		a.sinks = append(a.sinks, s)
		return nil
	}
	if s := a.cfg.Sinks.ClickHouse; s.Enabled {
		pw, err := readSecret(s.PasswordFile)
		if err != nil {
			return fmt.Errorf("sinks.clickhouse.passwordFile: %w", err)
		}
		if s.Cluster != nil {
			if err := a.addClickHouseCluster(s, pw); err != nil {
				return fmt.Errorf("sinks.clickhouse.cluster: %w", err)
			}
			return a.buildOtherSinks(add)
		}
		w, err := clickhouse.New(clickhouse.Config{
			Addr: s.Addr, Database: s.Database, Table: s.Table, Username: s.Username, Password: pw,
			Aggregator: a.cfg.AggregatorID, DialTimeout: s.DialTimeout.D(), Compress: s.Compress,
			Rollup: rollupConfig(s),
		})
		if err != nil {
			return fmt.Errorf("sinks.clickhouse: %w", err)
		}
		// Create or migrate the table now so a schema problem shows at
		// start; an unreachable server is not fatal: the sink buffers and
		// its first successful write does it.
		ctx, cancel := context.WithTimeout(context.Background(), max(s.DialTimeout.D(), 5*time.Second)+5*time.Second)
		if err := w.EnsureSchema(ctx); err != nil {
			klog.ErrorS(err, "ClickHouse not ready at start; buffering until it is", "addr", s.Addr)
		}
		cancel()
		if err := add("clickhouse", w, s.Queue); err != nil {
			return err
		}
	}
	return a.buildOtherSinks(add)
}

// buildOtherSinks adds the sinks after ClickHouse, in walSinkNames' order.
func (a *aggregator) buildOtherSinks(add func(string, sink.Writer, aggregatorconfig.Queue) error) error {
	if s := a.cfg.Sinks.JSONL; s.Enabled {
		w, err := jsonl.New(jsonl.Config{Path: s.Path, MaxBytes: s.MaxBytes, MaxFiles: s.MaxFiles,
			FileMode: s.Mode(), Aggregator: a.cfg.AggregatorID})
		if err != nil {
			return fmt.Errorf("sinks.jsonl: %w", err)
		}
		if err := add("jsonl", w, s.Queue); err != nil {
			return err
		}
	}
	if s := a.cfg.Sinks.IPFIX; s.Enabled {
		w, err := ipfix.New(exportConfig(s), a.reg)
		if err != nil {
			return fmt.Errorf("sinks.ipfix: %w", err)
		}
		a.ipfixOut = w
		if err := add("ipfix", w, s.Queue); err != nil {
			return err
		}
	}
	return nil
}

// close releases sockets of an aggregator that never ran.
func (a *aggregator) close() {
	for _, c := range a.collectors {
		_ = c.Close()
	}
	if a.httpLn != nil {
		_ = a.httpLn.Close()
	}
	_ = a.wal.close()
}

// collectorAddrs are the bound listen addresses (port 0 resolved).
func (a *aggregator) collectorAddrs() []net.Addr {
	out := make([]net.Addr, len(a.collectors))
	for i, c := range a.collectors {
		out[i] = c.Addr()
	}
	return out
}

// run wires the stages and runs until ctx ends. Shutdown goes downstream
// in order so nothing in flight is lost: collectors drain their agents,
// the correlator flushes its table into the sinks, the sinks deliver
// their queues, and the IPFIX re-exporter sends what it buffered.
func (a *aggregator) run(ctx context.Context) error {
	sinkCtx, stopSinks := context.WithCancel(context.Background())
	defer stopSinks()
	exportCtx, stopExport := context.WithCancel(context.Background())
	defer stopExport()

	var sinkWG, exportWG sync.WaitGroup
	errs := make(chan error, len(a.sinks)+len(a.collectors)+4)
	for _, s := range a.sinks {
		sinkWG.Add(1)
		go func() {
			defer sinkWG.Done()
			if err := s.Run(sinkCtx); err != nil {
				errs <- err
			}
		}()
	}
	if a.ipfixOut != nil {
		exportWG.Add(1)
		go func() {
			defer exportWG.Done()
			if err := a.ipfixOut.Run(exportCtx); err != nil {
				errs <- fmt.Errorf("ipfix re-export: %w", err)
			}
		}()
	}

	// Before the correlator's goroutine owns it: what a crash left
	// uncommitted goes through it first (the sinks already run).
	if err := a.wal.replay(a.correlator, a.sinks, correlateConfig(a.cfg)); err != nil {
		// Not fatal: what was not replayed stays in the log for the next
		// start, and new records must not wait.
		klog.ErrorS(err, "WAL replay incomplete")
	}
	corrDone := make(chan struct{})
	go func() {
		defer close(corrDone)
		// The correlator stops when its input closes, not on ctx, so the
		// collectors' last records are still merged.
		if err := a.correlator.Run(context.Background(), a.in, a.emit); err != nil {
			errs <- fmt.Errorf("correlator: %w", err)
		}
	}()

	a.health.watchSinks(a.sinks)
	var srv *http.Server
	var httpWG sync.WaitGroup
	if a.httpLn != nil {
		srv = a.httpServer()
		httpWG.Add(1)
		go func() {
			defer httpWG.Done()
			if err := srv.Serve(a.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("metrics server: %w", err)
			}
		}()
	}

	var collWG sync.WaitGroup
	for i, c := range a.collectors {
		collWG.Add(1)
		go func() {
			defer collWG.Done()
			err := c.Run(ctx, a.handler())
			if ctx.Err() == nil {
				// The other listeners go on, but agents sending here are
				// lost: /healthz says so until a restart.
				if err == nil {
					err = errors.New("stopped")
				}
				a.health.listenerStopped(a.cfg.Listen[i], err)
				klog.ErrorS(err, "IPFIX listener stopped; /healthz reports unhealthy", "listen", a.cfg.Listen[i])
			}
			if err != nil {
				errs <- fmt.Errorf("collector %s: %w", c.Addr(), err)
			}
		}()
	}
	a.metrics.readiness.Set(1)
	var listening []string
	for _, ad := range a.collectorAddrs() {
		listening = append(listening, ad.Network()+"://"+ad.String())
	}
	klog.InfoS("Aggregator running", "id", a.cfg.AggregatorID, "listen", listening, "sinks", len(a.sinks), "metrics", a.cfg.MetricsAddress)

	<-ctx.Done()
	a.metrics.readiness.Set(0)
	klog.InfoS("Aggregator stopping")
	deadline := time.AfterFunc(a.cfg.ShutdownTimeout.D(), func() {
		klog.ErrorS(nil, "Graceful stop exceeded shutdownTimeout; abandoning sinks", "timeout", a.cfg.ShutdownTimeout.D())
		stopSinks()
		stopExport()
	})
	defer deadline.Stop()
	collWG.Wait()
	close(a.in)
	<-corrDone
	stopSinks()
	sinkWG.Wait()
	// Every sink has committed what it wrote: closing removes what all of
	// them committed and keeps the rest for the next start.
	if err := a.wal.close(); err != nil {
		errs <- fmt.Errorf("wal close: %w", err)
	}
	stopExport()
	exportWG.Wait()
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
	}
	httpWG.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// emit hands a row of the correlator to the link metrics and the sinks.
// Rows of the WAL replay go to the sinks only: the process that crashed
// had counted most of them already, and a counter counting a row twice is
// worse than one whose restart (a reset, to rate()) misses some.
func (a *aggregator) emit(r *correlate.Record) {
	if a.links != nil {
		a.links.Observe(r)
	}
	a.sinks.Put(r)
}

// handler converts decoded records for the correlator. Each collector
// calls it from one goroutine at a time, so its cache needs no lock.
func (a *aggregator) handler() func(ipfixcollect.Record) {
	type key struct {
		addr   string
		domain uint32
	}
	names := map[key]string{}
	return func(r ipfixcollect.Record) {
		fr, err := r.FlowRecord()
		if err != nil {
			a.metrics.notFlow.Inc()
			return
		}
		// The exporter's address and observation domain name the agent;
		// the source port is left out since it changes on reconnect.
		k := key{r.Exporter.Addr().String(), r.ObservationDomainID}
		name, ok := names[k]
		if !ok {
			if len(names) > 4096 {
				clear(names)
			}
			name = fmt.Sprintf("%s/%d", k.addr, k.domain)
			names[k] = name
		}
		in := correlate.Input{Record: fr, Exporter: name}
		// Agents number their observation domain after their node by
		// default, which names the node that sent this half.
		for _, n := range []string{fr.Source.NodeName, fr.Destination.NodeName} {
			if n != "" && flow.DefaultObservationDomainID(n) == r.ObservationDomainID {
				in.ExporterNode = n
			}
		}
		a.metrics.decoded.Inc()
		if a.wal != nil {
			a.wal.send(in, a.queue)
			return
		}
		a.queue(in)
	}
}

// queue hands in to the correlator, waiting (counted) while its queue is
// full.
func (a *aggregator) queue(in correlate.Input) {
	select {
	case a.in <- in:
	default:
		a.metrics.waited.Inc()
		a.in <- in
	}
}

func (a *aggregator) httpServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.Handle("/healthz", a.health)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}
