package eve

import (
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metricValue is the value of the metric name (counter or gauge) with the
// given label value, or of its only series when label is "".
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// startMetered is startReader with a registry.
func startMetered(t *testing.T, cfg Config) (*Reader, *prometheus.Registry, func() error) {
	t.Helper()
	reg := prometheus.NewRegistry()
	r, err := New(cfg, reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r, reg, runReader(t, r)
}

func dialUnix(t *testing.T, network, path string) net.Conn {
	t.Helper()
	var conn net.Conn
	waitFor(t, "socket to accept", func() bool {
		var err error
		conn, err = net.Dial(network, path)
		return err == nil
	})
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestUnixStreamClientsBeyondMaxClientsAreRefusedAndCounted(t *testing.T) {
	path := sockPath(t)
	var c collector
	_, reg, _ := startMetered(t, Config{Source: SourceUnixStream, Path: path, Handler: c.handle, MaxClients: 2})
	a, b := dialUnix(t, "unix", path), dialUnix(t, "unix", path)
	mustWrite(t, a, evLine(1)+"\n")
	mustWrite(t, b, evLine(2)+"\n")
	waitFor(t, "both clients' events", func() bool { return len(c.got()) == 2 })
	third := dialUnix(t, "unix", path)
	_ = third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client 3 of 2: read = %v, want EOF (refused)", err)
	}
	if v := metricValue(t, reg, "flowlens_eve_clients_refused_total", ""); v != 1 {
		t.Errorf("clients_refused_total = %v, want 1", v)
	}
	if v := metricValue(t, reg, "flowlens_eve_clients", ""); v != 2 {
		t.Errorf("clients = %v, want 2", v)
	}
	a.Close()
	waitFor(t, "a's slot to be free", func() bool { return metricValue(t, reg, "flowlens_eve_clients", "") == 1 })
	d := dialUnix(t, "unix", path)
	mustWrite(t, d, evLine(3)+"\n")
	waitFor(t, "the event of the client that took the freed slot", func() bool { return len(c.got()) == 3 })
}

// paddedLine is a valid EVE line of about n bytes.
func paddedLine(id, n int) string {
	l := evLine(id)
	return `{"pad":"` + strings.Repeat("p", n) + `",` + l[1:]
}

func TestUnterminatedLinesOfAllClientsAreBoundedByMaxBufferedBytes(t *testing.T) {
	path := sockPath(t)
	var c collector
	const budget = 1 << 20
	_, reg, _ := startMetered(t, Config{Source: SourceUnixStream, Path: path, Handler: c.handle,
		MaxLineBytes: 1 << 20, MaxBufferedBytes: budget})
	a, b := dialUnix(t, "unix", path), dialUnix(t, "unix", path)
	la := paddedLine(1, 600<<10)
	// A holds most of the budget with a line it has not finished...
	mustWrite(t, a, la[:len(la)-10])
	waitFor(t, "a's partial line to be buffered", func() bool {
		// Its buffer grows by doubling: to all of the budget for 600 KiB.
		return metricValue(t, reg, "flowlens_eve_buffered_bytes", "") == budget
	})
	// ...so B's unterminated line does not fit: it is dropped, counted,
	// and B's next line is read normally.
	go func() { _, _ = io.WriteString(b, paddedLine(2, 600<<10)) }()
	waitFor(t, "b's line to be refused", func() bool {
		return metricValue(t, reg, "flowlens_eve_lines_rejected_total", "buffer_full") == 1
	})
	if v := metricValue(t, reg, "flowlens_eve_buffered_bytes", ""); v > budget {
		t.Errorf("buffered_bytes = %v, over MaxBufferedBytes %d", v, budget)
	}
	mustWrite(t, b, "\n"+evLine(3)+"\n")
	mustWrite(t, a, la[len(la)-10:]+"\n")
	waitFor(t, "a's line and b's next line", func() bool { return len(c.got()) == 2 })
	if got := c.got(); !(got[0] == 1 && got[1] == 3 || got[0] == 3 && got[1] == 1) {
		t.Errorf("flow ids %v, want 1 and 3", got)
	}
	a.Close()
	b.Close()
	waitFor(t, "the closed clients' buffers to be released", func() bool {
		return metricValue(t, reg, "flowlens_eve_buffered_bytes", "") == 0
	})
}

func TestRemovedSocketFileIsRecreatedAndReportedInHealthAndMetrics(t *testing.T) {
	for _, source := range []SourceKind{SourceUnixStream, SourceUnixDgram} {
		t.Run(string(source), func(t *testing.T) {
			network := "unix"
			if source == SourceUnixDgram {
				network = "unixgram"
			}
			path := sockPath(t)
			var c collector
			r, reg, _ := startMetered(t, Config{Source: source, Path: path, Handler: c.handle, PollInterval: 10 * time.Millisecond})
			old := dialUnix(t, network, path)
			mustWrite(t, old, evLine(1)+"\n")
			waitFor(t, "the first event", func() bool { return len(c.got()) == 1 })
			if err := r.Health(); err != nil {
				t.Fatalf("Health with the socket in place: %v", err)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the socket to be recreated", func() bool {
				return metricValue(t, reg, "flowlens_eve_socket_recreated_total", "") == 1
			})
			if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != DefaultSocketMode {
				t.Fatalf("after recreation: %v, %v; want a socket of mode %v", fi, err, DefaultSocketMode)
			}
			// A new client reaches the new socket. A stream client connected
			// before is still read; a datagram client connected to the old
			// socket is refused and connects again, as Suricata does.
			mustWrite(t, dialUnix(t, network, path), evLine(2)+"\n")
			if source == SourceUnixDgram {
				if _, err := io.WriteString(old, evLine(3)); err == nil {
					t.Fatal("a datagram to the replaced socket was accepted; it would be lost")
				}
				old = dialUnix(t, network, path)
			}
			mustWrite(t, old, evLine(3)+"\n")
			waitFor(t, "events through both sockets", func() bool { return len(c.got()) == 3 })

			// A file that is not ours in its place is left alone and
			// reported until it goes.
			// (Renamed over the socket: no moment without a file there.)
			if err := os.WriteFile(path+".new", []byte("not a socket"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "unhealthy", func() bool { return r.Health() != nil })
			if err := r.Health(); !strings.Contains(err.Error(), path) {
				t.Errorf("Health = %v, want an error naming %s", err, path)
			}
			if v := metricValue(t, reg, "flowlens_eve_socket_ready", ""); v != 0 {
				t.Errorf("socket_ready = %v while the path is a regular file, want 0", v)
			}
			if b, _ := os.ReadFile(path); string(b) != "not a socket" {
				t.Errorf("the regular file was changed: %q", b)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "healthy again", func() bool { return r.Health() == nil })
			if v := metricValue(t, reg, "flowlens_eve_socket_ready", ""); v != 1 {
				t.Errorf("socket_ready = %v after recreation, want 1", v)
			}
			mustWrite(t, dialUnix(t, network, path), evLine(4)+"\n")
			waitFor(t, "the event through the third socket", func() bool { return len(c.got()) == 4 })
		})
	}
}
