//go:build integration

// Package agent_test runs the real flowlens-agent binary against a simulated
// node (network namespaces, real conntrack, nftables DNAT for a Service) and
// checks what arrives at a real IPFIX collector.
package agent_test

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin string

func TestMain(m *testing.M) {
	agenttest.RunMain(m, "agent integration tests", func(dir string) (err error) {
		agentBin, err = agenttest.BuildAgent(dir)
		return err
	}, netnstest.CheckPrereqs)
}

// Counter sources (counters.source): the tests of numbers run with both.
const (
	countEBPF      = "ebpf"
	countConntrack = "conntrack"
)

var counterSources = []string{countEBPF, countConntrack}

// startAgent runs the agent on node's conntrack table, exporting to
// collectorAddr, with the given connections: section, counting with eBPF.
func startAgent(t *testing.T, node *netnstest.Node, collectorAddr string, connections string) *agenttest.Agent {
	t.Helper()
	return startAgentCounting(t, node, collectorAddr, connections, countEBPF)
}

// startAgentCounting is startAgent with counters from source. With eBPF the
// resync dump runs every second too, so that the tests see that a dump
// leaves eBPF-counted connections alone, and every connection's totals are
// compared with conntrack's when its entry dies (counters.crossCheck, no
// tolerance).
func startAgentCounting(t *testing.T, node *netnstest.Node, collectorAddr, connections, source string) *agenttest.Agent {
	t.Helper()
	ag := agenttest.StartAgent(t, agentBin, fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
  resyncInterval: 1s
counters:
  source: %s
  crossCheck:
    enabled: true
connections:
%s
export:
  collector: %s
  transport: tcp
  flushInterval: 200ms
server:
  listen: 127.0.0.1:0
`, node.Name, node.NetnsPath, source, connections, collectorAddr))
	if v, _ := ag.Metric(t, `flowlens_agent_counter_source{source="`+source+`"}`); v != 1 {
		t.Fatalf("the agent does not count with %s (flowlens_agent_counter_source):\n%s", source, ag.Metrics(t))
	}
	return ag
}

// checkCrossCheck checks that the agent found a connection's eBPF totals
// equal to conntrack's. A TCP connection whose close the program saw is
// compared when it is closed (one GET); any other when its entry dies,
// which the test makes happen at once by deleting it (its DESTROY then
// comes without waiting for the UDP timeout).
func checkCrossCheck(t *testing.T, ag *agenttest.Agent, node *netnstest.Node, proto string, local netip.AddrPort) {
	t.Helper()
	agree := `flowlens_agent_counter_crosscheck_total{result="agree"}`
	if proto == "tcp" {
		ag.WaitMetric(t, agree, 10*time.Second, func(v float64) bool { return v >= 1 })
	} else {
		before, _ := ag.Metric(t, agree)
		family := "ipv4"
		if local.Addr().Is6() {
			family = "ipv6"
		}
		if out, err := node.Conntrack("-D", "-f", family, "-p", proto, "--orig-src", local.Addr().String(), "--sport", strconv.Itoa(int(local.Port()))); err != nil {
			t.Fatalf("conntrack -D: %v\n%s", err, out)
		}
		ag.WaitMetric(t, agree, 10*time.Second, func(v float64) bool { return v > before })
	}
	if v, _ := ag.Metric(t, `flowlens_agent_counter_crosscheck_total{result="disagree"}`); v != 0 {
		t.Errorf("%v connections whose eBPF and conntrack totals disagree (the agent logs them)", v)
	}
}

func TestHealthAndMetricsReflectThePipeline(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "agent-metrics",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	server := node.Pod("server")
	if _, err := server.ListenTCP(7000); err != nil {
		t.Fatal(err)
	}
	col := agenttest.StartCollector(t)
	ag := startAgent(t, node, col.Addr, "  activeTimeout: 1s\n  idleTimeout: 10s")

	// Dumps run one after another and are counted as they start: once
	// the second has started the first has ended.
	ag.WaitMetric(t, dumpsSeries, 10*time.Second, func(v float64) bool { return v >= 2 })
	if code, body := ag.Get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %q, want 200 once a dump succeeded", code, body)
	}
	xfer, err := netnstest.SendExactly(node.Pod("client"), server.Addr(7000), 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	col.WaitFor(t, xfer.Local, flow.ProtoTCP, flow.EndOfFlow, 10*time.Second)

	metrics := ag.Metrics(t)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^flowlens_conntrack_dumps_total [1-9]`),
		regexp.MustCompile(`(?m)^flowlens_conntrack_events_total\{type="new"\} [1-9]`),
		regexp.MustCompile(`(?m)^flowlens_connstore_\w+_total`),
		regexp.MustCompile(`(?m)^flowlens_ipfix_\w+`),
	} {
		if !want.MatchString(metrics) {
			t.Errorf("/metrics has no line matching %s", want)
		}
	}
}

