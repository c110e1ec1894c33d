// Command demo shows flowlens on a simulated Kubernetes node: it builds a
// node with three pods and five Services out of network namespaces, runs
// bin/flowlens-agent on the node's conntrack table (pod context from an
// inventory file) exporting to bin/flowlens-aggregator, drives HTTP, DNS,
// TLS, TCP and UDP traffic through the Services, and prints the flows the
// aggregator stored as a table, read back from its sink.
//
// The sink is a private clickhouse-server the demo starts on free loopback
// ports in its work directory when ClickHouse is installed (the table is
// then a query over the flows table, native protocol), else the JSON lines
// sink writing a file in the work directory (the demo says so); -sink
// chooses explicitly.
//
// The web pod opts into L7 export (visibility.antrea.io/l7-export: ingress
// in the inventory). When Suricata is installed, the demo runs it on a
// mirrored copy of that pod's traffic with eve-log to the agent, and the
// table's L7 column shows the application protocol and the HTTP method,
// host, URL and status, DNS question and answer, or TLS server name and
// version. Without Suricata it says so and shows the L3/L4 table.
//
// With the ClickHouse sink the demo then starts the web UI (bin/flowlens
// ui) over that table and ends by printing its URL. With -serve it keeps
// everything running (node, agent, aggregator, Suricata, ClickHouse and
// the UI) until Ctrl-C, so a person can open the URL; without, the UI
// goes when the demo exits.
//
// Run it as root from the repository root (`make demo` builds the binaries
// first; `make demo DEMO_FLAGS=-serve` keeps it up). Everything it creates
// (namespaces, processes, files) is removed on exit, on Ctrl-C and on
// SIGTERM.
package main

import (
	"context"
	"encoding/json"
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

	"github.com/flowlens/flowlens/test/clickhousetest"
	"github.com/flowlens/flowlens/test/l7e2e"
	"github.com/flowlens/flowlens/test/netnstest"
)

type options struct {
	binDir      string
	sink        string        // auto, clickhouse or jsonl
	wait        time.Duration // longest wait for rows
	settle      time.Duration // extra wait for final rows once every connection has one
	keep        bool
	trafficOnly bool
	noL7        bool
	serve       bool // keep everything running until interrupted
	uiPort      int  // the UI's port on 127.0.0.1; 0 picks a free one
}

