//go:build integration

package ipfixexport

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// nfdumpFlow is one record of `nfdump -o json`.
type nfdumpFlow struct {
	Type       string `json:"type"`
	First      string `json:"first"`
	Last       string `json:"last"`
	InPackets  uint64 `json:"in_packets"`
	InBytes    uint64 `json:"in_bytes"`
	OutPackets uint64 `json:"out_packets"`
	OutBytes   uint64 `json:"out_bytes"`
	Proto      uint8  `json:"proto"`
	SrcPort    uint16 `json:"src_port"`
	DstPort    uint16 `json:"dst_port"`
	Src4       string `json:"src4_addr"`
	Dst4       string `json:"dst4_addr"`
	Src6       string `json:"src6_addr"`
	Dst6       string `json:"dst6_addr"`
}

func nfdumpWant(r *flow.Record) nfdumpFlow {
	startMs, endMs := wireMillis(r)
	ts := func(ms uint64) string {
		return time.UnixMilli(int64(ms)).UTC().Format("2006-01-02T15:04:05.000")
	}
	f := nfdumpFlow{
		Type: "FLOW", First: ts(startMs), Last: ts(endMs),
		InPackets: r.FwdDelta.Packets, InBytes: r.FwdDelta.Bytes,
		OutPackets: r.RevDelta.Packets, OutBytes: r.RevDelta.Bytes,
		Proto: r.Tuple.Proto, SrcPort: r.Tuple.SrcPort, DstPort: r.Tuple.DstPort,
	}
	if r.Tuple.Src().Is4() {
		f.Src4, f.Dst4 = addrString(r.Tuple.SrcIP), addrString(r.Tuple.DstIP)
	} else {
		f.Src6, f.Dst6 = addrString(r.Tuple.SrcIP), addrString(r.Tuple.DstIP)
	}
	return f
}

// nfcapd/nfdump keep each record's millisecond start and end times and the
// delta counters of both directions (the RFC 5103 reverse deltas as its
// out_packets/out_bytes). nfdump has no place for enterprise-specific IEs:
// Antrea's Kubernetes fields, and the DNS/TLS details, are skipped by their
// template length, which the L7DetailElements case checks leaves the rest
// intact.
func TestNfdumpKeepsTimesAndCountersOfBothDirections(t *testing.T) {
	nfcapd, nfdump := requireProgram(t, "nfcapd"), requireProgram(t, "nfdump")
	for _, opts := range interopOptions {
		t.Run(opts.String(), func(t *testing.T) {
			dir := t.TempDir()
			port := freeUDPPort(t)
			// SIGTERM makes nfcapd close and name its current file.
			log, stop := startDaemon(t, syscall.SIGTERM, nfcapd, "-w", dir, "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-t", "3600")
			waitUDPBound(t, port, "nfcapd", log)
			sent := interopRecords()
			sendRecords(t, port, sent, opts)
			waitFor(t, 10*time.Second, "nfcapd to read its socket", func() bool { return udpRxQueue(t, port) == 0 })
			time.Sleep(200 * time.Millisecond)
			stop()
			if files, _ := filepath.Glob(filepath.Join(dir, "nfcapd.*")); len(files) == 0 {
				t.Fatalf("nfcapd wrote no file in %s; output:\n%s", dir, log.String())
			}
			cmd := exec.Command(nfdump, "-R", dir, "-o", "json")
			cmd.Env = append(os.Environ(), "TZ=UTC") // nfdump prints local time
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("nfdump: %v\n%s", err, out)
			}
			var flows []nfdumpFlow
			if err := json.Unmarshal(out, &flows); err != nil {
				t.Fatalf("nfdump -o json: %v\n%s", err, out)
			}
			if len(flows) != len(sent) {
				t.Errorf("nfdump shows %d flows, %d were sent", len(flows), len(sent))
			}
			got := map[uint16]nfdumpFlow{}
			for _, f := range flows {
				got[f.SrcPort] = f
			}
			for i := range sent {
				want := nfdumpWant(&sent[i])
				if g, ok := got[want.SrcPort]; !ok {
					t.Errorf("nfdump shows no flow from port %d", want.SrcPort)
				} else if g != want {
					t.Errorf("nfdump flow from port %d:\n got %+v\nwant %+v", want.SrcPort, g, want)
				}
			}
			if t.Failed() {
				t.Logf("nfdump -o json:\n%s\nnfcapd:\n%s", out, log.String())
			}
		})
	}
}
