//go:build integration

package ipfixexport

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// lockedBuffer collects a subprocess's output while the test polls it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tshark, capturing the loopback TCP stream, decodes the exporter's
// messages (templates included) into the records that were sent.
func TestTsharkDecodesTheTCPStream(t *testing.T) {
	tshark := requireProgram(t, "tshark")
	var got collected
	addr, _ := startCollector(t, ipfixcollect.Config{Network: "tcp", Address: "127.0.0.1:0"}, &got)
	_, port, _ := net.SplitHostPort(addr)
	pcap := filepath.Join(t.TempDir(), "ipfix.pcap")
	capture := exec.Command(tshark, "-i", "lo", "-f", "tcp port "+port, "-w", pcap)
	var capOut lockedBuffer
	capture.Stdout, capture.Stderr = &capOut, &capOut
	if err := capture.Start(); err != nil {
		t.Fatalf("start tshark: %v", err)
	}
	defer func() { _ = capture.Process.Kill(); _ = capture.Wait() }()
	waitFor(t, 20*time.Second, "tshark to capture", func() bool { return strings.Contains(capOut.String(), "Capturing on") })
	time.Sleep(500 * time.Millisecond) // "Capturing on" comes just before the capture really starts

	e, stop := startExporter(t, Config{Address: addr, Transport: TCP, FlushInterval: 20 * time.Millisecond}, nil)
	sent := []flow.Record{testRecord(101, false), testRecord(102, true)}
	for i := range sent {
		e.Export(&sent[i])
	}
	waitFor(t, 5*time.Second, "the collector", func() bool { return len(got.snapshot()) == len(sent) })
	stop()
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
	out, err := exec.Command(tshark, "-r", pcap, "-d", "tcp.port=="+port+",cflow", "-V", "-O", "cflow").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark -r: %v\n%s", err, out)
	}
	text := string(out)
	if n := strings.Count(text, "(Data Template)"); n < 2 {
		t.Errorf("tshark decoded %d template sets, want both templates", n)
	}
	blocks := strings.Split(text, "        Flow ")
	for _, r := range sent {
		want := []string{
			"Addr: " + r.Tuple.Src().String() + "\n",
			"Addr: " + r.Tuple.Dst().String() + "\n",
			"SrcPort: " + strconv.Itoa(int(r.Tuple.SrcPort)) + "\n",
			"DstPort: " + strconv.Itoa(int(r.Tuple.DstPort)) + "\n",
			"Protocol: TCP (6)",
			"Permanent Packets: " + strconv.FormatUint(r.Fwd.Packets, 10) + "\n",
			"Permanent Octets: " + strconv.FormatUint(r.Fwd.Bytes, 10) + "\n",
			"Packets: " + strconv.FormatUint(r.FwdDelta.Packets, 10) + "\n",
			"Octets: " + strconv.FormatUint(r.FwdDelta.Bytes, 10) + "\n",
		}
		found := false
		for _, b := range blocks {
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(b, w)
			}
			found = found || ok
		}
		if !found {
			t.Errorf("no flow in tshark's decode with all of %q", want)
		}
	}
	if t.Failed() {
		t.Logf("tshark -V -O cflow:\n%s", text)
	}
}
