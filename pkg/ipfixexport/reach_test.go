package ipfixexport

import (
	"bytes"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

func TestReachabilityReportsOutageStartAndEndOnly(t *testing.T) {
	var r reachability
	t0 := time.Unix(1_700_000_000, 0)
	if _, _, logIt := r.connected(t0); logIt {
		t.Error("first connection reported as the end of an outage")
	}
	if !r.failed(t0) {
		t.Error("first failure not reported")
	}
	for i := 1; i <= 5; i++ {
		if r.failed(t0.Add(time.Duration(i) * time.Second)) {
			t.Errorf("retry %d reported", i)
		}
	}
	failures, downFor, logIt := r.connected(t0.Add(10 * time.Second))
	if !logIt || failures != 6 || downFor != 10*time.Second {
		t.Errorf("recovery = %d failures, %s, log %v; want 6, 10s, true", failures, downFor, logIt)
	}
	// A collector that drops the exporter at once: the next outage within
	// outageLogInterval is not logged, nor its end.
	if r.failed(t0.Add(20 * time.Second)) {
		t.Error("second outage within outageLogInterval reported")
	}
	if _, _, logIt := r.connected(t0.Add(21 * time.Second)); logIt {
		t.Error("end of an unreported outage reported")
	}
	if !r.failed(t0.Add(10*time.Second + outageLogInterval)) {
		t.Error("outage after outageLogInterval not reported")
	}
}

// syncBuffer is a bytes.Buffer klog can write to while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// captureLog sends klog's output at the default verbosity to a buffer for
// the rest of the test.
func captureLog(t *testing.T) *syncBuffer {
	t.Helper()
	var buf syncBuffer
	klog.LogToStderr(false)
	// Every line goes to the INFO output, whatever its severity (the
	// WARNING and ERROR outputs would repeat error lines).
	klog.SetOutputBySeverity("INFO", &buf)
	t.Cleanup(func() {
		klog.Flush()
		klog.SetOutput(os.Stderr)
		klog.LogToStderr(true)
	})
	return &buf
}

// linesWith counts the log lines holding every part.
func linesWith(log string, parts ...string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			n++
		}
	}
	return n
}

// Issue 9 item 13: an unreachable collector was logged at -v=2 only.
func TestIssue9UnreachableCollectorIsLoggedOnceAndItsReturnToo(t *testing.T) {
	log := captureLog(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there: connections are refused
	reg := prometheus.NewRegistry()
	_, _ = startExporter(t, Config{Address: addr, Transport: TCP, FlushInterval: 20 * time.Millisecond,
		ReconnectMin: 5 * time.Millisecond, ReconnectMax: 20 * time.Millisecond}, reg)
	waitFor(t, 5*time.Second, "5 failed dials", func() bool {
		return metricValue(t, reg, "flowlens_ipfix_exporter_connection_errors_total", "stage", "dial") >= 5
	})
	klog.Flush()
	if n := linesWith(log.String(), "Cannot connect to IPFIX collector", addr); n != 1 {
		t.Errorf("%d default-level lines for the unreachable collector after 5 attempts, want 1:\n%s", n, log.String())
	}
	if !strings.Contains(log.String(), "connection refused") {
		t.Errorf("the log does not say why:\n%s", log.String())
	}

	// The collector comes up on that address: its return is logged.
	var got collected
	startCollector(t, ipfixcollect.Config{Network: "tcp", Address: addr}, &got)
	waitFor(t, 5*time.Second, "the reconnection", func() bool {
		return metricValue(t, reg, "flowlens_ipfix_exporter_connected") == 1
	})
	klog.Flush()
	if n := linesWith(log.String(), "Connected to IPFIX collector again", addr, "failedAttempts"); n != 1 {
		t.Errorf("%d lines logging the collector's return, want 1:\n%s", n, log.String())
	}
}

// Issue 9 item 13: a failed TLS verification was logged at -v=2 only.
func TestIssue9FailedTLSVerificationIsLoggedAtDefaultLevel(t *testing.T) {
	log := captureLog(t)
	pki := newTestPKI(t)
	var got collected
	addr, _ := startCollector(t, ipfixcollect.Config{Network: "tls", Address: "127.0.0.1:0",
		TLS: ipfixcollect.TLSConfig{CertFile: pki.serverCert, KeyFile: pki.serverKey}}, &got)
	reg := prometheus.NewRegistry()
	_, _ = startExporter(t, Config{Address: addr, Transport: TLS, TLS: TLSConfig{CAFile: pki.otherCA},
		FlushInterval: 20 * time.Millisecond, ReconnectMin: 5 * time.Millisecond, ReconnectMax: 20 * time.Millisecond}, reg)
	waitFor(t, 5*time.Second, "3 failed handshakes", func() bool {
		return metricValue(t, reg, "flowlens_ipfix_exporter_connection_errors_total", "stage", "dial") >= 3
	})
	klog.Flush()
	if n := linesWith(log.String(), "Cannot connect to IPFIX collector", addr, "certificate"); n != 1 {
		t.Errorf("%d default-level lines naming the certificate problem, want 1:\n%s", n, log.String())
	}
}
