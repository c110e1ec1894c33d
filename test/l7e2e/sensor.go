// Package l7e2e runs the L7 enrichment end to end: real Suricata reading a
// mirrored copy of a netnstest pod's traffic, its eve-log going to the
// agent's socket, and small real servers (HTTP from netnstest, DNS and TLS
// here) for pods to talk to. The integration test in this directory drives
// the real agent binary with it; hack/demo uses it to show L7 columns.
//
// Everything lives in the node's network namespace: the mirror veth pair is
// created there, so it goes away with the node.
package l7e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/flowlens/flowlens/test/netnstest"
)

// SuricataStartup is roughly how long Suricata 7 takes from start until it
// captures; callers wait for an event rather than sleep this long.
const SuricataStartup = 10 * time.Second

// FindSuricata returns the suricata program's path, or an error telling how
// to install it.
func FindSuricata() (string, error) {
	p, err := exec.LookPath("suricata")
	if err != nil {
		return "", fmt.Errorf("suricata not found in PATH: run hack/install-deps.sh (installs Suricata 7 from bookworm-backports): %w", err)
	}
	return p, nil
}

// SensorConfig describes a Suricata watching one pod.
type SensorConfig struct {
	// Node and Pod: Suricata reads a copy of both directions of the pod's
	// node-side veth, so it sees every conversation of the pod whichever
	// end opted into L7 export.
	Node *netnstest.Node
	Pod  *netnstest.Pod
	// Dir holds suricata.yaml, suricata.log and the pid file.
	Dir string
	// EVESockets are unix stream sockets that eve-log connects to, one
	// eve-log output each (the agent's, and optionally a test's probe).
	EVESockets []string
	// Suricata is the program; empty means FindSuricata.
	Suricata string
}

// Sensor is a running Suricata on a mirror of one pod's veth.
type Sensor struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // read after done
}

// Mirror names: fixed, since they live in the node's own namespace.
const (
	mirrorDev  = "flm0" // tc mirrors to this end
	captureDev = "flm1" // Suricata reads this end
)

// StartSensor mirrors the pod's veth to a veth pair in the node namespace
// and starts Suricata (af-packet, no rules) on it. The caller Closes it;
// the mirror goes away with the node.
func StartSensor(cfg SensorConfig) (*Sensor, error) {
	if cfg.Node == nil || cfg.Pod == nil || cfg.Dir == "" || len(cfg.EVESockets) == 0 {
		return nil, errors.New("l7e2e: SensorConfig needs Node, Pod, Dir and EVESockets")
	}
	if cfg.Suricata == "" {
		p, err := FindSuricata()
		if err != nil {
			return nil, err
		}
		cfg.Suricata = p
	}
	if err := Mirror(cfg.Node, cfg.Pod); err != nil {
		return nil, err
	}
	conf := filepath.Join(cfg.Dir, "suricata.yaml")
	if err := os.WriteFile(conf, []byte(SuricataConfig(cfg.Dir, captureDev, cfg.EVESockets)), 0o644); err != nil {
		return nil, fmt.Errorf("write suricata config: %w", err)
	}
	s := &Sensor{logPath: filepath.Join(cfg.Dir, "suricata.log"), done: make(chan struct{})}
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, fmt.Errorf("create suricata log: %w", err)
	}
	// `ip netns exec` execs Suricata in place, so the pid is Suricata's.
	s.cmd = exec.Command("ip", "netns", "exec", cfg.Node.NetnsName, cfg.Suricata,
		"-c", conf, "--af-packet="+captureDev, "-k", "none", "--runmode", "single",
		"-l", cfg.Dir, "-S", os.DevNull, "--pidfile", filepath.Join(cfg.Dir, "suricata.pid"))
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: a terminal's Ctrl-C reaches the caller, which
		// stops Suricata in order. If the caller dies, Suricata goes too.
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start suricata: %w", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	return s, nil
}

// Mirror copies both directions of pod's node-side veth to a new veth pair
// in the node namespace (clsact, two u32 mirred filters). With one
// direction only, Suricata logs no transaction at all.
func Mirror(node *netnstest.Node, pod *netnstest.Pod) error {
	for _, args := range [][]string{
		{"ip", "link", "add", mirrorDev, "type", "veth", "peer", "name", captureDev},
		{"ip", "link", "set", mirrorDev, "up"},
		{"ip", "link", "set", captureDev, "up"},
		{"tc", "qdisc", "add", "dev", pod.HostVeth, "clsact"},
		{"tc", "filter", "add", "dev", pod.HostVeth, "ingress", "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", mirrorDev},
		{"tc", "filter", "add", "dev", pod.HostVeth, "egress", "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", mirrorDev},
	} {
		if _, err := node.Exec(args[0], args[1:]...); err != nil {
			return fmt.Errorf("mirror %s: %w", pod.HostVeth, err)
		}
	}
	return nil
}

// Done is closed when Suricata has exited.
func (s *Sensor) Done() <-chan struct{} { return s.done }

// ExitError describes how Suricata ended, with the tail of its log.
func (s *Sensor) ExitError() error {
	return fmt.Errorf("suricata exited (%v); its log:\n%s", s.err, s.LogTail(20))
}

// LogTail returns the last lines of Suricata's console log.
func (s *Sensor) LogTail(lines int) string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", s.logPath, err)
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return "    " + strings.Join(all, "\n    ")
}

// Close stops Suricata: SIGTERM, then SIGKILL after 15 s. Safe to call twice.
func (s *Sensor) Close() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return errors.New("suricata did not stop within 15 s of SIGTERM; killed")
	}
	return nil
}

// SuricataConfig is a minimal configuration: no rules, af-packet on iface
// with packets up to 64 KiB, and one eve-log per socket with what the agent reads (http extended for
// method/status, dns, tls extended for the version, flow for app_proto).
func SuricataConfig(dir, iface string, sockets []string) string {
	var outputs strings.Builder
	for _, sock := range sockets {
		fmt.Fprintf(&outputs, `  - eve-log:
      enabled: yes
      filetype: unix_stream
      filename: %s
      types:
        # extended adds method, protocol, status and length: without it
        # Suricata logs only hostname, url, user agent and content type.
        - http:
            extended: yes
        - dns
        - tls:
            extended: yes
        - flow
`, sock)
	}
	return fmt.Sprintf(`%%YAML 1.1
---
vars:
  address-groups:
    HOME_NET: "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16]"
    EXTERNAL_NET: "!$HOME_NET"
  port-groups:
    HTTP_PORTS: "80,8080"
default-log-dir: %s
# The mirror copies GSO packets as the pods' veths carry them, larger than
# the MTU (a ClientHello with a post-quantum key share, over 1.5 kB, in one
# packet). With the default (1514, the capture snaplen) they are truncated
# and Suricata recognises no TLS at all on such connections.
default-packet-size: 65535
outputs:
%sapp-layer:
  protocols:
    http:
      enabled: yes
    tls:
      enabled: yes
      detection-ports:
        dp: 443
    dns:
      tcp:
        enabled: yes
        detection-ports:
          dp: 53
      udp:
        enabled: yes
        detection-ports:
          dp: 53
af-packet:
  - interface: %s
    cluster-id: 98
    cluster-type: cluster_flow
logging:
  outputs:
    - console:
        enabled: yes
`, dir, outputs.String(), iface)
}
