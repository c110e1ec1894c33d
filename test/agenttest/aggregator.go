package agenttest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BuildAggregator builds cmd/flowlens-aggregator into dir and returns the
// binary's path; call it once from TestMain.
func BuildAggregator(dir string) (string, error) {
	bin := filepath.Join(dir, "flowlens-aggregator")
	build := exec.Command("go", "build", "-o", bin, "github.com/flowlens/flowlens/cmd/flowlens-aggregator")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build flowlens-aggregator: %w", err)
	}
	return bin, nil
}

// Aggregator is a running flowlens-aggregator. Its HTTP helpers (Get,
// Metrics, Metric, WaitMetric) are Agent's: the aggregator serves the same
// /metrics and /healthz.
type Aggregator struct {
	Agent
	// Listen are the collector endpoints as bound, scheme://host:port in
	// the order of the configuration's listen list.
	Listen []string

	cmd    *exec.Cmd
	exited chan error
	once   sync.Once
	err    error
}

var aggRunning = regexp.MustCompile(`"Aggregator running" .*listen=\[([^\]]*)\]`)

// StartAggregator runs bin with the YAML configuration cfg, whose listen
// endpoints should use port 0 (tcp://127.0.0.1:0); the bound ones are in
// Aggregator.Listen. /metrics and /healthz are served on a free loopback
// port (the --metrics-address flag overrides cfg). It returns once the
// aggregator runs its pipeline and answers /healthz. The aggregator gets
// SIGTERM when the test ends (or at Stop) and must exit cleanly; its log is
// shown when the test failed.
func StartAggregator(t testing.TB, bin, cfg string) *Aggregator {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "aggregator.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "aggregator.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr, err := freeLoopbackPort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", cfgPath, "--metrics-address", metricsAddr, "-v=2")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start aggregator: %v", err)
	}
	a := &Aggregator{Agent: Agent{MetricsAddr: metricsAddr, LogPath: logPath}, cmd: cmd, exited: make(chan error, 1)}
	go func() { a.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if err := a.Stop(); err != nil {
			t.Errorf("%v", err)
		}
		logFile.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("aggregator log:\n%s", b)
			}
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if m := aggRunning.FindSubmatch(b); m != nil {
			for _, l := range strings.Fields(string(m[1])) {
				a.Listen = append(a.Listen, strings.Trim(l, `",`))
			}
			if code, _ := a.Get(t, "/healthz"); code != 200 {
				t.Fatalf("aggregator /healthz: %d", code)
			}
			return a
		}
		select {
		case err := <-a.exited:
			a.exited <- err // for Stop
			t.Fatalf("aggregator exited at start-up: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("aggregator not running 30s after start; log:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Addr returns the host:port of the first listen endpoint of the given
// scheme (tcp, udp, tls), as an agent's export.collector wants it.
func (a *Aggregator) Addr(t testing.TB, scheme string) string {
	t.Helper()
	for _, l := range a.Listen {
		if rest, ok := strings.CutPrefix(l, scheme+"://"); ok {
			return rest
		}
	}
	t.Fatalf("aggregator has no %s listener: %v", scheme, a.Listen)
	return ""
}

// Stop sends SIGTERM and waits for the graceful stop (collectors drain, the
// correlator flushes, sinks deliver); an exit other than 0, or none within
// 60s, is the error. Later calls return the first one's result.
func (a *Aggregator) Stop() error {
	a.once.Do(func() {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-a.exited:
			if err != nil {
				a.err = fmt.Errorf("aggregator exited with %v", err)
			}
		case <-time.After(60 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.exited
			a.err = fmt.Errorf("aggregator did not stop within 60s of SIGTERM")
		}
	})
	return a.err
}

// Kill ends the aggregator with SIGKILL, as a crash or the OOM killer
// would: nothing is flushed, only what its write-ahead log holds survives.
// The test's cleanup (and Stop) then has nothing left to do.
func (a *Aggregator) Kill() {
	a.once.Do(func() {
		_ = a.cmd.Process.Kill()
		<-a.exited
	})
}

// Pid is the aggregator's process id, for reading its /proc entries.
func (a *Aggregator) Pid() int { return a.cmd.Process.Pid }

func freeLoopbackPort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}
