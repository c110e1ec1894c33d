// Command flowlens-agent turns a node's connections into IPFIX flow records.
// This file only reads the command line and the configuration; the agent
// itself (conntrack source -> connection store -> expire queue ->
// enrichment -> IPFIX exporter) is pkg/agent.
package main

import (
	"context"
	"flag"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/agent"
	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/cli"
)

// gcPercent is the agent's GOGC unless the environment sets one. The
// connection store and the expire queue live outside the Go heap (package
// offheap), so the heap is small and most of it is the export buffer,
// allocated once and pointer-free: GOGC=100 would add as much again as
// headroom, resident for good once a start-up backlog has used it (about
// 25 MB of the 300 bytes per connection the idle 1M table allows). Half of
// it costs one GC cycle per ~25 MB allocated instead of per ~50 MB (a few
// ms of CPU each, the store not being scanned) and nothing at idle, where
// nothing is allocated. No memory limit is set: it would not count the
// store, and a limit below the live heap makes the collector run
// continuously.
const gcPercent = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := mainErr(ctx, os.Args[1:], os.Stderr)
	stop()
	code := cli.ExitCode(err)
	if code == cli.ExitFailure {
		klog.ErrorS(err, "flowlens-agent failed")
	}
	klog.Flush()
	os.Exit(code)
}

// mainErr runs the agent until ctx ends. Help and usage errors are printed
// on usage.
func mainErr(ctx context.Context, args []string, usage io.Writer) error {
	cfg, err := parseConfig(args, usage)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a, err := agent.New(cfg, reg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// parseConfig reads the flags and the configuration file they name, and
// applies the flags that override the file.
func parseConfig(args []string, usage io.Writer) (agentconfig.Config, error) {
	fs := flag.NewFlagSet("flowlens-agent", flag.ContinueOnError)
	var (
		configPath = fs.String("config", "", "path of the YAML configuration (see docs/examples/agent.yaml)")
		nodeName   = fs.String("node-name", "", "overrides nodeName")
		netnsPath  = fs.String("netns", "", "overrides conntrack.netns")
		collector  = fs.String("collector", "", "overrides export.collector (host:port)")
		transport  = fs.String("transport", "", "overrides export.transport (tcp, udp, tls)")
		listen     = fs.String("listen", "", "overrides server.listen (host:port for /metrics and /healthz)")
	)
	fs.SetOutput(usage)
	if err := cli.Parse(fs, args, true); err != nil {
		return agentconfig.Config{}, err
	}
	if fs.NArg() > 0 {
		return agentconfig.Config{}, cli.Usagef(fs, "unexpected arguments %q", fs.Args())
	}
	cfg, err := agentconfig.Load(*configPath)
	if err != nil {
		return agentconfig.Config{}, err
	}
	override := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	override(&cfg.NodeName, *nodeName)
	override(&cfg.Conntrack.NetNS, *netnsPath)
	override(&cfg.Export.Collector, *collector)
	override(&cfg.Export.Transport, *transport)
	override(&cfg.Server.Listen, *listen)
	if err := cfg.Finish(); err != nil {
		return agentconfig.Config{}, err
	}
	return cfg, nil
}
