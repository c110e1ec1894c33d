package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/sink"
)

func TestTemplateWithdrawalAndReconnectWithNewTemplates(t *testing.T) {
	ra := startAggregator(t, testConfig(t, "tcp://127.0.0.1:0"))
	addr := ra.addr(t, "tcp")
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	write := func(c net.Conn, msgs ...[]byte) {
		t.Helper()
		for _, m := range msgs {
			if _, err := c.Write(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmpl, data1 := validMessages(t, 3, intraNode(1, start))
	_, data2 := validMessages(t, 3, intraNode(2, start))
	_, data3 := validMessages(t, 3, intraNode(3, start))
	withdrawAll := ipfixMessage(3, 9, ipfixSet(2, []byte{0, 2, 0, 0})) // set id as template id: all templates

	c := dial(t, "tcp", addr)
	write(c, tmpl, data1, withdrawAll, data2) // data2 refers to a withdrawn template
	ra.capture.waitFor(t, 1, 10*time.Second)
	// data2 is the connection's last message: once its error is counted,
	// nothing more can come of c.
	deadline := time.Now().Add(10 * time.Second)
	for counterSum(t, ra.reg, "flowlens_ipfix_collector_errors_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("data for a withdrawn template not counted as an error within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Close()

	// The agent reconnects and announces its templates again; data3 is the
	// last message sent, so when its record is out every record is.
	c2 := dial(t, "tcp", addr)
	write(c2, tmpl, data3)
	recs := ra.capture.waitFor(t, 2, 10*time.Second)
	got := map[uint16]bool{}
	for _, r := range recs {
		got[r.Tuple.SrcPort] = true
	}
	want := map[uint16]bool{intraNode(1, start).Tuple.SrcPort: true, intraNode(3, start).Tuple.SrcPort: true}
	if len(got) != 2 || !got[intraNode(1, start).Tuple.SrcPort] || !got[intraNode(3, start).Tuple.SrcPort] {
		t.Errorf("connections out = %v, want %v (the one after withdrawal dropped)", got, want)
	}
	if n := counterSum(t, ra.reg, "flowlens_ipfix_collector_errors_total"); n < 1 {
		t.Errorf("data for a withdrawn template not counted (errors = %v)", n)
	}
}

func TestMetricsAndHealthEndpoints(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	cfg := testConfig(t, "tcp://127.0.0.1:0")
	cfg.MetricsAddress = metricsAddr
	ra := startAggregator(t, cfg)
	a := startAgent(t, ra.addr(t, "tcp"), ipfixexport.TCP, 1)
	a.export(t, intraNode(1, time.Now()))
	ra.capture.waitFor(t, 1, 10*time.Second)

	get := func(path string) string {
		t.Helper()
		var resp *http.Response
		var err error
		for i := 0; i < 50; i++ {
			if resp, err = http.Get("http://" + metricsAddr + path); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		return string(b)
	}
	if got := get("/healthz"); strings.TrimSpace(got) != "ok" {
		t.Errorf("/healthz = %q", got)
	}
	m := get("/metrics")
	for _, name := range []string{
		"flowlens_aggregator_records_received_total", "flowlens_aggregator_records_correlated_total",
		"flowlens_aggregator_records_unmatched_total", "flowlens_aggregator_sink_records_written_total",
		"flowlens_aggregator_sink_write_retries_total", "flowlens_aggregator_sink_records_dropped_total",
		"flowlens_aggregator_input_records_total", "flowlens_ipfix_collector_records_total", "flowlens_aggregator_sink_queue_records",
	} {
		if !strings.Contains(m, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if !strings.Contains(m, `flowlens_aggregator_records_received_total{flow_type="intra-node"} 1`) {
		t.Errorf("received counter not at 1 for the one intra-node record")
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.crt"), "CERTIFICATE", ca.Raw)
	leaf(t, dir, "server", ca, caKey, true)
	leaf(t, dir, "client", ca, caKey, false)

	cfg := testConfig(t, "tls://127.0.0.1:0")
	cfg.TLS = aggregatorconfig.ListenTLS{CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key"), ClientCAFile: filepath.Join(dir, "ca.crt")}
	ra := startAggregator(t, cfg)
	addr := ra.addr(t, "tcp")

	for _, tc := range []struct {
		name     string
		tls      ipfixexport.TLSConfig
		wantRecs int
	}{
		{"agent without a client certificate is refused", ipfixexport.TLSConfig{CAFile: filepath.Join(dir, "ca.crt"), ServerName: "localhost"}, 0},
		{"agent with a certificate from the CA is accepted", ipfixexport.TLSConfig{CAFile: filepath.Join(dir, "ca.crt"),
			CertFile: filepath.Join(dir, "client.crt"), KeyFile: filepath.Join(dir, "client.key"), ServerName: "localhost"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(ra.capture.records())
			exp, err := ipfixexport.New(ipfixexport.Config{Address: addr, Transport: ipfixexport.TLS, TLS: tc.tls,
				FlushInterval: 20 * time.Millisecond, ReconnectMin: 50 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = exp.Run(ctx) }()
			r := intraNode(100+len(tc.name), time.Now())
			exp.Export(&r)
			exp.Flush()
			if tc.wantRecs > 0 {
				ra.capture.waitFor(t, before+tc.wantRecs, 10*time.Second)
			} else {
				time.Sleep(500 * time.Millisecond)
				if got := len(ra.capture.records()) - before; got != 0 {
					t.Errorf("%d records accepted from an agent without a certificate", got)
				}
			}
			cancel()
			<-done
		})
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flowlens test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func leaf(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, server bool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".crt"), "CERTIFICATE", der)
	writePEM(t, filepath.Join(dir, name+".key"), "EC PRIVATE KEY", kb)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// getHealth returns /healthz's status and body, retrying until the server
// answers.
func getHealth(t *testing.T, addr string) (int, string) {
	t.Helper()
	var err error
	for i := 0; i < 50; i++ {
		var resp *http.Response
		if resp, err = http.Get("http://" + addr + "/healthz"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("GET /healthz: %v", err)
	return 0, ""
}

// waitHealth polls /healthz until it answers status, and returns the body.
func waitHealth(t *testing.T, addr string, status int, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		code, body := getHealth(t, addr)
		if code == status {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz still %d %q after %s, want %d", code, body, within, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// stopExpectingError stops ra and returns what run returned, for tests
// where run must report a failure.
func stopExpectingError(ra *runningAggregator) error {
	var err error
	ra.once.Do(func() {
		ra.cancel()
		select {
		case err = <-ra.done:
		case <-time.After(90 * time.Second):
			ra.err = errors.New("aggregator did not stop within 90s")
		}
	})
	return err
}

func TestHealthzReportsAStoppedListener(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:0", "udp://127.0.0.1:0")
	cfg.MetricsAddress = freeAddr(t)
	ra := startAggregator(t, cfg)
	if code, body := getHealth(t, cfg.MetricsAddress); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz = %d %q before any failure", code, body)
	}
	// The TCP listener's socket goes away under it (as a fatal accept
	// error would do it); the UDP one goes on.
	if err := ra.collectors[0].Close(); err != nil {
		t.Fatal(err)
	}
	body := waitHealth(t, cfg.MetricsAddress, http.StatusServiceUnavailable, 5*time.Second)
	if !strings.Contains(body, "listener tcp://127.0.0.1:0 stopped") || strings.Contains(body, "udp://") {
		t.Errorf("/healthz body %q does not name the stopped listener (only)", body)
	}
	if err := stopExpectingError(ra); err == nil || !strings.Contains(err.Error(), "accept") {
		t.Errorf("run returned %v, want the listener's accept error", err)
	}
}

// failingWriter fails every write, as a ClickHouse that is down does.
type failingWriter struct{}

func (failingWriter) Write(context.Context, *sink.Batch) (int, error) {
	return 0, errors.New("connection refused")
}
func (failingWriter) Close() error { return nil }

func TestHealthzReportsASinkFailingLongerThanTheTimeout(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:0")
	cfg.MetricsAddress = freeAddr(t)
	cfg.Health.SinkFailureTimeout = aggregatorconfig.Duration(300 * time.Millisecond)
	ra := newTestAggregator(t, cfg)
	q := aggregatorconfig.DefaultQueue()
	q.CommitInterval, q.RetryMin, q.RetryMax = aggregatorconfig.Duration(10*time.Millisecond), aggregatorconfig.Duration(10*time.Millisecond), aggregatorconfig.Duration(50*time.Millisecond)
	q.FlushTimeout = aggregatorconfig.Duration(100 * time.Millisecond)
	// Built the way buildSinks builds the configured sinks, so the
	// timeout comes from health.sinkFailureTimeout.
	s, err := sink.New(sinkConfig(cfg, "down", failingWriter{}, q), nil)
	if err != nil {
		t.Fatal(err)
	}
	ra.sinks = append(ra.sinks, s)
	ra.start(t)
	if code, _ := getHealth(t, cfg.MetricsAddress); code != http.StatusOK {
		t.Fatalf("/healthz = %d before any write failed", code)
	}
	start := time.Now()
	a := startAgent(t, ra.addr(t, "tcp"), ipfixexport.TCP, 1)
	a.export(t, intraNode(1, time.Now()))
	body := waitHealth(t, cfg.MetricsAddress, http.StatusServiceUnavailable, 10*time.Second)
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond {
		t.Errorf("unhealthy after %s, before health.sinkFailureTimeout (300ms)", elapsed)
	}
	if !strings.Contains(body, "sink down") || !strings.Contains(body, "connection refused") {
		t.Errorf("/healthz body %q does not name the failing sink and its error", body)
	}
	// The healthy sink still delivered: only the failing one is reported.
	ra.capture.waitFor(t, 1, 5*time.Second)
	if strings.Contains(body, "capture") || strings.Contains(body, "jsonl") {
		t.Errorf("/healthz blames a healthy sink: %q", body)
	}
	_ = stopExpectingError(ra) // the failing sink's record is dropped at stop
}
