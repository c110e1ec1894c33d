//go:build integration

package mirror

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/test/l7e2e"
)

// TestSuricataReadsTheCapturePeer: real Suricata on the capture peer (the
// copies dropped at its tc ingress after af-packet) logs an HTTP
// transaction of a mirrored pod with its response status, which it can
// only parse with both directions mirrored.
func TestSuricataReadsTheCapturePeer(t *testing.T) {
	suricata, err := l7e2e.FindSuricata()
	if err != nil {
		t.Fatal(err)
	}
	for _, mech := range []string{MechanismTCX, MechanismTC} {
		t.Run(mech, func(t *testing.T) {
			e := newEnv(t)
			srv, err := e.c.ServeHTTP(80)
			if err != nil {
				t.Fatal(err)
			}
			m, err := New(Config{NetnsPath: e.node.NetnsPath, Mechanism: mech}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = m.Close() })
			if err := m.Reconcile([]netip.Addr{e.a.IPv4}); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			sock := filepath.Join(dir, "eve.sock")
			probe, err := l7e2e.StartProbe(sock)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = probe.Close() })
			conf := filepath.Join(dir, "suricata.yaml")
			if err := os.WriteFile(conf, []byte(l7e2e.SuricataConfig(dir, m.cfg.PeerName, []string{sock})), 0o644); err != nil {
				t.Fatal(err)
			}
			logf, err := os.Create(filepath.Join(dir, "suricata.log"))
			if err != nil {
				t.Fatal(err)
			}
			defer logf.Close()
			cmd := exec.Command("ip", "netns", "exec", e.node.NetnsName, suricata, "-c", conf, "--af-packet="+m.cfg.PeerName,
				"-k", "none", "--runmode", "single", "-l", dir, "-S", os.DevNull, "--pidfile", filepath.Join(dir, "suricata.pid"))
			cmd.Stdout, cmd.Stderr = logf, logf
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { _ = cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(15 * time.Second):
					_ = cmd.Process.Kill()
					<-exited
				}
			})
			// Requests until Suricata, starting up, logs one.
			stopReq := make(chan struct{})
			defer close(stopReq)
			go func() {
				url := fmt.Sprintf("http://%s/status/204", srv.Addr())
				for {
					_, _ = e.a.HTTPGet(url)
					select {
					case <-stopReq:
						return
					case <-time.After(500 * time.Millisecond):
					}
				}
			}()
			ev, err := probe.Wait(60*time.Second, exited, func(ev eve.Event) bool {
				return ev.Type == "http" && ev.HTTP != nil && ev.HTTP.Status == 204 && l7e2e.Involves(ev, srv.Addr())
			})
			if err != nil {
				log, _ := os.ReadFile(filepath.Join(dir, "suricata.log"))
				t.Fatalf("%v\nsuricata log:\n%s", err, log)
			}
			if ev.Tuple.Src() != e.a.IPv4 && ev.Tuple.Dst() != e.a.IPv4 {
				t.Errorf("http event %s does not involve the mirrored pod %s", ev.Tuple, e.a.IPv4)
			}
		})
	}
}
