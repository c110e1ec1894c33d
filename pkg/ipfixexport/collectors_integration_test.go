//go:build integration

package ipfixexport

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// interopRecords are what the third-party collector tests send: one record
// of each kind the agent exports, every count distinct so that a decoded
// row names the record it came from (its source port) and a swapped or
// summed field shows.
//
//   - [0] the client's node's half of an inter-node Service connection, an
//     active-timeout record: Antrea's source fields set, destination pod
//     fields empty (another node fills them); ends at the export time.
//   - [1] the server's node's half of another inter-node connection, ended
//     3.4 ms after it started (end-of-flow: ends at conntrack's stop time).
//   - [2] an intra-node IPv6 UDP flow's idle-timeout record, both halves
//     filled; ends at the export time.
func interopRecords() []flow.Record {
	a := testRecord(11, false)
	a.Destination = flow.Endpoint{}
	a.Fwd, a.Rev = flow.Counters{Packets: 110, Bytes: 11_000}, flow.Counters{Packets: 90, Bytes: 81_000}
	a.FwdDelta, a.RevDelta = flow.Counters{Packets: 41, Bytes: 4_100}, flow.Counters{Packets: 37, Bytes: 33_300}

	b := testRecord(12, false)
	b.Source = flow.Endpoint{}
	b.ClusterIP, b.ServicePortName = false, ""
	b.OrigDstIP, b.OrigDstPort = b.Tuple.DstIP, b.Tuple.DstPort
	b.StartNanos += 7_000_000_000 + 211_000_000
	b.StopNanos = b.StartNanos + 3_400_000
	b.ExportNanos = b.StopNanos + 900_000_000
	b.EndReason, b.TCPState = flow.EndOfFlow, flow.TCPStateTimeWait
	b.Fwd, b.Rev = flow.Counters{Packets: 12, Bytes: 1_212}, flow.Counters{Packets: 10, Bytes: 5_010}
	b.FwdDelta, b.RevDelta = flow.Counters{Packets: 6, Bytes: 606}, flow.Counters{Packets: 5, Bytes: 2_505}
	b.L7 = flow.L7{}

	c := testRecord(13, true)
	c.Tuple.Proto, c.TCPState = flow.ProtoUDP, flow.TCPStateNone
	c.StartNanos -= 3_600_000_000_000 + 1_001_000_000
	c.ExportNanos = c.StartNanos + 95_333_000_000
	c.EndReason, c.FlowType = flow.EndIdleTimeout, flow.FlowTypeIntraNode
	c.Destination.NodeName = c.Source.NodeName
	c.Fwd, c.Rev = flow.Counters{Packets: 1_300, Bytes: 130_013}, flow.Counters{Packets: 1_299, Bytes: 259_800}
	c.FwdDelta, c.RevDelta = flow.Counters{Packets: 13, Bytes: 1_313}, flow.Counters{Packets: 17, Bytes: 3_417}
	c.L7 = flow.L7{AppProtocolName: "dns"}
	return []flow.Record{a, b, c}
}

// wireMillis are the record's flowStart/EndMilliseconds: the end is
// conntrack's stop time once the flow ended, else the export time.
func wireMillis(r *flow.Record) (start, end uint64) {
	e := r.StopNanos
	if e == 0 {
		e = r.ExportNanos
	}
	return uint64(r.StartNanos / 1e6), uint64(e / 1e6)
}

// freeUDPPort returns a loopback UDP port nothing listens on.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	return port
}

// waitUDPBound waits until a collector holds the loopback UDP port.
func waitUDPBound(t *testing.T, port int, what string, out *lockedBuffer) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%s did not bind 127.0.0.1:%d; output:\n%s", what, port, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// udpRxQueue is how many bytes wait in the receive queue of the socket
// bound to 127.0.0.1:port (/proc/net/udp).
func udpRxQueue(t *testing.T, port int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	local := fmt.Sprintf("0100007F:%04X", port)
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 4 && f[1] == local {
			_, rx, _ := strings.Cut(f[4], ":")
			n, err := strconv.ParseUint(rx, 16, 64)
			if err != nil {
				t.Fatalf("/proc/net/udp queue %q: %v", f[4], err)
			}
			return int(n)
		}
	}
	t.Fatalf("no socket on 127.0.0.1:%d in /proc/net/udp", port)
	return 0
}

// startDaemon runs a collector until stop (or the test's end), which
// delivers sig and waits for it to exit.
func startDaemon(t *testing.T, sig syscall.Signal, name string, args ...string) (out *lockedBuffer, stop func()) {
	t.Helper()
	out = &lockedBuffer{}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(sig)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		select {
		case <-done:
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("%s did not exit on %v; output:\n%s", name, sig, out.String())
		}
	}
	t.Cleanup(stop)
	return out, stop
}

// interopOptions are the template variants each collector is checked
// with: the default, each option group alone, and both (what
// collectorKind flowlens sends).
var interopOptions = []exportOptions{{}, {L7: true}, {Health: true}, {L7: true, Health: true}}

type exportOptions struct{ L7, Health bool }

func (o exportOptions) String() string {
	return fmt.Sprintf("L7DetailElements=%v/HealthElements=%v", o.L7, o.Health)
}

// sendRecords exports recs over UDP to port and stops the exporter; the
// records carry the optional fields o selects.
func sendRecords(t *testing.T, port int, recs []flow.Record, o exportOptions) {
	t.Helper()
	e, stop := startExporter(t, Config{
		Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Transport: UDP,
		FlushInterval: 20 * time.Millisecond, L7DetailElements: o.L7, HealthElements: o.Health,
	}, nil)
	for i := range recs {
		r := recs[i]
		if o.L7 {
			setL7Details(&r)
		}
		if o.Health {
			setHealth(&r)
		}
		e.Export(&r)
	}
	e.Flush()
	time.Sleep(200 * time.Millisecond)
	stop()
}

// jsonLines returns the non-empty lines of b.
func jsonLines(b []byte) [][]byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if l = bytes.TrimSpace(l); len(l) > 0 && l[0] == '{' {
			out = append(out, l)
		}
	}
	return out
}

func addrString(a [16]byte) string { return netip.AddrFrom16(a).Unmap().String() }

func readFileOrEmpty(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}

// compareJSONFlows decodes a collector's JSON lines (one flow each) and
// checks that it shows every sent record exactly once, equal to what want
// says that collector must show for it; flows are matched by source port,
// which interopRecords keeps distinct.
func compareJSONFlows[F comparable](t *testing.T, collector string, lines [][]byte, sent []flow.Record, want func(*flow.Record) F, srcPort func(F) uint16) {
	t.Helper()
	got := map[uint16]F{}
	for _, l := range lines {
		var f F
		if err := json.Unmarshal(l, &f); err != nil {
			t.Fatalf("%s line %s: %v", collector, l, err)
		}
		if _, dup := got[srcPort(f)]; dup {
			t.Errorf("%s shows source port %d twice", collector, srcPort(f))
		}
		got[srcPort(f)] = f
	}
	if len(lines) != len(sent) {
		t.Errorf("%s decoded %d flows, %d were sent", collector, len(lines), len(sent))
	}
	for i := range sent {
		w := want(&sent[i])
		if g, ok := got[srcPort(w)]; !ok {
			t.Errorf("%s shows no flow from port %d", collector, srcPort(w))
		} else if g != w {
			t.Errorf("%s flow from port %d:\n got %+v\nwant %+v", collector, srcPort(w), g, w)
		}
	}
}
