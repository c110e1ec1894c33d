//go:build integration

package ipfixexport

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixie"
)

// tsharkTime is how tshark 4.0 prints an IPFIX dateTime field.
func tsharkTime(nanos int64) string {
	return time.Unix(0, nanos).UTC().Format("Jan 2, 2006 15:04:05.000000000 UTC")
}

// tsharkHex is how tshark shows an unknown field's value.
func tsharkHex(s string) string {
	h := make([]string, len(s))
	for i := range len(s) {
		h[i] = fmt.Sprintf("%02x", s[i])
	}
	return strings.Join(h, " ")
}

// tshark, capturing the UDP datagrams, shows every record with its times
// in seconds and milliseconds, flowEndReason, the counters of both
// directions (RFC 5103 reverse IEs by name) and the Antrea fields of each
// node's half (as "Project Antrea" enterprise entries; an empty string is
// not shown at all).
func TestTsharkShowsTimesCountersAndHalves(t *testing.T) {
	tshark := requireProgram(t, "tshark")
	for _, opts := range interopOptions {
		t.Run(opts.String(), func(t *testing.T) {
			// The records need a listener, or ICMP port-unreachable makes
			// the exporter redial.
			sink, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			port := strconv.Itoa(sink.LocalAddr().(*net.UDPAddr).Port)
			pcap := filepath.Join(t.TempDir(), "ipfix.pcap")
			capture := exec.Command(tshark, "-i", "lo", "-f", "udp port "+port, "-w", pcap)
			var capOut lockedBuffer
			capture.Stdout, capture.Stderr = &capOut, &capOut
			if err := capture.Start(); err != nil {
				t.Fatalf("start tshark: %v", err)
			}
			defer func() { _ = capture.Process.Kill(); _ = capture.Wait() }()
			waitFor(t, 20*time.Second, "tshark to capture", func() bool { return strings.Contains(capOut.String(), "Capturing on") })
			time.Sleep(500 * time.Millisecond) // "Capturing on" comes just before the capture really starts

			sent := interopRecords()
			p, _ := strconv.Atoi(port)
			sendRecords(t, p, sent, opts)
			time.Sleep(300 * time.Millisecond)
			if err := capture.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- capture.Wait() }()
			select {
			case <-done:
			case <-ctx.Done():
				t.Fatalf("tshark did not stop; output:\n%s", capOut.String())
			}
			args := []string{"-r", pcap, "-d", "udp.port==" + port + ",cflow", "-V", "-O", "cflow"}
			if n := templateFields(t, opts); n > tsharkMaxTemplateFields {
				// Both option groups make 64 fields a template, over
				// Wireshark's default limit: it then ignores the
				// template and shows no record (docs/ipfix-elements.md).
				args = append(args, "-o", fmt.Sprintf("cflow.max_template_fields:%d", n))
			}
			out, err := exec.Command(tshark, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("tshark -r: %v\n%s", err, out)
			}
			text := string(out)
			blocks := regexp.MustCompile(`(?m)^ {8}Flow \d+\n`).Split(text, -1)[1:]
			if len(blocks) != len(sent) {
				t.Errorf("tshark shows %d flow records, %d were sent", len(blocks), len(sent))
			}
			for i := range sent {
				r := sent[i]
				if opts.Health {
					setHealth(&r) // as sendRecords sent it
				}
				checkTsharkFlow(t, blocks, &r, opts.Health)
			}
			if t.Failed() {
				t.Logf("tshark -V -O cflow:\n%s", text)
			}
		})
	}
}

// tsharkMaxTemplateFields is the default of Wireshark's
// cflow.max_template_fields preference (4.0).
const tsharkMaxTemplateFields = 60

// templateFields is the number of fields of the exporter's IPv4 template
// with o (the IPv6 one has as many).
func templateFields(t *testing.T, o exportOptions) int {
	t.Helper()
	v4, v6, err := ipfixie.NewFlowTemplates(ipfixie.TemplateOptions{IDv4: 256, IDv6: 257, L7Details: o.L7, Health: o.Health})
	if err != nil {
		t.Fatal(err)
	}
	if len(v4.Elements) != len(v6.Elements) {
		t.Fatalf("IPv4 template has %d fields, IPv6 %d", len(v4.Elements), len(v6.Elements))
	}
	return len(v4.Elements)
}

