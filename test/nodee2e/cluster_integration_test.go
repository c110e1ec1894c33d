//go:build integration

package nodee2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The node's addresses. The whole node lives in its own network namespace,
// joined to the host's by one veth pair: its iptables rules (kube-proxy,
// the CNI's masquerade), its conntrack table, its bridge and the flowlens
// agent's capture veth never touch the host's, and deleting the namespace
// removes them all even after a crash.
const (
	hostAddr    = "10.231.255.1"
	nodeAddr    = "10.231.255.2"
	linkPrefix  = 30
	podCIDR     = "10.231.0.0/24"
	serviceCIDR = "10.231.128.0/20"
	// The first address of serviceCIDR: the kubernetes Service.
	apiServiceIP = "10.231.128.1"
	nodeName     = "flowlens-e2e-node"
	// kubelet's cgroup root in every cgroup v1 hierarchy: pods' cgroups
	// stay under it, so the teardown knows what to remove.
	cgroupRoot = "flowlens-e2e"
	kubeVer    = "v1.31.0"
)

// The global (not per network namespace) sysctls the kubelet writes at
// start; restored on teardown.
var globalSysctls = []string{
	"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// bins are the programs the node needs, resolved once.
type bins struct {
	kubeDir                       string
	etcd, containerd, shim, runc  string
	ctr, nsenter, helm, iptables  string
	cniDir                        string
	apiserver, cm, sched, kubelet string
	proxy, kubectl                string
}

// findBins names every missing component at once: under `make test` a
// missing one is a failure, never a skip.
func findBins() (bins, error) {
	var b bins
	var missing []string
	look := func(name, hint string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, name+" ("+hint+")")
		}
		return p
	}
	b.kubeDir = os.Getenv("FLOWLENS_KUBE_DIR")
	if b.kubeDir == "" {
		b.kubeDir = "/var/cache/flowlens/kubernetes-" + kubeVer
	}
	kube := func(name string) string {
		p := filepath.Join(b.kubeDir, name)
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p+" (hack/build-kube.sh, or hack/install-deps.sh node)")
		}
		return p
	}
	b.apiserver, b.cm, b.sched = kube("kube-apiserver"), kube("kube-controller-manager"), kube("kube-scheduler")
	b.kubelet, b.proxy, b.kubectl = kube("kubelet"), kube("kube-proxy"), kube("kubectl")
	const deps = "hack/install-deps.sh node"
	b.etcd = look("etcd", deps)
	b.containerd = look("containerd", deps)
	b.shim = look("containerd-shim-runc-v2", deps)
	b.runc = look("runc", deps)
	b.ctr = look("ctr", deps)
	b.nsenter = look("nsenter", "util-linux")
	b.iptables = look("iptables", deps)
	b.helm = look("helm", "hack/install-deps.sh helm")
	look("conntrack", "hack/install-deps.sh base")
	look("ip", "hack/install-deps.sh base")
	b.cniDir = "/usr/lib/cni"
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(b.cniDir, p)); err != nil {
			missing = append(missing, filepath.Join(b.cniDir, p)+" ("+deps+")")
		}
	}
	if len(missing) > 0 {
		return b, fmt.Errorf("missing components: %s", strings.Join(missing, "; "))
	}
	return b, nil
}

// Node is a running single-node cluster.
type Node struct {
	t          testing.TB
	bins       bins
	Dir        string
	Netns      string // name under /run/netns
	Kubeconfig string // admin (system:masters)
	ctrAddr    string // containerd's socket
	started    time.Time

	mu    sync.Mutex
	procs map[string]*exec.Cmd
	done  map[string]chan struct{}
}

