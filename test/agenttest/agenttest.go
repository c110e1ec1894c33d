// Package agenttest runs the real flowlens-agent binary for end-to-end
// tests and receives what it exports with a real IPFIX collector
// (pkg/ipfixcollect), so every e2e suite (L3/L4, Kubernetes, L7) checks
// records the way a user's collector would see them.
package agenttest

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
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

// RunMain is an e2e suite's TestMain: it fails the whole suite, naming what
// is missing, when a prerequisite check fails; otherwise it lets build put
// the binaries the suite runs into a temporary directory, runs the tests,
// removes the directory and exits with the tests' status.
func RunMain(m *testing.M, suite string, build func(dir string) error, prereqs ...func() error) {
	for _, check := range prereqs {
		if err := check(); err != nil {
			fmt.Fprintf(os.Stderr, "%s need: %v\n", suite, err)
			os.Exit(1)
		}
	}
	dir, err := os.MkdirTemp("", "flowlens-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := build(dir); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", suite, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// BuildAgent builds cmd/flowlens-agent into dir and returns the binary's
// path; call it once from TestMain.
func BuildAgent(dir string) (string, error) {
	bin := filepath.Join(dir, "flowlens-agent")
	build := exec.Command("go", "build", "-o", bin, "github.com/flowlens/flowlens/cmd/flowlens-agent")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build flowlens-agent: %w", err)
	}
	return bin, nil
}

// Arrival is one flow record as it came off the wire: when, decoded into a
// flow.Record, and raw, so assertions can name Antrea's IEs.
type Arrival struct {
	At  time.Time
	Rec flow.Record
	Raw ipfixcollect.Record
}

// Str returns a string IE of the raw record, and whether the template had it.
func (a Arrival) Str(name string) (string, bool) {
	f, ok := a.Raw.Get(name)
	if !ok {
		return "", false
	}
	return f.Str, true
}

// Collector is a real IPFIX collector on loopback TCP keeping every flow
// record it receives.
type Collector struct {
	Addr string
	mu   sync.Mutex
	recs []Arrival
}

// StartCollector starts a collector that stops when the test ends.
func StartCollector(t testing.TB) *Collector {
	t.Helper()
	c, err := ipfixcollect.New(ipfixcollect.Config{Network: ipfixcollect.TCP, Address: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatalf("collector: %v", err)
	}
	col := &Collector{Addr: c.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, func(r ipfixcollect.Record) {
			fr, err := r.FlowRecord()
			if err != nil {
				return
			}
			col.mu.Lock()
			col.recs = append(col.recs, Arrival{At: time.Now(), Rec: fr, Raw: r.Clone()})
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

// RecordsOf returns, in arrival order, the records of the connection whose
// client (source) address is src.
func (c *Collector) RecordsOf(src netip.AddrPort, proto uint8) []Arrival {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Arrival
	for _, a := range c.recs {
		if a.Rec.Tuple.Src() == src.Addr() && a.Rec.Tuple.SrcPort == src.Port() && a.Rec.Tuple.Proto == proto {
			out = append(out, a)
		}
	}
	return out
}

// Len returns how many flow records the collector has received.
func (c *Collector) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.recs)
}

// WaitDelivered waits until every data record ag has sent so far is in c:
// nothing is left in the agent's export buffer and c holds at least as many
// records as the agent wrote. It is how a test that checks that something
// was not exported knows there is nothing more on the way; it suits a
// collector only ag exports to.
func (c *Collector) WaitDelivered(t testing.TB, ag *Agent, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		buffered, _ := ag.Metric(t, "flowlens_ipfix_exporter_buffered_records")
		sent, ok := ag.Metric(t, "flowlens_ipfix_exporter_records_sent_total")
		if !ok {
			t.Fatalf("agent has no flowlens_ipfix_exporter_records_sent_total metric")
		}
		got := c.Len()
		if buffered == 0 && float64(got) >= sent {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s the agent has %v records buffered and sent %v; the collector received %d", within, buffered, sent, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitFor waits for a record of the connection from src with the given end
// reason and returns the connection's records up to and including it.
func (c *Collector) WaitFor(t testing.TB, src netip.AddrPort, proto uint8, reason flow.EndReason, within time.Duration) []Arrival {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		recs := c.RecordsOf(src, proto)
		for i, a := range recs {
			if a.Rec.EndReason == reason {
				return recs[:i+1]
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := c.RecordsOf(src, proto)
	t.Fatalf("no %s record for %s %s within %s; got %d records: %+v", reason, flow.ProtoName(proto), src, within, len(got), got)
	return nil
}

// Agent is a running flowlens-agent.
type Agent struct {
	// MetricsAddr serves /metrics and /healthz.
	MetricsAddr string
	LogPath     string
	// Pid is the agent's process id, for benchmarks that read its CPU
	// time and memory from /proc.
	Pid int
	// StopWithin is how long Stop (and the test's cleanup) waits for the
	// agent to exit after SIGTERM; 10 s unless the test sets it (an agent
	// holding a million connections exports them all before it exits).
	StopWithin time.Duration
	stop       func()
}

// Stop sends SIGTERM, waits for the agent to exit and checks it exited
// cleanly; the test's cleanup then has nothing left to do.
func (a *Agent) Stop() { a.stop() }

var serverAddr = regexp.MustCompile(`"Serving metrics and health" address="([^"]+)"`)

// StartAgent runs bin with the YAML configuration cfg (its server.listen
// should be 127.0.0.1:0) and waits until it serves /metrics, which it does
// only after its context source synced, and, unless cfg turns conntrack
// events off, until it is subscribed to them, so the NEW event of traffic
// the test starts next is seen, not only the next dump. The agent gets
// SIGTERM when the test ends and must exit cleanly; its log is shown when
// the test failed.
func StartAgent(t testing.TB, bin, cfg string) *Agent {
	t.Helper()
	watchNetns, events, err := parseEventWatch(cfg)
	if err != nil {
		t.Fatal(err)
	}
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
	cmd := exec.Command(bin, "--config", cfgPath, "-v=2")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ag := &Agent{StopWithin: 10 * time.Second}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("agent exited with %v", err)
				}
			case <-time.After(ag.StopWithin):
				// SIGQUIT makes the Go runtime write every goroutine's
				// stack to the log: where it hangs.
				_ = cmd.Process.Signal(syscall.SIGQUIT)
				select {
				case <-exited:
				case <-time.After(2 * time.Second):
					_ = cmd.Process.Kill()
					<-exited
				}
				t.Errorf("agent did not stop within %s of SIGTERM", ag.StopWithin)
			}
			logFile.Close()
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("agent log:\n%s", b)
			}
		}
	})
	began := time.Now()
	deadline := began.Add(30 * time.Second)
	var serving []byte
	var subErr error // from the last look at the subscription
	for {
		b, _ := os.ReadFile(logPath)
		if serving == nil {
			if m := serverAddr.FindSubmatch(b); m != nil {
				serving = m[1]
			}
		}
		if serving != nil {
			ready := !events
			if events {
				// An error is kept, not fatal: the agent may just have
				// exited, which the check below reports with its log.
				ready, subErr = subscribedToConntrack(cmd.Process.Pid, watchNetns)
			}
			if ready {
				t.Logf("agent ready (serving metrics, conntrack events %v) %s after start", events, time.Since(began).Round(time.Millisecond))
				ag.MetricsAddr, ag.LogPath, ag.Pid, ag.stop = string(serving), logPath, cmd.Process.Pid, stop
				return ag
			}
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("agent exited at start-up: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			if serving != nil {
				t.Fatalf("agent not subscribed to the conntrack events of netns %q 30s after start (last check: %v); log:\n%s", watchNetns, subErr, b)
			}
			t.Fatalf("agent serves no metrics 30s after start; log:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Get fetches a path of the agent's HTTP server.
func (a *Agent) Get(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + a.MetricsAddr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// Metrics returns the agent's /metrics page.
func (a *Agent) Metrics(t testing.TB) string {
	t.Helper()
	code, body := a.Get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	return body
}

// Metric returns the value of the sample whose name and labels are exactly
// series (e.g. `flowlens_l7_events_matched_total`), and whether it exists.
func (a *Agent) Metric(t testing.TB, series string) (float64, bool) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(a.Metrics(t))
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("metric %s: value %q: %v", series, m[1], err)
	}
	return v, true
}

// WaitMetric polls series until ok accepts its value.
func (a *Agent) WaitMetric(t testing.TB, series string, within time.Duration, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v, _ := a.Metric(t, series)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("metric %s = %v after %s", series, v, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
