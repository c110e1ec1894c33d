// Command demo shows flowlens on a simulated Kubernetes node: it builds a
// node with three pods and five Services out of network namespaces, runs
// bin/flowlens-agent on the node's conntrack table (pod context from an
// inventory file) and bin/flowlens collect as its IPFIX collector, drives
// HTTP, DNS, TLS, TCP and UDP traffic through the Services, and prints the
// flow records it gets back as a table.
//
// The web pod opts into L7 export (visibility.antrea.io/l7-export: ingress
// in the inventory). When Suricata is installed, the demo runs it on a
// mirrored copy of that pod's traffic with eve-log to the agent, and the
// table's L7 column shows the application protocol and the HTTP method,
// host, URL and status, DNS question and answer, or TLS server name and
// version. Without Suricata it says so and shows the L3/L4 table.
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

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/test/l7e2e"
	"github.com/flowlens/flowlens/test/netnstest"
)

type options struct {
	binDir      string
	wait        time.Duration // longest wait for records
	settle      time.Duration // extra wait for end-of-flow records once all flows are seen
	keep        bool
	trafficOnly bool
	noL7        bool
}

func main() {
	var o options
	flag.StringVar(&o.binDir, "bin", "bin", "directory holding flowlens-agent and flowlens")
	flag.DurationVar(&o.wait, "wait", 60*time.Second, "how long to wait for flow records")
	flag.DurationVar(&o.settle, "settle", 25*time.Second, "once every flow has a record, how long to wait for their final (end-of-flow/idle) records")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (config, logs, raw records) instead of removing it")
	flag.BoolVar(&o.trafficOnly, "traffic-only", false, "build the node and drive the traffic without the agent and collector (checks the topology)")
	flag.BoolVar(&o.noL7, "no-l7", false, "run without Suricata, as when it is not installed (no L7 column values)")
	flag.Parse()
	// The demo's own EVE probe logs through klog; the demo prints its own
	// progress instead.
	klog.SetLogger(logr.Discard())

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
			if closeErr := topo.close(); closeErr != nil {
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

	suricata, suricataErr := l7e2e.FindSuricata()
	if o.noL7 {
		suricataErr = errors.New("Suricata not used (-no-l7)")
	}
	noL7 := suricataErr // why the L7 column will be empty, if it will
	if suricataErr != nil {
		step(out, "NO L7: %v", suricataErr)
		step(out, "  the table shows L3/L4 only; `make demo` installs Suricata (hack/install-deps.sh)")
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	ac := agentOptions{netnsPath: topo.node.NetnsPath, collectorPort: port, inventory: filepath.Join(work, "inventory.yaml")}
	if suricataErr == nil {
		ac.eveSocket = filepath.Join(work, "eve.sock")
	}
	if err := os.WriteFile(ac.inventory, []byte(topo.inventoryYAML()), 0o644); err != nil {
		return fmt.Errorf("write inventory: %w", err)
	}
	configPath := filepath.Join(work, "agent.yaml")
	if err := os.WriteFile(configPath, []byte(agentConfig(ac)), 0o644); err != nil {
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
	step(out, "agent: %s --config %s (inventory %s)", agentBin, configPath, ac.inventory)

	if ac.eveSocket != "" {
		sensor, err := startL7(topo, work, suricata, ac.eveSocket)
		if sensor != nil {
			defer sensor.close(out)
		}
		if err != nil {
			return err
		}
		step(out, "suricata: on a mirror of pod web's veth %s (both directions), eve-log -> %s; waiting until it captures...", topo.web.HostVeth, ac.eveSocket)
		started := time.Now()
		if err := sensor.warmUp(ctx, topo); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			noL7 = err
			step(out, "NO L7: %v", err)
		} else {
			step(out, "  capturing after %s", time.Since(started).Round(100*time.Millisecond))
		}
	}

	want, err := topo.driveTraffic()
	if err != nil {
		return fmt.Errorf("drive traffic: %w", err)
	}
	step(out, "traffic: %d HTTP GETs via %s, DNS via %s, TLS via %s, TCP %s up / %s down via %s, UDP %s / %s via %s",
		len(httpPaths()), topo.webSvc.Addr(), topo.dnsSvc.Addr(), topo.tlsSvc.Addr(), size(tcpUp), size(tcpDown), topo.echoSvc.Addr(),
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
	step(out, "%d records for %d connections (%d not in the table, e.g. Suricata warm-up GETs); %d lines were not records", total, len(latest), others, bad)
	if noL7 != nil {
		step(out, "L7 column empty: %v", noL7)
	}
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

// agentOptions is what the agent's configuration depends on.
type agentOptions struct {
	netnsPath     string
	collectorPort int
	inventory     string // inventory file: pod names and the L7 opt-in
	eveSocket     string // where Suricata's eve-log connects; "" = L7 off
}

// agentConfig is the agent's YAML configuration for the demo node.
func agentConfig(o agentOptions) string {
	l7 := ""
	if o.eveSocket != "" {
		l7 = fmt.Sprintf(`l7:
  eve:
    source: unix_stream
    path: %s
`, o.eveSocket)
	}
	return strings.TrimLeft(fmt.Sprintf(`
nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
export:
  collector: 127.0.0.1:%d
  transport: tcp
  l7DetailElements: true   # DNS/TLS details; flowlens collect decodes them
connections:
  activeTimeout: 5s
  idleTimeout: 5s
server:
  listen: 127.0.0.1:0   # metrics/healthz
inventory:
  file: %s
%s`, nodeName, o.netnsPath, o.collectorPort, o.inventory, l7), "\n")
}
