// Command demo shows flowlens on a simulated Kubernetes node: it builds a
// node with three pods and three Services out of network namespaces, runs
// bin/flowlens-agent on the node's conntrack table and bin/flowlens collect
// as its IPFIX collector, drives HTTP, TCP and UDP traffic through the
// Services, and prints the flow records it gets back as a table.
//
// Run it as root from the repository root (`make demo` builds the binaries
// first). Everything it creates (namespaces, processes, files) is removed
// on exit, on Ctrl-C and on SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/flowlens/flowlens/test/netnstest"
)

type options struct {
	binDir      string
	wait        time.Duration // longest wait for records
	settle      time.Duration // extra wait for end-of-flow records once all flows are seen
	keep        bool
	trafficOnly bool
}

func main() {
	var o options
	flag.StringVar(&o.binDir, "bin", "bin", "directory holding flowlens-agent and flowlens")
	flag.DurationVar(&o.wait, "wait", 60*time.Second, "how long to wait for flow records")
	flag.DurationVar(&o.settle, "settle", 25*time.Second, "once every flow has a record, how long to wait for their final (end-of-flow/idle) records")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (config, logs, raw records) instead of removing it")
	flag.BoolVar(&o.trafficOnly, "traffic-only", false, "build the node and drive the traffic without the agent and collector (checks the topology)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout)
	stop()
	if err != nil && !o.keep {
		err = fmt.Errorf("%w\n(rerun with -keep to keep the config, logs and raw records)", err)
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "demo: interrupted; cleaned up")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

// step prints one progress line.
func step(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "==> "+format+"\n", args...)
}

func run(ctx context.Context, o options, out io.Writer) (err error) {
	if err := netnstest.CheckPrereqs(); err != nil {
		return fmt.Errorf("%w (the demo needs root and hack/install-deps.sh)", err)
	}
	agentBin, cliBin := filepath.Join(o.binDir, "flowlens-agent"), filepath.Join(o.binDir, "flowlens")
	if !o.trafficOnly {
		if err := errors.Join(checkBinary(agentBin), checkBinary(cliBin)); err != nil {
			return err
		}
	}

	work, err := os.MkdirTemp("", "flowlens-demo-")
	if err != nil {
		return fmt.Errorf("create work directory: %w", err)
	}
	defer func() {
		if o.keep {
			step(out, "kept %s (config, logs, records.jsonl)", work)
			return
		}
		if rmErr := os.RemoveAll(work); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", work, rmErr))
		}
	}()

	topo, err := buildTopology()
	if topo != nil {
		defer func() {
			if closeErr := topo.node.Close(); closeErr != nil {
				err = errors.Join(err, closeErr)
			}
		}()
	}
	if err != nil {
		return err
	}
	step(out, "node %s: netns %s", topo.node.Name, topo.node.NetnsPath)
	for _, p := range topo.node.Pods() {
		step(out, "  pod %-7s %s", p.Name, p.IPv4)
	}
	for _, s := range topo.node.Services() {
		step(out, "  service %s/%s %s -> %s/%s", s.Namespace, s.Name, s.Addr(), s.Backend.Name, s.Endpoint())
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	if o.trafficOnly {
		want, err := topo.driveTraffic()
		if err != nil {
			return fmt.Errorf("drive traffic: %w", err)
		}
		step(out, "traffic done (no agent: -traffic-only)")
		printTable(out, want, nil, topo.podName)
		return nil
	}

	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	configPath := filepath.Join(work, "agent.yaml")
	if err := os.WriteFile(configPath, []byte(agentConfig(topo.node.NetnsPath, port)), 0o644); err != nil {
		return fmt.Errorf("write agent config: %w", err)
	}

	records := newRecordLog()
	raw, err := os.Create(filepath.Join(work, "records.jsonl"))
	if err != nil {
		return fmt.Errorf("create records file: %w", err)
	}
	defer raw.Close()
	pr, pw := io.Pipe()
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		records.read(pr, raw)
	}()

	collector, err := startChild("collector", filepath.Join(work, "collector.log"), pw,
		cliBin, "collect", "--listen", fmt.Sprintf("tcp://127.0.0.1:%d", port))
	if err != nil {
		pw.Close()
		return err
	}
	defer func() {
		collector.stop()
		pw.Close()
		<-readDone
	}()
	if err := waitListening(ctx, collector, port, 10*time.Second); err != nil {
		return err
	}
	step(out, "collector: %s collect --listen tcp://127.0.0.1:%d", cliBin, port)

	agent, err := startChild("agent", filepath.Join(work, "agent.log"), nil, agentBin, "--config", configPath)
	if err != nil {
		return err
	}
	defer agent.stop()
	// The agent needs a moment to open conntrack in the node namespace; a
	// connection made before its first dump would still be seen, but an
	// early exit (bad config, missing permission) is better caught here.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-agent.done:
		return agent.exitError()
	case <-time.After(1500 * time.Millisecond):
	}
	step(out, "agent: %s --config %s", agentBin, configPath)

	want, err := topo.driveTraffic()
	if err != nil {
		return fmt.Errorf("drive traffic: %w", err)
	}
	step(out, "traffic: %d HTTP GETs via %s, TCP %s up / %s down via %s, UDP %s / %s via %s",
		len(httpPaths()), topo.webSvc.Addr(), size(tcpUp), size(tcpDown), topo.echoSvc.Addr(),
		size(udpUp), size(udpDown), topo.udpSvc.Addr())

	step(out, "waiting for flow records (up to %s)...", o.wait)
	if err := waitRecords(ctx, o, out, want, records, agent, collector); err != nil {
		return err
	}
	// Stop the agent while the collector still listens, so that records it
	// flushes on the way out are printed too.
	agent.stop()
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	total, bad, latest := records.snapshot()
	fmt.Fprintln(out)
	missing := printTable(out, want, latest, topo.podName)
	fmt.Fprintln(out)
	others := len(latest)
	for _, e := range want {
		if _, ok := latest[e.key()]; ok {
			others--
		}
	}
	step(out, "%d records for %d connections (%d not made by the demo); %d lines were not records", total, len(latest), others, bad)
	switch {
	case total == 0:
		return fmt.Errorf("no flow records arrived within %s; last lines of the agent log:\n%s\nlast lines of the collector log:\n%s",
			o.wait, agent.logTail(15), collector.logTail(15))
	case missing > 0:
		return fmt.Errorf("%d of the demo's %d connections got no flow record", missing, len(want))
	}
	return ctx.Err()
}