func checkTsharkFlow(t *testing.T, blocks []string, r *flow.Record, health bool) {
	t.Helper()
	var b string
	n := 0
	for _, blk := range blocks {
		if strings.Contains(blk, "SrcPort: "+strconv.Itoa(int(r.Tuple.SrcPort))+"\n") {
			b, n = blk, n+1
		}
	}
	if n != 1 {
		t.Errorf("tshark shows %d flows from port %d, want 1", n, r.Tuple.SrcPort)
		return
	}
	startMs, endMs := wireMillis(r)
	want := []string{
		// flowStart/EndSeconds, then flowStart/EndMilliseconds.
		"StartTime: " + tsharkTime(int64(startMs/1000)*1e9) + "\n",
		"EndTime: " + tsharkTime(int64(endMs/1000)*1e9) + "\n",
		"StartTime: " + tsharkTime(int64(startMs)*1e6) + "\n",
		"EndTime: " + tsharkTime(int64(endMs)*1e6) + "\n",
		fmt.Sprintf("Flow End Reason: %s (%d)\n", map[flow.EndReason]string{
			flow.EndIdleTimeout: "Idle timeout", flow.EndActiveTimeout: "Active timeout", flow.EndOfFlow: "End of Flow detected",
		}[r.EndReason], r.EndReason),
		"SrcAddr: " + addrString(r.Tuple.SrcIP) + "\n",
		"DstAddr: " + addrString(r.Tuple.DstIP) + "\n",
		"DstPort: " + strconv.Itoa(int(r.Tuple.DstPort)) + "\n",
		fmt.Sprintf("Protocol: %s (%d)\n", strings.ToUpper(flow.ProtoName(r.Tuple.Proto)), r.Tuple.Proto),
		fmt.Sprintf("Permanent Packets: %d\n", r.Fwd.Packets),
		fmt.Sprintf("Permanent Octets: %d\n", r.Fwd.Bytes),
		fmt.Sprintf("Packets: %d\n", r.FwdDelta.Packets),
		fmt.Sprintf("Octets: %d\n", r.FwdDelta.Bytes),
		fmt.Sprintf("Permanent Packets: %d (Reverse Type 86 PACKETS_TOTAL)\n", r.Rev.Packets),
		fmt.Sprintf("Permanent Octets: %d (Reverse Type 85 BYTES_TOTAL)\n", r.Rev.Bytes),
		fmt.Sprintf("Packets: %d (Reverse Type 2 PKTS)\n", r.RevDelta.Packets),
		fmt.Sprintf("Octets: %d (Reverse Type 1 BYTES)\n", r.RevDelta.Bytes),
		fmt.Sprintf("(Project Antrea) Type 137: Value (hex bytes): %02x\n", uint8(r.FlowType)),
	}
	if health {
		// IANA's droppedPacketDeltaCount and its RFC 5103 reverse, by
		// name; the placeholder elements as "Example Enterprise Number"
		// entries, like the L7 details.
		want = append(want,
			fmt.Sprintf("Dropped Packets: %d\n", r.Health.FwdDrops),
			fmt.Sprintf("Dropped Packets: %d (Reverse Type 133 DROPPED_PACKETS)\n", r.Health.RevDrops))
	}
	for _, w := range want {
		if !strings.Contains(b, w) {
			t.Errorf("flow from port %d: tshark does not show %q", r.Tuple.SrcPort, w)
		}
	}
	for _, f := range []struct {
		id  int
		val string
	}{
		{101, r.Source.PodName}, {100, r.Source.PodNamespace}, {104, r.Source.NodeName},
		{103, r.Destination.PodName}, {102, r.Destination.PodNamespace}, {105, r.Destination.NodeName},
		{136, r.TCPState.String()},
	} {
		entry := fmt.Sprintf("(Project Antrea) Type %d: ", f.id)
		switch {
		case f.val == "" && strings.Contains(b, entry):
			t.Errorf("flow from port %d: tshark shows Antrea field %d, which this half leaves empty", r.Tuple.SrcPort, f.id)
		case f.val != "" && !strings.Contains(b, entry+"Value (hex bytes): "+tsharkHex(f.val)+"\n"):
			t.Errorf("flow from port %d: tshark does not show Antrea field %d = %q", r.Tuple.SrcPort, f.id, f.val)
		}
	}
}