func main() {
	var o options
	flag.StringVar(&o.binDir, "bin", "bin", "directory holding flowlens-agent and flowlens-aggregator")
	flag.StringVar(&o.sink, "sink", sinkAuto, "aggregator sink the table is read from: auto (ClickHouse when clickhouse-server is installed, else JSON lines), clickhouse or jsonl")
	flag.DurationVar(&o.wait, "wait", 60*time.Second, "how long to wait for rows in the sink")
	flag.DurationVar(&o.settle, "settle", 25*time.Second, "once every connection has a row, how long to wait for their final (end-of-flow/idle) rows")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, logs, the sink's data and the rows read back) instead of removing it")
	flag.BoolVar(&o.trafficOnly, "traffic-only", false, "build the node and drive the traffic without the agent and aggregator (checks the topology)")
	flag.BoolVar(&o.noL7, "no-l7", false, "run without Suricata, as when it is not installed (no L7 column values)")
	flag.BoolVar(&o.serve, "serve", false, "after the table, keep the node, the pipeline, ClickHouse and the web UI running until Ctrl-C")
	flag.IntVar(&o.uiPort, "ui-port", 8080, "port of the web UI on 127.0.0.1 (0: any free port)")
	flag.Parse()
	// The demo's own EVE probe logs through klog; the demo prints its own
	// progress instead.
	klog.SetLogger(logr.Discard())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	_, err := run(ctx, o, os.Stdout)
	stop()
	if o.serve && errors.Is(err, errServed) {
		fmt.Fprintln(os.Stderr, "demo: stopped; cleaned up")
		return
	}
	if err != nil && !o.keep {
		err = fmt.Errorf("%w\n(rerun with -keep to keep the configs, logs and the sink's data)", err)
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

// errServed ends a -serve run that was interrupted as it should be.
var errServed = errors.New("served until interrupted")

// outcome is what a run read back from the sink, for the integration test.
type outcome struct {
	sink string // sinkClickHouse or sinkJSONL
	l7   bool   // Suricata captured: L7 fields are expected
	want []expected
	view sinkView
	ui   *uiSummary // the web UI's answer, nil without ClickHouse
}

func run(ctx context.Context, o options, out io.Writer) (res *outcome, err error) {
	if err := netnstest.CheckPrereqs(); err != nil {
		return nil, fmt.Errorf("%w (the demo needs root and hack/install-deps.sh)", err)
	}
	agentBin, aggBin := filepath.Join(o.binDir, "flowlens-agent"), filepath.Join(o.binDir, "flowlens-aggregator")
	uiBin := filepath.Join(o.binDir, "flowlens")
	sinkKind, noCH, err := chooseSink(o.sink)
	if err != nil {
		return nil, err
	}
	if !o.trafficOnly {
		if err := errors.Join(checkBinary(agentBin), checkBinary(aggBin)); err != nil {
			return nil, err
		}
	}
	if sinkKind == sinkClickHouse && !o.trafficOnly {
		if err := checkBinary(uiBin); err != nil {
			return nil, err
		}
	}
	if o.serve && (sinkKind != sinkClickHouse || o.trafficOnly) {
		return nil, errors.New("-serve needs the ClickHouse sink (the web UI reads it), and the agent")
	}

	work, err := os.MkdirTemp("", "flowlens-demo-")
	if err != nil {
		return nil, fmt.Errorf("create work directory: %w", err)
	}
	defer func() {
		if o.keep {
			step(out, "kept %s (configs, logs, sink data, rows.jsonl)", work)
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
		return nil, err
	}
	step(out, "node %s: netns %s", topo.node.Name, topo.node.NetnsPath)
	for _, p := range topo.node.Pods() {
		step(out, "  pod %-7s %s", p.Name, p.IPv4)
	}
	for _, s := range topo.node.Services() {
		step(out, "  service %s/%s %s -> %s/%s", s.Namespace, s.Name, s.Addr(), s.Backend.Name, s.Endpoint())
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	if o.trafficOnly {
		want, err := topo.driveTraffic()
		if err != nil {
			return nil, fmt.Errorf("drive traffic: %w", err)
		}
		step(out, "traffic done (no agent: -traffic-only)")
		printTable(out, want, nil, topo.podName)
		return &outcome{want: want}, nil
	}

	suricata, suricataErr := l7e2e.FindSuricata()
	if o.noL7 {
		//lint:ignore ST1005 Suricata is a name; the demo prints this as a sentence.
		suricataErr = errors.New("Suricata not used (-no-l7)")
	}
	noL7 := suricataErr // why the L7 column will be empty, if it will
	if suricataErr != nil {
		step(out, "NO L7: %v", suricataErr)
		step(out, "  the table shows L3/L4 only; `make demo` installs Suricata (hack/install-deps.sh)")
	}

	// The sink first: the aggregator creates the flows table at start.
	ag := aggregatorOptions{sink: sinkKind}
	var reader sinkReader
	var chServer *clickhousetest.Server
	switch sinkKind {
	case sinkClickHouse:
		chServer, err = startClickHouse(ctx, filepath.Join(work, "clickhouse"))
		if err != nil {
			return nil, err
		}
		defer func() {
			if stopErr := chServer.Stop(); stopErr != nil {
				err = errors.Join(err, fmt.Errorf("stop clickhouse-server: %w", stopErr))
			}
		}()
		ag.clickhouseAddr = chServer.Addr
		var chr *chReader
		if chr, err = newCHReader(chServer.Addr); err != nil {
			return nil, err
		}
		defer chr.close()
		reader = chr
		step(out, "sink: ClickHouse table %s.%s (private clickhouse-server, native protocol on %s, data in %s)", chDatabase, chTable, chServer.Addr, chServer.Dir)
	default:
		ag.jsonlPath = filepath.Join(work, "flows.jsonl")
		reader = &jsonlReader{path: ag.jsonlPath}
		if noCH != "" {
			step(out, "NO CLICKHOUSE: %s; the aggregator writes JSON lines to %s and the table is read from that file", noCH, ag.jsonlPath)
			step(out, "  `make demo` installs clickhouse-server (hack/install-deps.sh)")
		} else {
			step(out, "sink: JSON lines %s (-sink jsonl)", ag.jsonlPath)
		}
	}

	if ag.listenPort, err = freeLoopbackPort(); err != nil {
		return nil, err
	}
	aggConfig := filepath.Join(work, "aggregator.yaml")
	if err := os.WriteFile(aggConfig, []byte(aggregatorConfig(ag)), 0o644); err != nil {
		return nil, fmt.Errorf("write aggregator config: %w", err)
	}
	aggregator, err := startChild("aggregator", filepath.Join(work, "aggregator.log"), nil, aggBin, "--config", aggConfig)
	if err != nil {
		return nil, err
	}
	defer aggregator.stop()
	if err := waitListening(ctx, aggregator, ag.listenPort, 15*time.Second); err != nil {
		return nil, err
	}
	step(out, "aggregator: %s --config %s (listens on tcp://127.0.0.1:%d)", aggBin, aggConfig, ag.listenPort)

	ac := agentOptions{netnsPath: topo.node.NetnsPath, collectorPort: ag.listenPort, inventory: filepath.Join(work, "inventory.yaml")}
	if suricataErr == nil {
		ac.eveSocket = filepath.Join(work, "eve.sock")
	}
	if err := os.WriteFile(ac.inventory, []byte(topo.inventoryYAML()), 0o644); err != nil {
		return nil, fmt.Errorf("write inventory: %w", err)
	}
	configPath := filepath.Join(work, "agent.yaml")
	if err := os.WriteFile(configPath, []byte(agentConfig(ac)), 0o644); err != nil {
		return nil, fmt.Errorf("write agent config: %w", err)
	}
	agent, err := startChild("agent", filepath.Join(work, "agent.log"), nil, agentBin, "--config", configPath)
	if err != nil {
		return nil, err
	}
	defer agent.stop()
	// The agent needs a moment to open conntrack in the node namespace; a
	// connection made before its first dump would still be seen, but an
	// early exit (bad config, missing permission) is better caught here.
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-agent.done:
		return nil, agent.exitError()
	case <-time.After(1500 * time.Millisecond):
	}
	step(out, "agent: %s --config %s (inventory %s)", agentBin, configPath, ac.inventory)

	if ac.eveSocket != "" {
		sensor, err := startL7(topo, work, suricata, ac.eveSocket)
		if sensor != nil {
			defer sensor.close(out)
		}
		if err != nil {
			return nil, err
		}
		step(out, "suricata: on a mirror of pod web's veth %s (both directions), eve-log -> %s; waiting until it captures...", topo.web.HostVeth, ac.eveSocket)
		started := time.Now()
		if err := sensor.warmUp(ctx, topo); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			noL7 = err
			step(out, "NO L7: %v", err)
		} else {
			step(out, "  capturing after %s", time.Since(started).Round(100*time.Millisecond))
		}
	}

	want, err := topo.driveTraffic()
	if err != nil {
		return nil, fmt.Errorf("drive traffic: %w", err)
	}
	step(out, "traffic: %d HTTP GETs via %s, DNS via %s, TLS via %s, TCP %s up / %s down via %s, UDP %s / %s via %s",
		len(httpPaths()), topo.webSvc.Addr(), topo.dnsSvc.Addr(), topo.tlsSvc.Addr(), size(tcpUp), size(tcpDown), topo.echoSvc.Addr(),
		size(udpUp), size(udpDown), topo.udpSvc.Addr())

	step(out, "waiting for the aggregator's rows in the sink (up to %s)...", o.wait)
	readErr, err := waitRows(ctx, o, out, want, reader, agent, aggregator)
	if err != nil {
		return nil, err
	}
	// Stop the agent, then the aggregator: each flushes what it holds
	// downstream on the way out, so the sink has every row before the
	// final read. -serve keeps them running (waitRows saw every row
	// final, or gave them the settle time).
	if !o.serve {
		agent.stop()
		aggregator.stop()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rows, finalErr := reader.read(ctx)
	if finalErr != nil {
		readErr = finalErr
	}
	writeRows(filepath.Join(work, "rows.jsonl"), rows)
	view := summarize(rows)
	fmt.Fprintln(out)
	missing := printTable(out, want, &view, topo.podName)
	fmt.Fprintln(out)
	others := len(view.latest)
	for _, e := range want {
		if _, ok := view.latest[e.key()]; ok {
			others--
		}
	}
	from := "ClickHouse table " + chDatabase + "." + chTable
	if sinkKind == sinkJSONL {
		from = "JSON lines file " + ag.jsonlPath
	}
	note := ""
	if others > 0 {
		note = fmt.Sprintf(" (%d not in the table, e.g. Suricata warm-up GETs)", others)
	}
	step(out, "read back from the %s: %d rows for %d connections%s", from, view.total, len(view.latest), note)
	if jr, ok := reader.(*jsonlReader); ok && jr.bad > 0 {
		step(out, "  %d lines of %s were not rows", jr.bad, ag.jsonlPath)
	}
	if noL7 != nil {
		step(out, "L7 column empty: %v", noL7)
	}
	res = &outcome{sink: sinkKind, l7: noL7 == nil, want: want, view: view}
	if missing > 0 || view.total == 0 {
		msg := fmt.Sprintf("%d of the demo's %d connections have no row in the %s", missing, len(want), from)
		if view.total == 0 {
			msg = fmt.Sprintf("the %s has no rows after %s", from, o.wait)
		}
		if readErr != nil {
			msg += fmt.Sprintf("\nlast error reading it: %v", readErr)
		}
		msg += fmt.Sprintf("\nlast lines of the agent log:\n%s\nlast lines of the aggregator log:\n%s", agent.logTail(15), aggregator.logTail(15))
		if chServer != nil {
			msg += "\nlast lines of clickhouse-server's error log:\n" + clickhouseLogTail(chServer)
		}
		return res, errors.New(msg)
	}
	if readErr != nil {
		return res, fmt.Errorf("reading back the %s: %w", from, readErr)
	}
	if sinkKind != sinkClickHouse {
		why := "-sink jsonl"
		if noCH != "" {
			why = "`make demo-deps` installs clickhouse-server"
		}
		step(out, "no web UI: it reads the ClickHouse sink (%s)", why)
		return res, ctx.Err()
	}
	ui, err := startUI(ctx, o, uiBin, chServer.Addr, filepath.Join(work, "ui.log"))
	if ui != nil {
		defer ui.stop()
	}
	if err != nil {
		return res, err
	}
	if res.ui, err = checkUI(ctx, ui.url); err != nil {
		return res, fmt.Errorf("%w\nlast lines of the UI's log:\n%s", err, ui.logTail(15))
	}
	fmt.Fprintln(out)
	step(out, "web UI: %s  (service map: %d nodes, %d edges; flow explorer under Flows)", ui.url, res.ui.nodes, res.ui.edges)
	if !o.serve {
		step(out, "  it stops with the demo; `make demo DEMO_FLAGS=-serve` keeps everything running until Ctrl-C")
		return res, ctx.Err()
	}
	step(out, "  open it in a browser; everything keeps running until Ctrl-C")
	select {
	case <-ctx.Done():
		return res, errServed
	case <-ui.done:
		return res, ui.exitError()
	}
}

// waitRows polls the sink until every connection has a row and either all
// of them are final or o.settle passed, or o.wait passed without all of
// them seen (the table then shows what is missing). It fails when a child
// exits or on interrupt; readErr is the last failed read, if the sink
// could not be read at some point.
func waitRows(ctx context.Context, o options, out io.Writer, want []expected, reader sinkReader, agent, aggregator *child) (readErr, err error) {
	deadline := time.NewTimer(o.wait)
	defer deadline.Stop()
	var settle <-chan time.Time
	lastSeen, lastEnded, lastRows := -1, -1, -1
	for {
		rows, rerr := reader.read(ctx)
		if rerr != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			readErr = rerr
		}
		view := summarize(rows)
		seen, ended := progress(want, view.latest)
		if rerr == nil && (seen != lastSeen || ended != lastEnded || view.total != lastRows) {
			step(out, "  %d rows; %d/%d connections have one, %d/%d final", view.total, seen, len(want), ended, len(want))
			lastSeen, lastEnded, lastRows = seen, ended, view.total
		}
		if ended == len(want) {
			return readErr, nil
		}
		if seen == len(want) && settle == nil {
			t := time.NewTimer(o.settle)
			defer t.Stop()
			settle = t.C
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-agent.done:
			return nil, agent.exitError()
		case <-aggregator.done:
			return nil, aggregator.exitError()
		case <-deadline.C:
			return readErr, nil
		case <-settle:
			return readErr, nil
		case <-time.After(time.Second):
		}
	}
}

// writeRows keeps the rows read back as JSON lines next to the logs, for
// -keep; failing to write them does not fail the demo.
func writeRows(path string, rows []row) {
	var b []byte
	for i := range rows {
		line, err := json.Marshal(&rows[i])
		if err != nil {
			continue
		}
		b = append(append(b, line...), '\n')
	}
	_ = os.WriteFile(path, b, 0o600)
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
	collectorPort int    // the aggregator's IPFIX port on 127.0.0.1
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
  l7DetailElements: true   # DNS/TLS details; the aggregator stores them
  healthElements: true     # RTT, drops, destination names (the table's columns)
connections:
  activeTimeout: 5s
  idleTimeout: 5s
server:
  listen: 127.0.0.1:0   # metrics/healthz
inventory:
  file: %s
%s`, nodeName, o.netnsPath, o.collectorPort, o.inventory, l7), "\n")
}

// aggregatorOptions is what the aggregator's configuration depends on.
type aggregatorOptions struct {
	listenPort     int
	sink           string // sinkClickHouse or sinkJSONL
	clickhouseAddr string
	jsonlPath      string
}

// aggregatorConfig is the aggregator's YAML configuration. Its timeouts
// are much shorter than the defaults so the demo's rows are final within
// seconds: a connection the agent reported idle (UDP) is written once the
// aggregator has heard nothing of it for inactiveTimeout. Writes are
// committed every 500ms, and a stop flushes within the demo's 5s grace.
func aggregatorConfig(o aggregatorOptions) string {
	queue := `    commitInterval: 500ms
    retryMin: 200ms
    retryMax: 2s
    flushTimeout: 3s
`
	var sink string
	if o.sink == sinkClickHouse {
		sink = fmt.Sprintf(`  clickhouse:
    enabled: true
    addr: %s
    database: %s
    table: %s
    dialTimeout: 2s
%s`, o.clickhouseAddr, chDatabase, chTable, queue)
	} else {
		sink = fmt.Sprintf(`  jsonl:
    enabled: true
    path: %s
%s`, o.jsonlPath, queue)
	}
	return strings.TrimLeft(fmt.Sprintf(`
aggregatorID: demo-aggregator
listen:
  - tcp://127.0.0.1:%d
metricsAddress: ""   # off: nothing else to listen on
shutdownTimeout: 4s
correlation:
  activeTimeout: 5s
  inactiveTimeout: 3s
sinks:
%s`, o.listenPort, sink), "\n")
}
