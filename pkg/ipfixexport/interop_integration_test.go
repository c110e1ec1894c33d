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
	"syscall"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

func requireProgram(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run hack/install-deps.sh ipfix-tools as root (installs nfdump, tshark, nfacctd and goflow2): %v", name, err)
	}
	return p
}

// Records sent to nfcapd over UDP come back from nfdump with their 5-tuple
// and counters.
func TestNfdumpReadsExportedRecords(t *testing.T) {
	nfcapd, nfdump := requireProgram(t, "nfcapd"), requireProgram(t, "nfdump")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	dir := t.TempDir()
	cmd := exec.Command(nfcapd, "-w", dir, "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-t", "3600")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nfcapd: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// nfcapd listens once the port is taken.
	waitFor(t, 10*time.Second, "nfcapd to bind its port", func() bool {
		c, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			c.Close()
		}
		return err != nil
	})

	e, stop := startExporter(t, Config{
		Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Transport: UDP,
		FlushInterval: 50 * time.Millisecond, TemplateRefreshInterval: 200 * time.Millisecond,
	}, nil)
	sent := []flow.Record{testRecord(1, false), testRecord(2, false), testRecord(3, true)}
	sent[0].Tuple.Proto, sent[0].TCPState = flow.ProtoUDP, flow.TCPStateNone
	// A 3.4 ms connection: only flowStart/EndMilliseconds give it a
	// duration, and nfdump before 1.7.6 shows no time without them.
	sent[1].EndReason, sent[1].StopNanos, sent[1].TCPState = flow.EndOfFlow, sent[1].StartNanos+3_400_000, flow.TCPStateTimeWait
	for i := range sent {
		sent[i].FwdDelta = flow.Counters{Packets: uint64(10 + i), Bytes: uint64(1000 * (i + 1))}
		e.Export(&sent[i])
	}
	e.Flush()
	time.Sleep(time.Second)
	stop()
	// SIGTERM makes nfcapd close and name its current file.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitDone := make(chan error, 1)
	go func() { waitDone <- cmd.Wait() }()
	select {
	case <-waitDone:
	case <-ctx.Done():
		t.Fatalf("nfcapd did not exit on SIGTERM; output:\n%s", out.String())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "nfcapd.*"))
	if len(files) == 0 {
		t.Fatalf("nfcapd wrote no file in %s; output:\n%s", dir, out.String())
	}
	nfd := exec.Command(nfdump, "-R", dir, "-o", "long", "-q")
	nfd.Env = append(os.Environ(), "TZ=UTC") // nfdump prints local time
	dump, err := nfd.CombinedOutput()
	if err != nil {
		t.Fatalf("nfdump: %v\n%s", err, dump)
	}
	text := string(dump)
	t.Logf("nfdump -o long:\n%s", text)
	for _, r := range sent {
		proto := strings.ToUpper(flow.ProtoName(r.Tuple.Proto))
		src := regexp.QuoteMeta(r.Tuple.Src().String()) + `[.:]` + strconv.Itoa(int(r.Tuple.SrcPort))
		dst := regexp.QuoteMeta(r.Tuple.Dst().String()) + `[.:]` + strconv.Itoa(int(r.Tuple.DstPort))
		re := regexp.MustCompile(`(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\s+(\S+)\s+` +
			proto + `\s+` + src + `\s+->\s+` + dst + `\s+\S+\s+\S+\s+(\d+)\s+(\d+)`)
		m := re.FindStringSubmatch(text)
		if m == nil {
			t.Errorf("nfdump shows no %s flow %s -> %s; output:\n%s", proto, src, dst, text)
			continue
		}
		if m[3] != strconv.FormatUint(r.FwdDelta.Packets, 10) || m[4] != strconv.FormatUint(r.FwdDelta.Bytes, 10) {
			t.Errorf("flow %s: nfdump packets/bytes %s/%s, exported deltas %d/%d", src, m[3], m[4], r.FwdDelta.Packets, r.FwdDelta.Bytes)
		}
		end := r.ExportNanos
		if r.StopNanos != 0 {
			end = r.StopNanos
		}
		// nfdump 1.7.1 reads only the millisecond times: with seconds
		// alone it shows 1970-01-01 and no duration.
		wantStart := time.Unix(0, r.StartNanos).UTC().Format("2006-01-02 15:04:05.000")
		ms := end/1e6 - r.StartNanos/1e6
		wantDur := fmt.Sprintf("%02d:%02d:%02d.%03d", ms/3_600_000, ms/60_000%60, ms/1000%60, ms%1000)
		if m[1] != wantStart || m[2] != wantDur {
			t.Errorf("flow %s: nfdump start %s duration %s, want %s and %s", src, m[1], m[2], wantStart, wantDur)
		}
	}
	if t.Failed() {
		t.Logf("nfcapd output:\n%s", out.String())
	}
	_ = os.RemoveAll(dir)
}
