//go:build integration

// Package soak_test churns short TCP connections through the whole real
// pipeline (netns pods, nftables DNAT Service, flowlens-agent,
// flowlens-aggregator, clickhouse-server) for minutes and then checks every
// connection the client made against the rows stored for it. It is a
// benchmark, run by `make soak`, not a timed test: its figures go in
// closing notes, its assertions are about numbers, not speed.
package soak_test

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/clickhousetest"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin, aggregatorBin string

func TestMain(m *testing.M) {
	agenttest.RunMain(m, "soak benchmark", func(dir string) (err error) {
		if agentBin, err = agenttest.BuildAgent(dir); err != nil {
			return err
		}
		aggregatorBin, err = agenttest.BuildAggregator(dir)
		return err
	}, netnstest.CheckPrereqs)
}

const (
	serverPort = 8080
	// Payload of every exchange each way; small, so the run is about
	// connection churn rather than bandwidth.
	sentBytes, replyBytes = 300, 700
	// netnstest's exchange header and TCP/IPv4 header bounds per packet.
	exchangeHeader       = 8
	minHeader, maxHeader = 40, 60
	clients              = 4
)

// envDuration reads a duration from the environment, so `make soak` can be
// shortened for a smoke run without editing code.
func envDuration(b *testing.B, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		b.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// made is one connection as the client saw it.
type made struct {
	xfer  netnstest.Transfer
	start time.Time
}

// row is one stored flow row of the Service's endpoint.
type row struct {
	srcIP                      string
	srcPort                    int
	start                      int64 // flowStartSeconds, Unix seconds
	reason                     int
	fwdBytes, fwdPkts          uint64
	revBytes, revPkts          uint64
	fwdDelta, revDelta         uint64
	fwdDeltaPkts, revDeltaPkts uint64
}

// BenchmarkSoakChurn makes FLOWLENS_SOAK_RATE (default 500) short TCP
// connections per second through a Service VIP for FLOWLENS_SOAK_DURATION
// (default 10m), waits past the kernel's TIME_WAIT expiry (120 s) so a
// late second record would arrive, then requires for every connection made
// exactly one end-of-flow row whose byte totals are what the client sent
// plus header bounds, deltas that sum to the totals, and no drop counter
// above zero in the agent or the aggregator. The baseline is the client's
// own count of what it sent.
func BenchmarkSoakChurn(b *testing.B) {
	duration := envDuration(b, "FLOWLENS_SOAK_DURATION", 10*time.Minute)
	rate := envInt(b, "FLOWLENS_SOAK_RATE", 500)
	settle := envDuration(b, "FLOWLENS_SOAK_SETTLE", 150*time.Second)

	ch := clickhousetest.Start(b)
	pods := []netnstest.PodSpec{{Name: "web", Namespace: "soak"}}
	for i := 0; i < clients; i++ {
		pods = append(pods, netnstest.PodSpec{Name: fmt.Sprintf("client%d", i), Namespace: "soak"})
	}
	node := netnstest.NewNodeT(b, netnstest.Config{Name: "soak", Index: 1, Pods: pods})
	web := node.Pod("web")
	server, err := web.ListenTCP(serverPort)
	if err != nil {
		b.Fatal(err)
	}
	svc := netnstest.AddServiceT(b, node, netnstest.Service{Name: "web", Namespace: "soak",
		Port: 80, Backend: web, TargetPort: serverPort})

	agg := agenttest.StartAggregator(b, aggregatorBin, fmt.Sprintf(`aggregatorID: soak
listen: [tcp://127.0.0.1:0]
shutdownTimeout: 60s
correlation:
  correlationWait: 5s
  startWindow: 5s
  activeTimeout: 60s
  inactiveTimeout: 60s
sinks:
  clickhouse:
    enabled: true
    addr: %s
    database: default
    table: flows
    dialTimeout: 5s
    commitInterval: 1s
    retryMin: 100ms
    retryMax: 2s
    flushTimeout: 60s
`, ch.Addr))
	agent := agenttest.StartAgent(b, agentBin, fmt.Sprintf(`nodeName: soak
conntrack:
  netns: %s
connections:
  maxConnections: 1000000
export:
  collector: %s
  transport: tcp
server:
  listen: 127.0.0.1:0
`, node.NetnsPath, agg.Addr(b, "tcp")))

	// Churn: one goroutine per client pod, each paced to rate/clients.
	b.Logf("churn: %d connections/s through %s for %s, then %s for TIME_WAIT expiry", rate, svc.Addr(), duration, settle)
	var (
		mu     sync.Mutex
		conns  []made
		failed int
		wg     sync.WaitGroup
	)
	stop := time.Now().Add(duration)
	b.ResetTimer()
	for i := 0; i < clients; i++ {
		client := node.Pod(fmt.Sprintf("client%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			every := time.Duration(int64(time.Second) * clients / int64(rate))
			next := time.Now()
			var inflight sync.WaitGroup
			defer inflight.Wait()
			for time.Now().Before(stop) {
				next = next.Add(every)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				inflight.Add(1)
				go func() {
					defer inflight.Done()
					start := time.Now()
					x, err := netnstest.SendExactly(client, svc.Addr(), sentBytes, replyBytes)
					mu.Lock()
					defer mu.Unlock()
					if err != nil || x.Sent != sentBytes || x.Received != replyBytes {
						failed++
						return
					}
					conns = append(conns, made{xfer: x, start: start})
				}()
			}
		}()
	}
	wg.Wait()
	churnEnd := time.Now()
	b.StopTimer()
	b.Logf("churn done: %d connections completed, %d failed; server accepted %d", len(conns), failed, server.Stats().Conns)

	// TIME_WAIT entries expire about 120 s after the last close; a second
	// record for any connection would be sent then.
	time.Sleep(time.Until(churnEnd.Add(settle)))
	agent.WaitMetric(b, "flowlens_ipfix_exporter_buffered_records", time.Minute, func(v float64) bool { return v == 0 })
	agg.WaitMetric(b, "flowlens_aggregator_pending_connections", 2*time.Minute, func(v float64) bool { return v == 0 })
	agentMetrics, aggMetrics := agent.Metrics(b), agg.Metrics(b)
	// The sink commits at its interval; the last batch is in by then.
	time.Sleep(3 * time.Second)

	rows := queryRows(b, ch, web.IPv4.String())
	checkSoak(b, conns, rows)

	// Drops anywhere are failures: the run is sized to be lossless.
	for name, m := range map[string]string{"agent": agentMetrics, "aggregator": aggMetrics} {
		for _, d := range nonZero(m, `drop|lost|evict`) {
			b.Errorf("%s counter above zero: %s", name, d)
		}
		for _, d := range nonZero(m, `error|fail|invalid|overrun`) {
			b.Logf("%s error counter (not a drop): %s", name, d)
		}
	}
	report := func(who, m string) {
		cpu := metricValue(m, "process_cpu_seconds_total")
		rss := metricValue(m, "process_resident_memory_bytes")
		b.Logf("%s: %.1f CPU-s over %.0f s (%.3f cores; %.4f cores per 1k conn/s), RSS %.1f MiB",
			who, cpu, duration.Seconds(), cpu/duration.Seconds(), cpu/duration.Seconds()/(float64(rate)/1000), rss/(1<<20))
		b.ReportMetric(cpu/duration.Seconds(), who+"-cores")
		b.ReportMetric(rss/(1<<20), who+"-rss-MiB")
	}
	report("agent", agentMetrics)
	report("aggregator", aggMetrics)
	b.ReportMetric(float64(len(conns)), "connections")
	b.ReportMetric(float64(len(rows)), "rows")
	b.ReportMetric(float64(failed), "client-failures")
}

// queryRows reads every row of connections to the server pod.
func queryRows(b *testing.B, ch *clickhousetest.Server, dst string) []row {
	b.Helper()
	out, err := ch.Query(fmt.Sprintf(`SELECT sourceIP, sourceTransportPort, toUnixTimestamp(flowStartSeconds), flowEndReason,
  octetTotalCount, packetTotalCount, reverseOctetTotalCount, reversePacketTotalCount,
  octetDeltaCount, reverseOctetDeltaCount, packetDeltaCount, reversePacketDeltaCount
FROM flows WHERE destinationIP = '%s' AND destinationTransportPort = %d AND protocolIdentifier = %d
FORMAT TabSeparated`, dst, serverPort, flow.ProtoTCP))
	if err != nil {
		b.Fatal(err)
	}
	var rows []row
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 12 {
			b.Fatalf("row %q: %d fields, want 12", line, len(f))
		}
		n := make([]uint64, 12)
		for i := 1; i < 12; i++ {
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				b.Fatalf("row %q field %d: %v", line, i, err)
			}
			n[i] = v
		}
		rows = append(rows, row{srcIP: f[0], srcPort: int(n[1]), start: int64(n[2]), reason: int(n[3]),
			fwdBytes: n[4], fwdPkts: n[5], revBytes: n[6], revPkts: n[7],
			fwdDelta: n[8], revDelta: n[9], fwdDeltaPkts: n[10], revDeltaPkts: n[11]})
	}
	return rows
}