// StartNode brings the node up and registers its teardown with t.Cleanup
// (also on failure): workloads killed, processes stopped, mounts, cgroups,
// pod network namespaces and the node's namespace removed, sysctls restored.
func StartNode(t *testing.T, ctx context.Context, pauseImage string) *Node {
	t.Helper()
	b, err := findBins()
	if err != nil {
		t.Fatal(err)
	}
	cleanStale(t)
	// Not t.TempDir: its removal must come after the unmounts below, and
	// kubelet's and containerd's socket paths must stay short.
	dir, err := os.MkdirTemp("", "flne2e-")
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{t: t, bins: b, Dir: dir, Netns: "flne2e-" + strconv.Itoa(os.Getpid()), started: time.Now(),
		procs: map[string]*exec.Cmd{}, done: map[string]chan struct{}{}}
	n.ctrAddr = filepath.Join(dir, "containerd", "containerd.sock")

	saved := map[string]string{}
	for _, s := range globalSysctls {
		if v, err := os.ReadFile("/proc/sys/" + s); err == nil {
			saved[s] = strings.TrimSpace(string(v))
		}
	}
	cniBefore := netnsNames()
	t.Cleanup(func() {
		n.teardown(cniBefore)
		for s, v := range saved {
			if err := os.WriteFile("/proc/sys/"+s, []byte(v), 0o644); err != nil {
				t.Errorf("restore sysctl %s=%s: %v", s, v, err)
			}
		}
		if os.Getenv("FLOWLENS_E2E_KEEP") == "" {
			if err := os.RemoveAll(dir); err != nil {
				t.Errorf("remove %s: %v", dir, err)
			}
		} else {
			t.Logf("kept %s (FLOWLENS_E2E_KEEP)", dir)
		}
	})

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(n.network())
	certs, err := n.pki()
	must(err)

	// etcd and the control plane, on the node's addresses (fixed ports:
	// the namespace is ours alone).
	must(n.start(ctx, "etcd", b.etcd, "--name=e2e", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=e2e=http://127.0.0.1:2380", "--log-level=warn"))
	must(n.start(ctx, "kube-apiserver", b.apiserver,
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", "--advertise-address="+nodeAddr, "--secure-port=6443",
		"--tls-cert-file="+certs.apiCert, "--tls-private-key-file="+certs.apiKey,
		"--client-ca-file="+certs.ca,
		"--token-auth-file="+certs.tokens,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+certs.saKey,
		"--service-account-signing-key-file="+certs.saKey,
		"--service-cluster-ip-range="+serviceCIDR,
		"--allow-privileged=true",
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-priority-and-fairness=false",
		"--profiling=false"))
	n.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	must(writeKubeconfig(n.Kubeconfig, "https://"+nodeAddr+":6443", certs.ca, certs.token))
	must(n.waitFor(ctx, "kube-apiserver ready", 60*time.Second, func() error {
		_, err := n.Kubectl(ctx, "get", "--raw", "/readyz")
		return err
	}))
	must(n.start(ctx, "kube-controller-manager", b.cm,
		"--kubeconfig="+n.Kubeconfig, "--authentication-kubeconfig="+n.Kubeconfig, "--authorization-kubeconfig="+n.Kubeconfig,
		"--service-account-private-key-file="+certs.saKey, "--root-ca-file="+certs.ca,
		"--use-service-account-credentials=false", "--leader-elect=false",
		"--bind-address=127.0.0.1", "--cluster-cidr="+podCIDR, "--service-cluster-ip-range="+serviceCIDR,
		// Pods stop at once when deleted: the test deletes and waits.
		"--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route"))
	must(n.start(ctx, "kube-scheduler", b.sched,
		"--kubeconfig="+n.Kubeconfig, "--authentication-kubeconfig="+n.Kubeconfig, "--authorization-kubeconfig="+n.Kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1"))

	// containerd with its own root, state and socket.
	must(n.containerd(ctx, pauseImage))

	// CNI: the bridge plugin with host-local IPAM (state under Dir).
	must(writeFile(filepath.Join(dir, "cni", "net.d", "10-flowlens-e2e.conflist"), fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "flowlens-e2e",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}],
             "dataDir": %q}
  }]
}`, podCIDR, filepath.Join(dir, "cni", "ipam"))))
	return n
}

// Up starts the kubelet and kube-proxy (after the images are loaded, so
// no pod starts before its image is there) and waits for the node to be
// Ready.
func (n *Node) Up(ctx context.Context) error {
	dir := n.Dir
	for _, c := range cgroupHierarchies() {
		if err := os.MkdirAll(filepath.Join(c, cgroupRoot), 0o755); err != nil {
			return fmt.Errorf("cgroup root: %w", err)
		}
	}
	kcfg := filepath.Join(dir, "kubelet.yaml")
	if err := writeFile(kcfg, fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /%s
containerRuntimeEndpoint: unix://%s
# The VM drops CAP_SYS_RESOURCE: nothing may lower oom_score_adj.
oomScoreAdj: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
failSwapOn: false
podLogsDir: %s
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%}
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 4s
`, cgroupRoot, n.ctrAddr, filepath.Join(dir, "pod-logs"))); err != nil {
		return err
	}
	if err := n.start(ctx, "kubelet", n.bins.kubelet, "--config="+kcfg, "--kubeconfig="+n.Kubeconfig,
		"--root-dir="+filepath.Join(dir, "kubelet"), "--node-ip="+nodeAddr, "--hostname-override="+nodeName, "--v=1"); err != nil {
		return err
	}
	pcfg := filepath.Join(dir, "kube-proxy.yaml")
	if err := writeFile(pcfg, fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %s}
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
oomScoreAdj: 0
# Leave the (global) conntrack table size and timeouts alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
`, n.Kubeconfig, podCIDR, nodeName)); err != nil {
		return err
	}
	if err := n.start(ctx, "kube-proxy", n.bins.proxy, "--config="+pcfg); err != nil {
		return err
	}
	return n.waitFor(ctx, "node Ready", 90*time.Second, func() error {
		out, err := n.Kubectl(ctx, "get", "node", nodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "True" {
			return fmt.Errorf("Ready=%q", out)
		}
		return nil
	})
}

// network creates the node's namespace and the veth pair to it, with a
// route from the host to the pod and Service ranges (the test reaches
// ClickHouse through its Service).
func (n *Node) network() error {
	host := "fle2e" + strconv.Itoa(os.Getpid()%100000)
	steps := [][]string{
		{"ip", "netns", "add", n.Netns},
		{"ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", n.Netns},
		{"ip", "addr", "add", hostAddr + "/" + strconv.Itoa(linkPrefix), "dev", host},
		{"ip", "link", "set", host, "up"},
		{"ip", "-n", n.Netns, "link", "set", "lo", "up"},
		{"ip", "-n", n.Netns, "addr", "add", nodeAddr + "/" + strconv.Itoa(linkPrefix), "dev", "eth0"},
		{"ip", "-n", n.Netns, "link", "set", "eth0", "up"},
		{"ip", "-n", n.Netns, "route", "add", "default", "via", hostAddr},
		{"ip", "route", "add", podCIDR, "via", nodeAddr},
		{"ip", "route", "add", serviceCIDR, "via", nodeAddr},
		// Per-namespace: forwarding between the bridge and eth0, and
		// Service NAT for pod-to-pod traffic over the bridge.
		{"ip", "netns", "exec", n.Netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "netns", "exec", n.Netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"},
		// A closed connection's last record leaves the agent when
		// conntrack destroys the entry: after TIME_WAIT (120 s by
		// default) for TCP, 30 s for a UDP exchange. Short timeouts
		// keep the test short; nothing else depends on them.
		{"ip", "netns", "exec", n.Netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=3"},
		{"ip", "netns", "exec", n.Netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=5"},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

type pki struct {
	ca, apiCert, apiKey, saKey, tokens, token string
}

// pki writes a CA, the apiserver's serving certificate (valid for the
// node address and the kubernetes Service, which in-cluster clients such
// as the flowlens agent dial), the service account key and a token file.
// Every component authenticates with the admin token: RBAC of the
// components is not what this test checks.
func (n *Node) pki() (pki, error) {
	dir := filepath.Join(n.Dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return pki{}, err
	}
	p := pki{ca: filepath.Join(dir, "ca.crt"), apiCert: filepath.Join(dir, "apiserver.crt"),
		apiKey: filepath.Join(dir, "apiserver.key"), saKey: filepath.Join(dir, "sa.key"), tokens: filepath.Join(dir, "tokens.csv")}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flowlens-e2e-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	apiKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	apiTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP(nodeAddr), net.ParseIP(apiServiceIP), net.ParseIP("127.0.0.1")},
		DNSNames:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}}
	apiDER, err := x509.CreateCertificate(rand.Reader, apiTmpl, caCert, &apiKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	apiKeyDER, err := x509.MarshalECPrivateKey(apiKey)
	if err != nil {
		return p, err
	}
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return p, err
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return p, err
	}
	p.token = hex.EncodeToString(tok)
	files := map[string][]byte{
		p.ca:      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		p.apiCert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: apiDER}),
		p.apiKey:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: apiKeyDER}),
		p.saKey:   pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(sa)}),
		p.tokens:  []byte(p.token + `,admin,admin-uid,"system:masters"` + "\n"),
	}
	for f, b := range files {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			return p, err
		}
	}
	return p, nil
}

func writeKubeconfig(path, server, caFile, token string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	return writeFile(path, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: %q, certificate-authority-data: %s}
users:
- name: admin
  user: {token: %s}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, server, b64(ca), token))
}

func (n *Node) containerd(ctx context.Context, pauseImage string) error {
	root := filepath.Join(n.Dir, "containerd")
	cfg := filepath.Join(root, "config.toml")
	if err := writeFile(cfg, fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # This VM drops CAP_SYS_RESOURCE: runc must not lower oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, filepath.Join(root, "root"), filepath.Join(root, "state"), n.ctrAddr, pauseImage,
		n.bins.cniDir, filepath.Join(n.Dir, "cni", "net.d"))); err != nil {
		return err
	}
	if err := n.start(ctx, "containerd", n.bins.containerd, "--config="+cfg); err != nil {
		return err
	}
	return n.waitFor(ctx, "containerd", 30*time.Second, func() error {
		_, err := n.Ctr(ctx, "version")
		return err
	})
}

// Ctr runs ctr against the node's containerd, in its k8s.io namespace.
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	return run(ctx, n.bins.ctr, append([]string{"--address", n.ctrAddr, "-n", "k8s.io"}, args...)...)
}

// Kubectl runs kubectl as admin.
func (n *Node) Kubectl(ctx context.Context, args ...string) (string, error) {
	return run(ctx, n.bins.kubectl, append([]string{"--kubeconfig", n.Kubeconfig}, args...)...)
}

// Helm runs helm as admin.
func (n *Node) Helm(ctx context.Context, args ...string) (string, error) {
	return run(ctx, n.bins.helm, append([]string{"--kubeconfig", n.Kubeconfig}, args...)...)
}

// InNetns runs a command in the node's network namespace.
func (n *Node) InNetns(ctx context.Context, args ...string) (string, error) {
	return run(ctx, "ip", append([]string{"netns", "exec", n.Netns}, args...)...)
}

func run(ctx context.Context, bin string, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// start runs a long-lived process in the node's network namespace (only
// the network namespace: mounts are shared, so the kubelet's volume mounts
// are what containerd sees), its output in Dir/logs/<name>.log.
func (n *Node) start(ctx context.Context, name, bin string, args ...string) error {
	logDir := filepath.Join(n.Dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(logDir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(n.bins.nsenter, append([]string{"--net=/run/netns/" + n.Netns, "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: the teardown signals the process, not the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	n.mu.Lock()
	n.procs[name], n.done[name] = cmd, done
	n.mu.Unlock()
	return nil
}

// exited reports a process that stopped (every one is meant to run until
// the teardown), with the end of its log.
func (n *Node) exited() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, d := range n.done {
		select {
		case <-d:
			return fmt.Errorf("%s exited: %s", name, n.LogTail(name, 1500))
		default:
		}
	}
	return nil
}

// LogTail is the end of a component's log.
func (n *Node) LogTail(name string, max int) string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "logs", name+".log"))
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

func (n *Node) waitFor(ctx context.Context, what string, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = f(); last == nil {
			return nil
		}
		if err := n.exited(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %v: %v", what, timeout, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (n *Node) stop(name string) {
	n.mu.Lock()
	cmd, done := n.procs[name], n.done[name]
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// teardown undoes StartNode whatever state it reached. Errors are
// reported, not fatal: every step runs.
func (n *Node) teardown(netnsBefore map[string]bool) {
	t := n.t
	if d, err := time.ParseDuration(os.Getenv("FLOWLENS_E2E_HOLD")); err == nil && t.Failed() {
		// Debugging: the cluster stays up (kubeconfig in Dir) for a while.
		t.Logf("holding the failed cluster for %v: KUBECONFIG=%s, ip netns exec %s ...", d, n.Kubeconfig, n.Netns)
		time.Sleep(d)
	}
	if t.Failed() {
		for _, c := range []string{"kubelet", "containerd", "kube-proxy", "kube-apiserver"} {
			t.Logf("--- %s log tail ---\n%s", c, n.LogTail(c, 3000))
		}
	}
	n.stop("kube-proxy")
	n.stop("kubelet")
	// Every container process (they live under kubelet's cgroup root),
	// then the shims of our containerd.
	killCgroupProcs()
	n.killShims()
	for _, c := range []string{"containerd", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
		n.stop(c)
	}
	// Mounts under Dir (overlay roots, volumes, the shim's), deepest first.
	for _, m := range mountsUnder(n.Dir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", m, err)
		}
	}
	// The pods' network namespaces containerd created.
	for name := range netnsNames() {
		if netnsBefore[name] || !strings.HasPrefix(name, "cni-") {
			continue
		}
		p := "/run/netns/" + name
		_ = syscall.Unmount(p, syscall.MNT_DETACH)
		if err := os.Remove(p); err != nil {
			t.Errorf("remove pod netns %s: %v", p, err)
		}
	}
	if err := removeCgroups(); err != nil {
		t.Errorf("cgroups: %v", err)
	}
	// The node's namespace takes its veth end, bridge, iptables rules and
	// conntrack table with it; the host end of the veth and its routes go
	// with the pair.
	if out, err := exec.Command("ip", "netns", "del", n.Netns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
		t.Errorf("ip netns del %s: %v: %s", n.Netns, err, out)
	}
}

func cgroupHierarchies() []string {
	var out []string
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// ... mount point is field 4; the fs type follows the " - ".
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && (fields[i+1] == "cgroup" || fields[i+1] == "cgroup2") {
				out = append(out, fields[4])
			}
		}
	}
	return out
}

func cgroupDirs() []string {
	var dirs []string
	for _, h := range cgroupHierarchies() {
		_ = filepath.WalkDir(filepath.Join(h, cgroupRoot), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	// Deepest first.
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	return dirs
}

func killCgroupProcs() {
	for i := 0; i < 20; i++ {
		any := false
		for _, d := range cgroupDirs() {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
					any = true
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if !any {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func removeCgroups() error {
	var errs []error
	for _, d := range cgroupDirs() {
		var err error
		for i := 0; i < 20; i++ {
			if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
				err = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// killShims kills the containerd shims started for our containerd (they
// outlive it by design), found by the socket address on their command line.
func (n *Node) killShims() {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		cmd := string(b)
		if strings.Contains(cmd, "containerd-shim") && strings.Contains(cmd, n.ctrAddr) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			out = append(out, fields[4])
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func netnsNames() map[string]bool {
	m := map[string]bool{}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m
}

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o600)
}

// cleanStale removes what a run killed before its teardown (SIGKILL, a
// crashed machine) left: containers under the cgroup root and their
// shims, mounts under its directory, the node's namespace (with its veth
// and the host's routes through it). Only a namespace whose test process
// is gone counts as stale.
func cleanStale(t *testing.T) {
	stale := false
	var since time.Time // the oldest stale run's start
	for name := range netnsNames() {
		pid, ok := strings.CutPrefix(name, "flne2e-")
		if !ok {
			continue
		}
		if cmd, err := os.ReadFile("/proc/" + pid + "/cmdline"); err == nil && strings.Contains(string(cmd), "nodee2e.test") {
			t.Fatalf("another node e2e (pid %s) is running: one at a time (they share addresses)", pid)
		}
		stale = true
		if fi, err := os.Stat("/run/netns/" + name); err == nil && (since.IsZero() || fi.ModTime().Before(since)) {
			since = fi.ModTime()
		}
		t.Logf("removing the leftovers of a killed run (netns %s)", name)
		killCgroupProcs()
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if p, perr := strconv.Atoi(e.Name()); perr == nil && err == nil &&
				strings.Contains(string(b), "containerd-shim") && strings.Contains(string(b), os.TempDir()+"/flne2e-") {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Logf("ip netns del %s: %v: %s", name, err, out)
		}
	}
	if !stale {
		return
	}
	// The pods' namespaces: containerd names them cni-*, and no other
	// containerd runs on a test machine; those made since the stale run
	// started are its own.
	for name := range netnsNames() {
		p := "/run/netns/" + name
		if fi, err := os.Stat(p); err == nil && strings.HasPrefix(name, "cni-") && !since.IsZero() && !fi.ModTime().Before(since) {
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
			_ = os.Remove(p)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "flne2e-*"))
	for _, d := range dirs {
		for _, m := range mountsUnder(d) {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
		_ = os.RemoveAll(d)
	}
	if err := removeCgroups(); err != nil {
		t.Logf("stale cgroups: %v", err)
	}
}