// dumpsSeries counts the agent's conntrack dumps as they start.
const dumpsSeries = "flowlens_conntrack_dumps_total"

// conntrackLine returns the node's conntrack entry of the TCP connection
// from local.
func conntrackLine(t *testing.T, node *netnstest.Node, local netip.AddrPort) string {
	t.Helper()
	out, err := node.Conntrack("-L", "-p", "tcp", "--orig-src", local.Addr().String(), "--sport", strconv.Itoa(int(local.Port())))
	if err != nil {
		t.Fatalf("conntrack -L in node: %v", err)
	}
	line := strings.TrimSpace(string(out))
	if line == "" || strings.Contains(line, "\n") {
		t.Fatalf("want one conntrack entry from %s, got:\n%s", local, out)
	}
	return line
}

// waitAcked polls c's TCP_INFO until the peer has acknowledged n bytes.
func waitAcked(c *net.TCPConn, n uint64, within time.Duration) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("raw conn: %w", err)
	}
	deadline := time.Now().Add(within)
	for {
		var info *unix.TCPInfo
		var serr error
		if err := raw.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
			return fmt.Errorf("tcp info: %w", err)
		}
		if serr != nil {
			return fmt.Errorf("tcp info: %w", serr)
		}
		if info.Bytes_acked >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d bytes acknowledged after %s", info.Bytes_acked, n, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sum adds the deltas of a connection's records: with exact, non-repeating
// deltas it equals the final totals.
func sum(recs []agenttest.Arrival) (fwd, rev flow.Counters) {
	for _, a := range recs {
		fwd.Packets += a.Rec.FwdDelta.Packets
		fwd.Bytes += a.Rec.FwdDelta.Bytes
		rev.Packets += a.Rec.RevDelta.Packets
		rev.Bytes += a.Rec.RevDelta.Bytes
	}
	return fwd, rev
}

// checkBytes asserts that conntrack's byte count (IP and transport headers
// included) fits the payload the test moved: at least payload plus the
// minimum header per packet, at most payload plus the largest.
func checkBytes(t *testing.T, dir string, c flow.Counters, payload int64, minHdr, maxHdr uint64) {
	t.Helper()
	if c.Packets == 0 {
		t.Errorf("%s: no packets counted", dir)
		return
	}
	lo := uint64(payload) + c.Packets*minHdr
	hi := uint64(payload) + c.Packets*maxHdr
	if c.Bytes < lo || c.Bytes > hi {
		t.Errorf("%s: %d bytes in %d packets for %d payload bytes; want within [%d, %d]", dir, c.Bytes, c.Packets, payload, lo, hi)
	}
}

func TestTCPThroughServiceIsExportedWithVIPEndpointAndCounts(t *testing.T) {
	for _, source := range counterSources {
		t.Run(source, func(t *testing.T) { testTCPThroughService(t, source) })
	}
}

