// Command flowlens-agent turns a node's connections into IPFIX flow records.
// Its pipeline is built in run (run.go): conntrack source -> connection store
// -> expire queue -> enrichment -> IPFIX exporter.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/agentconfig"
)

func main() {
	if err := mainErr(os.Args[1:]); err != nil {
		klog.ErrorS(err, "flowlens-agent failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func mainErr(args []string) error {
	fs := flag.NewFlagSet("flowlens-agent", flag.ContinueOnError)
	klog.InitFlags(fs)
	var (
		configPath = fs.String("config", "", "path of the YAML configuration (see docs/examples/agent.yaml)")
		nodeName   = fs.String("node-name", "", "overrides nodeName")
		netnsPath  = fs.String("netns", "", "overrides conntrack.netns")
		collector  = fs.String("collector", "", "overrides export.collector (host:port)")
		transport  = fs.String("transport", "", "overrides export.transport (tcp, udp, tls)")
		listen     = fs.String("listen", "", "overrides server.listen (host:port for /metrics and /healthz)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg, err := agentconfig.Load(*configPath)
	if err != nil {
		return err
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
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, cfg)
}
