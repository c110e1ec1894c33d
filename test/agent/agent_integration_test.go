//go:build integration

// Package agent_test runs the real flowlens-agent binary against a simulated
// node (network namespaces, real conntrack, nftables DNAT for a Service) and
// checks what arrives at a real IPFIX collector.
package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin string

func TestMain(m *testing.M) {
	if err := netnstest.CheckPrereqs(); err != nil {
		fmt.Fprintf(os.Stderr, "agent integration tests need: %v\n", err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "flowlens-agent-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "flowlens-agent")
	build := exec.Command("go", "build", "-o", agentBin, "github.com/flowlens/flowlens/cmd/flowlens-agent")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build flowlens-agent: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// arrival is a decoded record and when the collector got it.
type arrival struct {
	at  time.Time
	rec flow.Record
}

// collector is a real ipfixcollect.Collector keeping every flow record.
type collector struct {
	addr string
	mu   sync.Mutex
	recs []arrival
}

func startCollector(t *testing.T) *collector {
	t.Helper()
	c, err := ipfixcollect.New(ipfixcollect.Config{Network: ipfixcollect.TCP, Address: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatalf("collector: %v", err)
	}
	col := &collector{addr: c.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, func(r ipfixcollect.Record) {
			fr, err := r.FlowRecord()
			if err != nil {
				return
			}
			col.mu.Lock()
			col.recs = append(col.recs, arrival{at: time.Now(), rec: fr})
			col.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("collector: %v", err)
		}
	})
	return col
}

// recordsOf returns the records of the connection from client address src.
func (c *collector) recordsOf(src netip.AddrPort, proto uint8) []arrival {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []arrival
	for _, a := range c.recs {
		if a.rec.Tuple.Src() == src.Addr() && a.rec.Tuple.SrcPort == src.Port() && a.rec.Tuple.Proto == proto {
			out = append(out, a)
		}
	}
	return out
}

// waitFinal waits for a record of the connection with the given end reason.
func (c *collector) waitFinal(t *testing.T, src netip.AddrPort, proto uint8, reason flow.EndReason, within time.Duration) []arrival {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		recs := c.recordsOf(src, proto)
		for _, a := range recs {
			if a.rec.EndReason == reason {
				return recs
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no %s record for %s %s within %s; got %d records: %+v", reason, flow.ProtoName(proto), src, within, len(c.recordsOf(src, proto)), c.recordsOf(src, proto))
	return nil
}

// startAgent runs the agent binary on node's conntrack table and returns the
// address of its /metrics and /healthz server.
func startAgent(t *testing.T, node *netnstest.Node, collectorAddr string, connections string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
%s
export:
  collector: %s
  transport: tcp
  flushInterval: 200ms
server:
  listen: 127.0.0.1:0
`, node.Name, node.NetnsPath, connections, collectorAddr)
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(agentBin, "--config", cfgPath, "-v=2")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("agent exited with %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("agent did not stop within 10s of SIGTERM")
		}
		logFile.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("agent log:\n%s", b)
			}
		}
	})
	// The first dump happens at start-up; give the event listener a moment
	// to subscribe so the traffic's NEW events are seen too.
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-exited:
		b, _ := os.ReadFile(logPath)
		t.Fatalf("agent exited at start-up: %v\n%s", err, b)
	default:
	}
	b, _ := os.ReadFile(logPath)
	m := serverAddr.FindSubmatch(b)
	if m == nil {
		t.Fatalf("agent log names no metrics address:\n%s", b)
	}
	return string(m[1])
}

var serverAddr = regexp.MustCompile(`"Serving metrics and health" address="([^"]+)"`)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

func TestHealthAndMetricsReflectThePipeline(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "agent-metrics",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	server := node.Pod("server")
	if _, err := server.ListenTCP(7000); err != nil {
		t.Fatal(err)
	}
	col := startCollector(t)
	addr := startAgent(t, node, col.addr, "  activeTimeout: 1s\n  idleTimeout: 10s")

	if code, body := httpGet(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %q, want 200 once a dump succeeded", code, body)
	}
	xfer, err := netnstest.SendExactly(node.Pod("client"), server.Addr(7000), 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	col.waitFinal(t, xfer.Local, flow.ProtoTCP, flow.EndOfFlow, 10*time.Second)

	_, metrics := httpGet(t, "http://"+addr+"/metrics")
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

// sum adds the deltas of a connection's records: with exact, non-repeating
// deltas it equals the final totals.
func sum(recs []arrival) (fwd, rev flow.Counters) {
	for _, a := range recs {
		fwd.Packets += a.rec.FwdDelta.Packets
		fwd.Bytes += a.rec.FwdDelta.Bytes
		rev.Packets += a.rec.RevDelta.Packets
		rev.Bytes += a.rec.RevDelta.Bytes
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

			col := startCollector(t)
			startAgent(t, node, col.addr, "  activeTimeout: 2s\n  idleTimeout: 30s\n  tickInterval: 100ms")

			const sent, reply = 300_000, 50_000
			xfer, err := netnstest.SendExactly(node.Pod("client"), netip.AddrPortFrom(svc.VIP, svc.Port), sent, reply)
			if err != nil {
				t.Fatalf("transfer: %v", err)
			}
			closed := time.Now()
			recs := col.waitFinal(t, xfer.Local, flow.ProtoTCP, flow.EndOfFlow, 10*time.Second)

			var final arrival
			for _, a := range recs {
				if a.rec.EndReason == flow.EndOfFlow {
					if final.rec.EndReason != 0 {
						t.Errorf("two end-of-flow records for one connection")
					}
					final = a
				}
			}
			// The event path must deliver the close, not the idle timeout
			// (30s here) or a stale-dump sweep.
			if lag := final.at.Sub(closed); lag > 2500*time.Millisecond {
				t.Errorf("end-of-flow record arrived %s after the close; want within ~2s", lag)
			}

			// The entry lingers in TIME_WAIT and keeps showing up in dumps:
			// it must not be exported again.
			time.Sleep(3500 * time.Millisecond)
			if again := col.recordsOf(xfer.Local, flow.ProtoTCP); len(again) != len(recs) {
				t.Errorf("%d records after the end-of-flow one: %+v", len(again)-len(recs), again[len(recs):])
			}

			r := final.rec
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
	col := startCollector(t)
	startAgent(t, node, col.addr, "  activeTimeout: 1s\n  idleTimeout: 30s\n  tickInterval: 100ms")

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
	recs := col.waitFinal(t, local, flow.ProtoTCP, flow.EndOfFlow, 10*time.Second)
	active := 0
	for _, a := range recs {
		if a.rec.EndReason == flow.EndActiveTimeout {
			active++
			if a.rec.FwdDelta.Bytes == 0 {
				t.Errorf("active-timeout record without a forward delta: %+v", a.rec)
			}
		}
	}
	if active < 2 {
		t.Errorf("%d active-timeout records for a 4.5s connection with a 1s active timeout; want >= 2", active)
	}
	fwd, _ := sum(recs)
	final := recs[len(recs)-1].rec
	for _, a := range recs {
		if a.rec.EndReason == flow.EndOfFlow {
			final = a.rec
		}
	}
	if fwd != final.Fwd {
		t.Errorf("forward deltas sum to %+v, final total %+v", fwd, final.Fwd)
	}
}

func TestUDPExchangeEndsOnIdleTimeout(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "agent-udp",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	server := node.Pod("server")
	if _, err := server.ListenUDP(5353); err != nil {
		t.Fatal(err)
	}
	svc := netnstest.AddServiceT(t, node, netnstest.Service{Name: "dns", Port: 53, Proto: flow.ProtoUDP, Backend: server, TargetPort: 5353})
	col := startCollector(t)
	startAgent(t, node, col.addr, "  activeTimeout: 1s\n  idleTimeout: 3s\n  tickInterval: 100ms")

	xfer, err := netnstest.SendUDP(node.Pod("client"), netip.AddrPortFrom(svc.VIP, svc.Port), 3000, 1500)
	if err != nil {
		t.Fatalf("udp exchange: %v", err)
	}
	recs := col.waitFinal(t, xfer.Local, flow.ProtoUDP, flow.EndIdleTimeout, 15*time.Second)
	var idle flow.Record
	for _, a := range recs {
		if a.rec.EndReason == flow.EndIdleTimeout {
			idle = a.rec
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
}