func testTCPThroughService(t *testing.T, source string) {
	for _, tc := range []struct {
		name string
		ipv6 bool
		// header bounds per packet: IP header + TCP header with options.
		minHdr, maxHdr uint64
	}{
		{"IPv4", false, 20 + 20, 20 + 60},
		{"IPv6", true, 40 + 20, 40 + 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := netnstest.NewNodeT(t, netnstest.Config{Name: "agent-tcp", IPv6: tc.ipv6,
				Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
			server := node.Pod("server")
			srv, err := server.ListenTCP(8080)
			if err != nil {
				t.Fatal(err)
			}
			_ = srv
			svc := netnstest.AddServiceT(t, node, netnstest.Service{Name: "web", IPv6: tc.ipv6, Port: 80, Backend: server, TargetPort: 8080})

			col := agenttest.StartCollector(t)
			const activeTimeout, idleTimeout = 2 * time.Second, 30 * time.Second
			ag := startAgentCounting(t, node, col.Addr, fmt.Sprintf("  activeTimeout: %s\n  idleTimeout: %s\n  tickInterval: 100ms", activeTimeout, idleTimeout), source)

			const sent, reply = 300_000, 50_000
			xfer, err := netnstest.SendExactly(node.Pod("client"), netip.AddrPortFrom(svc.VIP, svc.Port), sent, reply)
			if err != nil {
				t.Fatalf("transfer: %v", err)
			}
			closed := time.Now()
			// The close itself (its event, or at worst the next 1 s poll
			// seeing TIME_WAIT) must end the flow: not the idle timeout,
			// and not the entry leaving the table when the kernel's
			// TIME_WAIT (120 s) expires. A third of the idle timeout tells
			// those apart on however loaded a machine; the figure itself
			// is logged (typically a few hundred ms).
			const closeBound = idleTimeout / 3
			recs := col.WaitFor(t, xfer.Local, flow.ProtoTCP, flow.EndOfFlow, closeBound)

			var final agenttest.Arrival
			for _, a := range recs {
				if a.Rec.EndReason == flow.EndOfFlow {
					if final.Rec.EndReason != 0 {
						t.Errorf("two end-of-flow records for one connection")
					}
					final = a
				}
			}
			lag := final.At.Sub(closed)
			t.Logf("end-of-flow record arrived %s after the close", lag.Round(time.Millisecond))
			if lag > closeBound {
				t.Errorf("end-of-flow record arrived %s after the close; want within %s, well before the %s idle timeout", lag, closeBound, idleTimeout)
			}

			// The entry lingers in TIME_WAIT and keeps showing up in dumps:
			// it must not be exported again, neither by a later dump nor
			// on the active timeout. Wait for three complete dumps after
			// the end-of-flow record (a dump is counted when it starts, so
			// four starts) which also outlasts the active timeout, then
			// for everything the agent sent to arrive.
			if !strings.Contains(conntrackLine(t, node, xfer.Local), "TIME_WAIT") {
				t.Fatalf("connection from %s is not in TIME_WAIT in the node's conntrack table: the check below would prove nothing", xfer.Local)
			}
			dumps, _ := ag.Metric(t, dumpsSeries)
			waitedFrom := time.Now()
			ag.WaitMetric(t, dumpsSeries, 30*time.Second, func(v float64) bool {
				return v >= dumps+4 && time.Since(waitedFrom) > activeTimeout
			})
			col.WaitDelivered(t, ag, 10*time.Second)
			if !strings.Contains(conntrackLine(t, node, xfer.Local), "TIME_WAIT") {
				t.Fatalf("connection from %s left TIME_WAIT during the check", xfer.Local)
			}
			if again := col.RecordsOf(xfer.Local, flow.ProtoTCP); len(again) != len(recs) {
				t.Errorf("%d records after the end-of-flow one: %+v", len(again)-len(recs), again[len(recs):])
			}

			r := final.Rec
			wantSrc := xfer.Local
			wantDst := server.Addr(8080)
			if tc.ipv6 {
				wantDst = server.Addr6(8080)
			}
			if r.Tuple.Src() != wantSrc.Addr() || r.Tuple.SrcPort != wantSrc.Port() {
				t.Errorf("source %s:%d, want %s", r.Tuple.Src(), r.Tuple.SrcPort, wantSrc)
			}
			if r.Tuple.Dst() != wantDst.Addr() || r.Tuple.DstPort != wantDst.Port() {
				t.Errorf("destination (endpoint) %s:%d, want %s", r.Tuple.Dst(), r.Tuple.DstPort, wantDst)
			}
			if r.OrigDst() != svc.VIP || r.OrigDstPort != svc.Port {
				t.Errorf("service VIP %s:%d, want %s:%d", r.OrigDst(), r.OrigDstPort, svc.VIP, svc.Port)
			}
			if r.Tuple.IsIPv4() == tc.ipv6 {
				t.Errorf("address family: got IPv4=%v", r.Tuple.IsIPv4())
			}

			// The exchange protocol adds an 8-byte request header.
			checkBytes(t, "client->server", r.Fwd, xfer.Sent+8, tc.minHdr, tc.maxHdr)
			checkBytes(t, "server->client", r.Rev, xfer.Received, tc.minHdr, tc.maxHdr)
			if xfer.Sent != sent || xfer.Received != reply {
				t.Fatalf("harness moved %d/%d, want %d/%d", xfer.Sent, xfer.Received, sent, reply)
			}
			// Deltas over all records add up to the totals: nothing counted
			// twice, nothing lost between records.
			fwd, rev := sum(recs)
			if fwd != r.Fwd || rev != r.Rev {
				t.Errorf("deltas sum to fwd %+v rev %+v, totals are fwd %+v rev %+v (%d records)", fwd, rev, r.Fwd, r.Rev, len(recs))
			}
			if r.StartNanos == 0 || r.StopNanos < r.StartNanos {
				t.Errorf("start %d stop %d: want conntrack timestamps with stop >= start", r.StartNanos, r.StopNanos)
			}
			if source == countEBPF {
				checkCrossCheck(t, ag, node, "tcp", xfer.Local)
			}
		})
	}
}

func TestLongConnectionIsExportedOnActiveTimeoutWithDeltas(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "agent-active",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	server := node.Pod("server")
	if _, err := server.ListenTCP(9000); err != nil {
		t.Fatal(err)
	}
	col := agenttest.StartCollector(t)
	startAgent(t, node, col.Addr, "  activeTimeout: 1s\n  idleTimeout: 30s\n  tickInterval: 100ms")

	// A connection that trickles for ~4.5s must be reported while it lasts.
	client := node.Pod("client")
	var local netip.AddrPort
	err := client.Run(func() error {
		c, err := client.DialTCP(server.Addr(9000))
		if err != nil {
			return err
		}
		defer c.Close()
		local = netip.MustParseAddrPort(c.LocalAddr().String())
		hdr := make([]byte, 8) // reply length 0
		if _, err := c.Write(hdr); err != nil {
			return err
		}
		chunk := make([]byte, 1000)
		for i := 0; i < 15; i++ {
			if _, err := c.Write(chunk); err != nil {
				return err
			}
			time.Sleep(300 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("trickle: %v", err)
	}
	recs := col.WaitFor(t, local, flow.ProtoTCP, flow.EndOfFlow, 10*time.Second)
	active := 0
	for _, a := range recs {
		if a.Rec.EndReason == flow.EndActiveTimeout {
			active++
			if a.Rec.FwdDelta.Bytes == 0 {
				t.Errorf("active-timeout record without a forward delta: %+v", a.Rec)
			}
		}
	}
	if active < 2 {
		t.Errorf("%d active-timeout records for a 4.5s connection with a 1s active timeout; want >= 2", active)
	}
	fwd, _ := sum(recs)
	final := recs[len(recs)-1].Rec
	for _, a := range recs {
		if a.Rec.EndReason == flow.EndOfFlow {
			final = a.Rec
		}
	}
	if fwd != final.Fwd {
		t.Errorf("forward deltas sum to %+v, final total %+v", fwd, final.Fwd)
	}
}

func TestUDPExchangeEndsOnIdleTimeout(t *testing.T) {
	for _, source := range counterSources {
		t.Run(source, func(t *testing.T) { testUDPExchange(t, source) })
	}
}

func testUDPExchange(t *testing.T, source string) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "agent-udp",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	server := node.Pod("server")
	if _, err := server.ListenUDP(5353); err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, node, netnstest.Service{Name: "dns", Port: 53, Proto: flow.ProtoUDP, Backend: server, TargetPort: 5353})
	col := agenttest.StartCollector(t)
	ag := startAgentCounting(t, node, col.Addr, "  activeTimeout: 1s\n  idleTimeout: 3s\n  tickInterval: 100ms", source)

	xfer, err := netnstest.SendUDP(node.Pod("client"), netip.AddrPortFrom(svc.VIP, svc.Port), 3000, 1500)
	if err != nil {
		t.Fatalf("udp exchange: %v", err)
	}
	recs := col.WaitFor(t, xfer.Local, flow.ProtoUDP, flow.EndIdleTimeout, 15*time.Second)
	var idle flow.Record
	for _, a := range recs {
		if a.Rec.EndReason == flow.EndIdleTimeout {
			idle = a.Rec
		}
	}
	if idle.OrigDst() != svc.VIP || idle.Tuple.Dst() != server.Addr(5353).Addr() || idle.Tuple.DstPort != 5353 {
		t.Errorf("record %s (orig dst %s), want endpoint %s behind %s", idle.Tuple, idle.OrigDst(), server.Addr(5353), svc.VIP)
	}
	fwd, rev := sum(recs)
	// UDP: 8-byte header + 20-byte IPv4 header per datagram, plus the
	// exchange's 4-byte request header per datagram.
	if fwd.Packets != uint64(xfer.Datagrams) {
		t.Errorf("forward packets %d, client sent %d datagrams", fwd.Packets, xfer.Datagrams)
	}
	if want := uint64(xfer.Sent) + fwd.Packets*(28+4); fwd.Bytes != want {
		t.Errorf("forward bytes %d, want %d (payload %d + %d datagrams x 32)", fwd.Bytes, want, xfer.Sent, fwd.Packets)
	}
	if rev.Bytes < uint64(xfer.Received) {
		t.Errorf("reverse bytes %d < payload received %d", rev.Bytes, xfer.Received)
	}
	if source == countEBPF {
		checkCrossCheck(t, ag, node, "udp", xfer.Local)
	}
}

func TestStoppingTheAgentExportsWhatItHasNotExportedYet(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "agent-stop",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	server := node.Pod("server")
	if _, err := server.ListenTCP(9100); err != nil {
		t.Fatal(err)
	}
	col := agenttest.StartCollector(t)
	// Timeouts far beyond the test: only the shutdown flush can export.
	ag := startAgent(t, node, col.Addr, "  activeTimeout: 60s\n  idleTimeout: 120s")

	client := node.Pod("client")
	var local netip.AddrPort
	ready := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- client.Run(func() error {
			c, err := client.DialTCP(server.Addr(9100))
			if err != nil {
				close(ready)
				return err
			}
			defer c.Close()
			local = netip.MustParseAddrPort(c.LocalAddr().String())
			if _, err := c.Write(make([]byte, 8+5000)); err != nil { // header (reply 0) + payload
				close(ready)
				return err
			}
			// Acknowledged by the server: the segments went through the
			// node's conntrack.
			err = waitAcked(c, 8+5000, 10*time.Second)
			close(ready)
			if err != nil {
				return err
			}
			<-release
			return nil
		})
	}()
	<-ready
	// The store must hold the connection with its counters: wait until a
	// dump that started after the server acknowledged the bytes has ended
	// (dumps are counted when they start and run one after the other).
	dumps, _ := ag.Metric(t, dumpsSeries)
	ag.WaitMetric(t, dumpsSeries, 10*time.Second, func(v float64) bool { return v >= dumps+2 })
	ag.Stop()
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("client: %v", err)
	}
	col.WaitFor(t, local, flow.ProtoTCP, flow.EndForced, 5*time.Second)
	recs := col.RecordsOf(local, flow.ProtoTCP)
	if len(recs) != 1 || recs[0].Rec.EndReason != flow.EndForced {
		t.Fatalf("records of the open connection after the agent stopped: %+v, want one with flowEndReason forced", recs)
	}
	if d := recs[0].Rec.FwdDelta; d.Bytes < 5008 {
		t.Errorf("forced record carries %+v forward, want the 5008 bytes the client sent", d)
	}
}