// checkSoak matches rows to connections by client address, port and start
// second (a port is reused only after minutes), and checks each.
func checkSoak(b *testing.B, conns []made, rows []row) {
	b.Helper()
	type key struct {
		ip   string
		port int
	}
	byKey := map[key][]row{}
	for _, r := range rows {
		k := key{r.srcIP, r.srcPort}
		byKey[k] = append(byKey[k], r)
	}
	var missing, doubled, badBytes, badDeltas, matched int
	examples := map[string][]string{}
	note := func(kind, s string) {
		if len(examples[kind]) < 5 {
			examples[kind] = append(examples[kind], s)
		}
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].start.Before(conns[j].start) })
	for _, c := range conns {
		k := key{c.xfer.Local.Addr().Unmap().String(), int(c.xfer.Local.Port())}
		var mine []row
		rest := byKey[k][:0]
		for _, r := range byKey[k] {
			// flowStartSeconds is the kernel's start, truncated to the
			// second; the client's clock read is a moment earlier.
			if d := r.start - c.start.Unix(); d >= -1 && d <= 2 {
				mine = append(mine, r)
			} else {
				rest = append(rest, r)
			}
		}
		byKey[k] = rest
		var eof []row
		var fwd, rev, fwdP, revP uint64
		for _, r := range mine {
			fwd, rev, fwdP, revP = fwd+r.fwdDelta, rev+r.revDelta, fwdP+r.fwdDeltaPkts, revP+r.revDeltaPkts
			if r.reason == int(flow.EndOfFlow) {
				eof = append(eof, r)
			}
		}
		switch {
		case len(eof) == 0:
			missing++
			note("missing", fmt.Sprintf("%s at %s: %d rows %+v", c.xfer.Local, c.start.Format(time.TimeOnly), len(mine), mine))
			continue
		case len(eof) > 1:
			doubled++
			note("doubled", fmt.Sprintf("%s: %+v", c.xfer.Local, eof))
		}
		matched++
		last := eof[len(eof)-1]
		inBounds := func(total, pkts, payload uint64) bool {
			return total >= payload+minHeader*pkts && total <= payload+maxHeader*pkts
		}
		if !inBounds(last.fwdBytes, last.fwdPkts, sentBytes+exchangeHeader) || !inBounds(last.revBytes, last.revPkts, replyBytes) {
			badBytes++
			note("bytes", fmt.Sprintf("%s: %+v", c.xfer.Local, last))
		}
		if fwd != last.fwdBytes || rev != last.revBytes || fwdP != last.fwdPkts || revP != last.revPkts {
			badDeltas++
			note("deltas", fmt.Sprintf("%s: delta sums %d/%d bytes %d/%d packets vs totals %+v", c.xfer.Local, fwd, rev, fwdP, revP, last))
		}
	}
	var unmatched int
	for _, rs := range byKey {
		unmatched += len(rs)
	}
	b.Logf("soak: %d connections made, %d rows; %d with their end-of-flow row, %d missing it, %d with more than one, %d with bytes out of bounds, %d whose deltas do not sum to the totals, %d rows of no connection made",
		len(conns), len(rows), matched, missing, doubled, badBytes, badDeltas, unmatched)
	for kind, ex := range examples {
		b.Logf("%s examples:\n  %s", kind, strings.Join(ex, "\n  "))
	}
	if missing+doubled+badBytes+badDeltas+unmatched > 0 || len(conns) == 0 {
		b.Errorf("soak failed: %d missing, %d doubled, %d bytes out of bounds, %d bad deltas, %d stray rows, %d connections", missing, doubled, badBytes, badDeltas, unmatched, len(conns))
	}
	b.ReportMetric(float64(doubled), "doubled-eof")
	b.ReportMetric(float64(missing), "missing-eof")
}

// nonZero lists the samples above zero of metrics whose name matches pat.
func nonZero(metrics, pat string) []string {
	return agenttest.NonZeroLosses(metrics, pat)
}

func metricValue(metrics, name string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`)
	m := re.FindStringSubmatch(metrics)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}
