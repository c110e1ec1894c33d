//go:build integration

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
)

// The real binary is killed with SIGKILL while its correlator holds
// connections (activeTimeout far away) and after its sink wrote others.
// After a restart over the same write-ahead log, every connection's deltas
// in the JSON lines output add up to its totals exactly: nothing the crash
// interrupted is lost, nothing written before it is written twice.
func TestKill9LosesNothingAndWritesNothingTwice(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "flowlens-aggregator")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	listen, metrics := freeAddr(t), freeAddr(t)
	jsonlPath, walDir := filepath.Join(dir, "flows.jsonl"), filepath.Join(dir, "wal")
	cfgPath := filepath.Join(dir, "aggregator.yaml")
	cfg := fmt.Sprintf(`aggregatorID: crash-test
listen: ["tcp://%s"]
metricsAddress: %s
correlation:
  activeTimeout: 10m
  inactiveTimeout: 10m
wal:
  enabled: true
  dir: %s
  sync: never
sinks:
  jsonl:
    enabled: true
    path: %s
    commitInterval: 50ms
`, listen, metrics, walDir, jsonlPath)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "aggregator.log")
	start := func() *exec.Cmd {
		t.Helper()
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--config", cfgPath)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatalf("start aggregator: %v", err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = logf.Close() })
		waitFor(t, logPath, "aggregator /healthz", func() bool {
			resp, err := http.Get("http://" + metrics + "/healthz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		return cmd
	}

	const held, ended = 200, 50
	t0 := time.Now().Add(-time.Minute)
	update := func(i int, reason flow.EndReason, round uint64) flow.Record {
		r := intraNode(i, t0)
		r.EndReason = reason
		r.Fwd = flow.Counters{Packets: round * uint64(i+1), Bytes: round * 100 * uint64(i+1)}
		r.FwdDelta = flow.Counters{Packets: uint64(i + 1), Bytes: 100 * uint64(i+1)}
		r.ExportNanos = t0.Add(time.Duration(round) * time.Second).UnixNano()
		r.StopNanos = 0
		if reason == flow.EndOfFlow {
			r.StopNanos = r.ExportNanos
		}
		return r
	}
	domain := flow.DefaultObservationDomainID("node-c")

	// Run 1: connections still open (held by the correlator) and
	// connections already over (written by the sink), then SIGKILL.
	cmd := start()
	ag := startAgent(t, listen, ipfixexport.TCP, domain)
	var recs []flow.Record
	for i := 0; i < held; i++ {
		recs = append(recs, update(i, flow.EndActiveTimeout, 1))
	}
	for i := held; i < held+ended; i++ {
		recs = append(recs, intraNode(i, t0))
	}
	ag.export(t, recs...)
	waitFor(t, logPath, "records appended and the ended ones committed", func() bool {
		return scrape(t, metrics, "flowlens_wal_appended_records_total") == held+ended &&
			scrape(t, metrics, "flowlens_wal_committed_records_total") == ended
	})
	ag.stop()
	if n := len(readRows(t, jsonlPath)); n != ended {
		t.Fatalf("%d rows before the crash, want the %d ended connections", n, ended)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// Run 2: the held connections end.
	cmd = start()
	if got := scrape(t, metrics, "flowlens_wal_replayed_records_total"); got != held {
		t.Errorf("replayed %v records, want the %d held at the crash (the %d written ones are committed)", got, held, ended)
	}
	ag = startAgent(t, listen, ipfixexport.TCP, domain)
	recs = recs[:0]
	for i := 0; i < held; i++ {
		recs = append(recs, update(i, flow.EndOfFlow, 2))
	}
	ag.export(t, recs...)
	waitFor(t, logPath, "run 2 records appended", func() bool {
		return scrape(t, metrics, "flowlens_wal_appended_records_total") == held
	})
	ag.stop()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("aggregator exit after SIGTERM: %v (log %s)", err, tail(logPath))
	}

	type sum struct {
		rows, ends int
		octets     uint64
	}
	byConn := map[string]*sum{}
	for _, row := range readRows(t, jsonlPath) {
		k := fmt.Sprint(row["sourceIP"], ":", row["sourceTransportPort"])
		s := byConn[k]
		if s == nil {
			s = &sum{}
			byConn[k] = s
		}
		s.rows++
		s.octets += uint64(row["octetDeltaCount"].(float64))
		if row["flowEndReason"].(float64) == float64(flow.EndOfFlow) {
			s.ends++
		}
	}
	if len(byConn) != held+ended {
		t.Errorf("rows for %d connections, want %d", len(byConn), held+ended)
	}
	for i := 0; i < held+ended; i++ {
		r := intraNode(i, t0)
		k := fmt.Sprint(r.Tuple.Src(), ":", r.Tuple.SrcPort)
		s := byConn[k]
		want := r.Fwd.Bytes // an ended connection's only record
		if i < held {
			want = update(i, flow.EndOfFlow, 2).Fwd.Bytes
		}
		switch {
		case s == nil:
			t.Errorf("connection %d: no row", i)
		case s.octets != want || s.ends != 1:
			t.Errorf("connection %d: %d rows summing to %d octets with %d end-of-flow, want %d octets and one end-of-flow",
				i, s.rows, s.octets, s.ends, want)
		}
	}
	if segs, _ := filepath.Glob(filepath.Join(walDir, "*.wal")); len(segs) != 0 {
		t.Errorf("WAL segments left after a clean stop with everything written: %v", segs)
	}
}

func waitFor(t *testing.T, logPath, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; aggregator log:\n%s", what, tail(logPath))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// scrape returns the value of an unlabelled metric (-1 when absent).
func scrape(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

func readRows(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		rows = append(rows, m)
	}
	return rows
}
