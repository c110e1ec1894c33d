//go:build integration

// Package e2e_test runs the real flowlens-agent binary end to end: a real
// etcd + kube-apiserver holding the cluster's objects, the agent bound to
// its ServiceAccount with exactly build/rbac/agent.yaml's RBAC, simulated
// nodes (network namespaces, real conntrack, nftables DNAT for Services) and
// a real IPFIX collector checking what arrives.
package e2e_test

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
	"runtime"
	"strconv"
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
		fmt.Fprintf(os.Stderr, "e2e tests need: %v\n", err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "flowlens-e2e-")
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

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// arrival is one flow record as it came off the wire: the decoded
// flow.Record and the raw record, so assertions can name Antrea's IEs.
type arrival struct {
	rec flow.Record
	raw ipfixcollect.Record
}

// str returns a string IE of the raw record, and whether the template had it.
func (a arrival) str(name string) (string, bool) {
	f, ok := a.raw.Get(name)
	if !ok {
		return "", false
	}
	return f.Str, true
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
			col.recs = append(col.recs, arrival{rec: fr, raw: r.Clone()})
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

// waitEndOfFlow waits for the end-of-flow record of the TCP connection from src.
func (c *collector) waitEndOfFlow(t *testing.T, src netip.AddrPort, within time.Duration) arrival {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, a := range c.recordsOf(src, flow.ProtoTCP) {
			if a.rec.EndReason == flow.EndOfFlow {
				return a
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := c.recordsOf(src, flow.ProtoTCP)
	t.Fatalf("no end-of-flow record for tcp %s within %s; got %d records: %+v", src, within, len(got), got)
	return arrival{}
}

// agent is a running flowlens-agent binary.
type agent struct {
	metricsAddr string
}

// startAgent runs the agent with the given YAML configuration and waits
// until it serves /metrics, which it does only after the Kubernetes
// informers synced (the context source starts before the HTTP server).
func startAgent(t *testing.T, cfg string) *agent {
	t.Helper()
	dir := t.TempDir()
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
			<-exited
			t.Errorf("agent did not stop within 10s of SIGTERM")
		}
		logFile.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("agent log:\n%s", b)
			}
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if m := serverAddr.FindSubmatch(b); m != nil {
			// Let the event listener subscribe so the traffic's NEW events
			// are seen too, not only the next dump.
			time.Sleep(300 * time.Millisecond)
			return &agent{metricsAddr: string(m[1])}
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("agent exited at start-up: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent serves no metrics 30s after start (informers not synced?); log:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var serverAddr = regexp.MustCompile(`"Serving metrics and health" address="([^"]+)"`)

// metrics returns the agent's /metrics page.
func (a *agent) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + a.metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s %v", resp.Status, err)
	}
	return string(body)
}

// metric returns the value of the sample whose name and labels are exactly
// series (e.g. `flowlens_l7_events_matched_total` or
// `flowlens_k8smeta_informer_events_total{op="add",resource="pod"}`), and
// whether it is present.
func (a *agent) metric(t *testing.T, series string) (float64, bool) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(a.metrics(t))
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("metric %s: value %q: %v", series, m[1], err)
	}
	return v, true
}

// waitMetric polls series until ok accepts its value.
func (a *agent) waitMetric(t *testing.T, series string, within time.Duration, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v, _ := a.metric(t, series)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("metric %s = %v after %s", series, v, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