// waitRecords returns once every connection has a record and either all of
// them ended or o.settle passed, or fails when o.wait passes without all of
// them seen (the table then shows what is missing), when a child exits or
// on interrupt.
func waitRecords(ctx context.Context, o options, out io.Writer, want []expected, records *recordLog, agent, collector *child) error {
	deadline := time.NewTimer(o.wait)
	defer deadline.Stop()
	var settle <-chan time.Time
	lastSeen, lastEnded := -1, -1
	for {
		_, _, latest := records.snapshot()
		seen, ended := progress(want, latest)
		if seen != lastSeen || ended != lastEnded {
			step(out, "  %d/%d connections reported, %d/%d final", seen, len(want), ended, len(want))
			lastSeen, lastEnded = seen, ended
		}
		if ended == len(want) {
			return nil
		}
		if seen == len(want) && settle == nil {
			t := time.NewTimer(o.settle)
			defer t.Stop()
			settle = t.C
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-agent.done:
			return agent.exitError()
		case <-collector.done:
			return collector.exitError()
		case <-deadline.C:
			return nil
		case <-settle:
			return nil
		case <-records.updated:
		case <-time.After(time.Second):
		}
	}
}

// podName maps a pod address to its name for the table.
func (t *topology) podName(a netip.Addr) string {
	for _, p := range t.node.Pods() {
		if p.IPv4 == a || p.IPv6 == a {
			return p.Name
		}
	}
	return ""
}

// agentConfig is the agent's YAML configuration for the demo node.
func agentConfig(netnsPath string, port int) string {
	return strings.TrimLeft(fmt.Sprintf(`
nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
export:
  collector: 127.0.0.1:%d
  transport: tcp
connections:
  activeTimeout: 5s
  idleTimeout: 15s
server:
  listen: 127.0.0.1:0   # metrics/healthz
`, nodeName, netnsPath, port), "\n")
}
