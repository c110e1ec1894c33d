//go:build integration

// Package nodee2e installs flowlens with its Helm chart on a real
// single-node Kubernetes cluster (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy
// in iptables mode, the bridge CNI) and checks what lands in the chart's
// ClickHouse for real pods talking through real Services: pods,
// namespaces, workloads, the Service, bytes both ways against what was
// sent, and L7 (HTTP, DNS, TLS) for every value of the
// visibility.antrea.io/l7-export annotation on either end; an annotation
// flipped live; the agent killed and restarted by its DaemonSet; and
// nothing left behind by `helm uninstall`.
//
// It needs root, the Kubernetes binaries (hack/build-kube.sh), containerd,
// runc and the CNI plugins (hack/install-deps.sh node), helm, and the
// images of `make images e2e-images` in bin/images; a missing one fails
// the test.
package nodee2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	release   = "flowlens"
	flNS      = "flowlens"
	srvNS     = "e2e-srv"
	cliNS     = "e2e-cli"
	l7Key     = "visibility.antrea.io/l7-export"
	imageTag  = "e2e"
	podBinary = "/flowlens-e2e-pod"
	// The sized TCP connection's application bytes each way.
	sizedSend  = 300_000
	sizedReply = 1_234_567
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..")
}

// images are the archives `make images e2e-images` writes, by repository.
var images = []string{"flowlens-agent", "flowlens-aggregator", "flowlens-suricata", "flowlens-clickhouse", "flowlens-e2e", "flowlens-e2e-pause"}

// loadImages imports every archive into the node's containerd and tags it
// imageTag, whatever tag the build gave it (git describe changes with
// every commit; one tag is what the chart takes).
func loadImages(t *testing.T, ctx context.Context, n *Node, dir string) {
	t.Helper()
	for _, repo := range images {
		p := filepath.Join(dir, repo+".tar")
		tag, err := repoTag(p)
		if err != nil {
			t.Fatalf("image %s (run `make images e2e-images`): %v", repo, err)
		}
		if _, err := n.Ctr(ctx, "images", "import", p); err != nil {
			t.Fatalf("import %s: %v", p, err)
		}
		if _, err := n.Ctr(ctx, "images", "tag", "--force", "docker.io/library/"+tag, "docker.io/library/"+repo+":"+imageTag); err != nil {
			t.Fatalf("tag %s: %v", tag, err)
		}
		t.Logf("image %s (%s)", repo, tag)
	}
}

func repoTag(archive string) (string, error) {
	f, err := os.Open(archive)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			return "", fmt.Errorf("no manifest.json in %s: %w", archive, err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return "", err
		}
		if len(m) != 1 || len(m[0].RepoTags) != 1 {
			return "", fmt.Errorf("%s: want one image with one tag, got %+v", archive, m)
		}
		return m[0].RepoTags[0], nil
	}
}

func (n *Node) apply(t *testing.T, ctx context.Context, yaml string) {
	t.Helper()
	f := filepath.Join(n.Dir, fmt.Sprintf("apply-%d.yaml", time.Now().UnixNano()))
	if err := writeFile(f, yaml); err != nil {
		t.Fatal(err)
	}
	if out, err := n.Kubectl(ctx, "apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// The chart's values for this node: the images just loaded (never
// pulled), L7 on, the chart's own ClickHouse on a hostPath volume, and
// short timers so rows arrive within seconds.
const valuesYAML = `image:
  tag: e2e
  pullPolicy: Never
l7:
  enabled: true
clickhouse:
  enabled: true
  storage:
    size: 1Gi
    storageClassName: flowlens-e2e
aggregator:
  config:
    correlation:
      correlationWait: 2s
agent:
  config:
    connections:
      activeTimeout: 3s
`

func storageYAML(dir string) string {
	return fmt.Sprintf(`apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: flowlens-e2e}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: flowlens-e2e-clickhouse}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: flowlens-e2e
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: %q, type: DirectoryOrCreate}
`, dir)
}

// workload is one Deployment (or the StatefulSet "tcp") of the test.
type workload struct {
	ns, name, l7 string
	server       bool
}

var workloads = []workload{
	{ns: srvNS, name: "srv-ingress", l7: "ingress", server: true},
	{ns: srvNS, name: "srv-egress", l7: "egress", server: true},
	{ns: srvNS, name: "srv-both", l7: "both", server: true},
	{ns: srvNS, name: "srv-none", server: true},
	{ns: cliNS, name: "cli-ingress", l7: "ingress"},
	{ns: cliNS, name: "cli-egress", l7: "egress"},
	{ns: cliNS, name: "cli-both", l7: "both"},
	{ns: cliNS, name: "cli-none"},
}

func workloadsYAML() string {
	var b strings.Builder
	for _, ns := range []string{srvNS, cliNS} {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n---\n", ns)
	}
	pod := func(name, l7 string, args string) string {
		ann := ""
		if l7 != "" {
			ann = fmt.Sprintf("\n      annotations: {%s: %s}", l7Key, l7)
		}
		return fmt.Sprintf(`    metadata:
      labels: {app: %s}%s
    spec:
      terminationGracePeriodSeconds: 1
      enableServiceLinks: false
      containers:
      - name: main
        image: flowlens-e2e:%s
        imagePullPolicy: Never
        args: [%s]`, name, ann, imageTag, args)
	}
	for _, w := range workloads {
		args := "pause"
		if w.server {
			args = "serve"
		}
		fmt.Fprintf(&b, `apiVersion: apps/v1
kind: Deployment
metadata: {name: %s, namespace: %s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %s}}
  template:
%s
---
`, w.name, w.ns, w.name, pod(w.name, w.l7, args))
		if w.server {
			fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec:
  selector: {app: %s}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: https, port: 443, targetPort: 8443, protocol: TCP}
  - {name: dns, port: 53, targetPort: 53, protocol: UDP}
---
`, w.name, w.ns, w.name)
		}
	}
	// The plain TCP server: a StatefulSet, so one more workload kind.
	fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: tcp, namespace: %s}
spec:
  selector: {app: tcp}
  ports:
  - {name: sized, port: 9000, targetPort: 9000, protocol: TCP}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: tcp, namespace: %s}
spec:
  serviceName: tcp
  replicas: 1
  selector: {matchLabels: {app: tcp}}
  template:
%s
`, srvNS, srvNS, pod("tcp", "", "serve"))
	return b.String()
}

type podInfo struct {
	ns, name, ip, app string
	hostVeth          int // ifindex of its host-side veth in the node's namespace
}

func (n *Node) pods(t *testing.T, ctx context.Context, ns string) map[string]*podInfo {
	t.Helper()
	out, err := n.Kubectl(ctx, "get", "pods", "-n", ns, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var l struct {
		Items []struct {
			Metadata struct {
				Name              string
				Labels            map[string]string
				DeletionTimestamp *string
			}
			Status struct{ PodIP string }
		}
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatal(err)
	}
	m := map[string]*podInfo{}
	for _, p := range l.Items {
		if p.Metadata.DeletionTimestamp != nil {
			continue
		}
		m[p.Metadata.Labels["app"]] = &podInfo{ns: ns, name: p.Metadata.Name, ip: p.Status.PodIP, app: p.Metadata.Labels["app"]}
	}
	return m
}

func (n *Node) serviceIP(t *testing.T, ctx context.Context, ns, name string) string {
	t.Helper()
	out, err := n.Kubectl(ctx, "get", "service", "-n", ns, name, "-o", "jsonpath={.spec.clusterIP}")
	if err != nil || net.ParseIP(strings.TrimSpace(out)) == nil {
		t.Fatalf("service %s/%s: %q %v", ns, name, out, err)
	}
	return strings.TrimSpace(out)
}

// clientResult mirrors testpod's Result.
type clientResult struct {
	Case                                      string
	HTTP, TLS, DNS                            string
	SizedSent, SizedReceived                  int64
	HTTPLocal, TLSLocal, DNSLocal, SizedLocal string
}

func (n *Node) exec(t *testing.T, ctx context.Context, p *podInfo, args ...string) string {
	t.Helper()
	out, err := n.Kubectl(ctx, append([]string{"exec", "-n", p.ns, p.name, "--", podBinary}, args...)...)
	if err != nil {
		t.Fatalf("exec in %s/%s: %v", p.ns, p.name, err)
	}
	return out
}

func (n *Node) client(t *testing.T, ctx context.Context, p *podInfo, args ...string) clientResult {
	t.Helper()
	out := n.exec(t, ctx, p, append([]string{"client"}, args...)...)
	var r clientResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	return r
}

// --- ClickHouse, over its HTTP interface through the chart's Service ---

type clickhouse struct {
	url string
	// reap runs before every query; see Node.reapExpired.
	reap func(context.Context)
}

func (c clickhouse) query(ctx context.Context, q string) ([]map[string]any, error) {
	if c.reap != nil {
		c.reap(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/?"+url.Values{"output_format_json_quote_64bit_integers": {"0"}}.Encode(),
		strings.NewReader(q+" FORMAT JSONEachRow"))
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("clickhouse %s: %s", resp.Status, body)
	}
	var rows []map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	for dec.More() {
		var r map[string]any
		if err := dec.Decode(&r); err != nil {
			return nil, err
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func str(r map[string]any, k string) string {
	switch v := r[k].(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	}
	return fmt.Sprint(r[k])
}

func num(r map[string]any, k string) uint64 {
	v, _ := strconv.ParseUint(str(r, k), 10, 64)
	return v
}

func sqlQuote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}

// connRows are the rows of one connection, found by its client end (a
// TCP and a UDP connection may share a port number).
func (c clickhouse) connRows(ctx context.Context, src *podInfo, proto int, local string) ([]map[string]any, error) {
	host, p, err := net.SplitHostPort(local)
	if err != nil {
		return nil, err
	}
	return c.query(ctx, fmt.Sprintf(`SELECT * FROM default.flows WHERE sourcePodName = %s AND sourcePodNamespace = %s
		AND sourceIP = %s AND sourceTransportPort = %s AND protocolIdentifier = %d ORDER BY flowEndSeconds`,
		sqlQuote(src.name), sqlQuote(src.ns), sqlQuote(host), p, proto))
}

const (
	tcp = 6
	udp = 17
)

// protoOf is the protocol of each kind of connection a client makes.
var protoOf = map[string]int{"http": tcp, "tls": tcp, "dns": udp, "sized": tcp}

func waitUntil(t *testing.T, ctx context.Context, what string, timeout time.Duration, f func() error) {
	t.Helper()
	began := time.Now()
	deadline := began.Add(timeout)
	for {
		err := f()
		if err == nil {
			if d := time.Since(began); d > 3*time.Second {
				t.Logf("%s: %v", what, d.Round(100*time.Millisecond))
			}
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: not after %v: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// --- tc and TCX inspection in the node's namespace ---

// hookState is what is attached to one interface.
type hookState struct {
	filters      int // tc filters of any kind, both clsact hooks
	mirrorIn     int // u32+mirred filters or fl_mirror TCX programs, ingress
	mirrorOut    int // the same, egress
	tcxPrograms  int // TCX programs of any name
	mirrorTarget string
}

func (n *Node) hooks(t *testing.T) map[string]hookState {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromName(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // a thread left in the wrong namespace must not be reused
		}
	}()
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	out := map[string]hookState{}
	for _, l := range links {
		var s hookState
		for dir, parent := range map[int]uint32{0: netlink.HANDLE_MIN_INGRESS, 1: netlink.HANDLE_MIN_EGRESS} {
			fs, err := h.FilterList(l, parent)
			if err != nil {
				continue // no clsact qdisc
			}
			s.filters += len(fs)
			for _, f := range fs {
				u, ok := f.(*netlink.U32)
				if !ok {
					continue
				}
				for _, a := range u.Actions {
					if m, ok := a.(*netlink.MirredAction); ok {
						s.mirrorTarget = names[m.Ifindex]
						if dir == 0 {
							s.mirrorIn++
						} else {
							s.mirrorOut++
						}
					}
				}
			}
		}
		for dir, at := range map[int]ebpf.AttachType{0: ebpf.AttachTCXIngress, 1: ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
			if err != nil {
				continue
			}
			for _, p := range res.Programs {
				s.tcxPrograms++
				prog, err := ebpf.NewProgramFromID(p.ID)
				if err != nil {
					continue
				}
				info, err := prog.Info()
				prog.Close()
				if err == nil && info.Name == "fl_mirror" {
					if dir == 0 {
						s.mirrorIn++
					} else {
						s.mirrorOut++
					}
				}
			}
		}
		out[l.Attrs().Name] = s
	}
	return out
}

func (n *Node) vethName(t *testing.T, ifindex int) string {
	t.Helper()
	out, err := n.InNetns(context.Background(), "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.TrimSuffix(f[0], ":") == strconv.Itoa(ifindex) {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			return name
		}
	}
	t.Fatalf("no link %d in the node's namespace:\n%s", ifindex, out)
	return ""
}

// mirrorsConverged checks that every opted-in pod's veth is mirrored
// exactly once in each direction and every other pod's not at all.
func (n *Node) mirrorsConverged(t *testing.T, pods []*podInfo, optedIn func(*podInfo) bool) error {
	hs := n.hooks(t)
	if _, ok := hs["flc0"]; !ok {
		return fmt.Errorf("no capture veth flc0 in the node's namespace")
	}
	var bad []string
	for _, p := range pods {
		name := n.vethName(t, p.hostVeth)
		s := hs[name]
		want := 0
		if optedIn(p) {
			want = 1
		}
		if s.mirrorIn != want || s.mirrorOut != want {
			bad = append(bad, fmt.Sprintf("%s (%s): %d ingress, %d egress mirrors, want %d each", p.name, name, s.mirrorIn, s.mirrorOut, want))
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("mirrors: %s", strings.Join(bad, "; "))
	}
	return nil
}

// --- the test ---

func TestNodeE2E(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces, containerd, kubelet)")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	root := repoRoot(t)
	imgDir := os.Getenv("FLOWLENS_IMAGES_DIR")
	if imgDir == "" {
		imgDir = filepath.Join(root, "bin", "images")
	}
	for _, repo := range images {
		if _, err := os.Stat(filepath.Join(imgDir, repo+".tar")); err != nil {
			t.Fatalf("image archive missing (run `make images e2e-images`): %v", err)
		}
	}

	n := StartNode(t, ctx, "docker.io/library/flowlens-e2e-pause:"+imageTag)
	loadImages(t, ctx, n, imgDir)
	if err := n.Up(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("node Ready after %v", time.Since(start).Round(time.Second))

	// --- helm install ---
	n.apply(t, ctx, storageYAML(filepath.Join(n.Dir, "clickhouse-data")))
	values := filepath.Join(n.Dir, "values.yaml")
	if err := writeFile(values, valuesYAML); err != nil {
		t.Fatal(err)
	}
	installed := true
	t.Cleanup(func() {
		if installed && t.Failed() {
			for _, c := range []string{"agent", "suricata"} {
				out, _ := n.Kubectl(context.Background(), "logs", "-n", flNS, "-l", "app.kubernetes.io/component=agent", "-c", c, "--tail=40")
				t.Logf("--- %s logs ---\n%s", c, out)
			}
			out, _ := n.Kubectl(context.Background(), "logs", "-n", flNS, "-l", "app.kubernetes.io/component=aggregator", "--tail=40")
			t.Logf("--- aggregator logs ---\n%s", out)
			out, _ = n.Kubectl(context.Background(), "get", "pods", "-A", "-o", "wide")
			t.Logf("--- pods ---\n%s", out)
		}
	})
	if out, err := n.Helm(ctx, "install", release, filepath.Join(root, "build", "charts", "flowlens"),
		"--namespace", flNS, "--create-namespace", "-f", values, "--wait", "--timeout", "4m"); err != nil {
		out2, _ := n.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		out3, _ := n.Kubectl(ctx, "get", "events", "-A", "--sort-by=.lastTimestamp")
		t.Fatalf("helm install: %v\n%s\n%s\n%s", err, out, out2, out3)
	}
	// helm --wait does not wait for a DaemonSet's pods to be Ready.
	waitAgentReady(t, ctx, n, -1)
	t.Logf("helm install done, agent ready after %v", time.Since(start).Round(time.Second))
	ch := clickhouse{url: "http://" + n.serviceIP(t, ctx, flNS, release+"-clickhouse") + ":8123", reap: n.reapExpired}

	// --- the workloads ---
	n.apply(t, ctx, workloadsYAML())
	for _, ns := range []string{srvNS, cliNS} {
		if out, err := n.Kubectl(ctx, "wait", "-n", ns, "--for=condition=Available", "deployment", "--all", "--timeout=120s"); err != nil {
			t.Fatalf("deployments in %s: %v\n%s", ns, err, out)
		}
	}
	if out, err := n.Kubectl(ctx, "rollout", "status", "-n", srvNS, "statefulset/tcp", "--timeout=120s"); err != nil {
		t.Fatalf("statefulset tcp: %v\n%s", err, out)
	}
	srv, cli := n.pods(t, ctx, srvNS), n.pods(t, ctx, cliNS)
	var all []*podInfo
	for _, m := range []map[string]*podInfo{srv, cli} {
		for _, p := range m {
			v := strings.TrimSpace(n.exec(t, ctx, p, "iflink"))
			if p.hostVeth, _ = strconv.Atoi(v); p.hostVeth == 0 {
				t.Fatalf("iflink of %s: %q", p.name, v)
			}
			all = append(all, p)
		}
	}
	t.Logf("workloads running after %v", time.Since(start).Round(time.Second))

	// --- bytes, pods, namespaces, workloads, Service: a sized TCP connection ---
	tcpIP := n.serviceIP(t, ctx, srvNS, "tcp")
	sized := n.client(t, ctx, cli["cli-none"], "-case", "sized", "-sized", net.JoinHostPort(tcpIP, "9000"),
		"-send", strconv.Itoa(sizedSend), "-reply", strconv.Itoa(sizedReply))
	if sized.SizedSent != sizedSend+8 || sized.SizedReceived != sizedReply {
		t.Fatalf("client sized result %+v", sized)
	}
	checkSized(t, ctx, ch, cli["cli-none"], srv["tcp"], tcpIP, sized)
	t.Logf("bytes checked after %v", time.Since(start).Round(time.Second))

	// --- L7: each annotation value on the server and on the client ---
	optedIn := map[string]bool{}
	for _, w := range workloads {
		optedIn[w.name] = w.l7 != ""
	}
	isOpted := func(p *podInfo) bool { return optedIn[p.app] }
	waitUntil(t, ctx, "mirrors of the opted-in pods", 60*time.Second, func() error { return n.mirrorsConverged(t, all, isOpted) })
	hs := n.hooks(t)[n.vethName(t, srv["srv-ingress"].hostVeth)]
	t.Logf("srv-ingress's veth: %d tc filters, %d TCX programs, u32 mirror to %q (none: the TCX mechanism)", hs.filters, hs.tcxPrograms, hs.mirrorTarget)
	waitSuricata(t, ctx, n)

	type l7case struct {
		name     string
		client   *podInfo
		server   string
		expectL7 bool
	}
	cases := []l7case{
		{"srv-ingress", cli["cli-none"], "srv-ingress", true},
		{"srv-egress", cli["cli-none"], "srv-egress", false},
		{"srv-both", cli["cli-none"], "srv-both", true},
		{"cli-egress", cli["cli-egress"], "srv-none", true},
		{"cli-ingress", cli["cli-ingress"], "srv-none", false},
		{"cli-both", cli["cli-both"], "srv-none", true},
		{"absent", cli["cli-none"], "srv-none", false},
	}
	results := map[string]clientResult{}
	for _, c := range cases {
		results[c.name] = n.l7Traffic(t, ctx, c.client, c.name, n.serviceIP(t, ctx, srvNS, c.server))
	}
	for _, c := range cases {
		if c.expectL7 {
			checkL7(t, ctx, ch, c.name, c.client, srv[c.server], results[c.name])
		}
	}
	// The cases without L7 are judged once those with it arrived: by then
	// an event for them would have too.
	time.Sleep(5 * time.Second)
	for _, c := range cases {
		if !c.expectL7 {
			checkNoL7(t, ctx, ch, c.name, c.client, srv[c.server], results[c.name])
		}
	}
	t.Logf("L7 cases checked after %v", time.Since(start).Round(time.Second))

	// --- an annotation flipped live ---
	none := srv["srv-none"]
	if _, err := n.Kubectl(ctx, "annotate", "pod", "-n", srvNS, none.name, l7Key+"=ingress", "--overwrite"); err != nil {
		t.Fatal(err)
	}
	optedIn["srv-none"] = true
	waitUntil(t, ctx, "mirror after opt-in", 30*time.Second, func() error { return n.mirrorsConverged(t, all, isOpted) })
	r := n.l7Traffic(t, ctx, cli["cli-none"], "flip-on", n.serviceIP(t, ctx, srvNS, "srv-none"))
	checkL7(t, ctx, ch, "flip-on", cli["cli-none"], none, r)
	if _, err := n.Kubectl(ctx, "annotate", "pod", "-n", srvNS, none.name, l7Key+"-"); err != nil {
		t.Fatal(err)
	}
	optedIn["srv-none"] = false
	waitUntil(t, ctx, "mirror removed after opt-out", 30*time.Second, func() error { return n.mirrorsConverged(t, all, isOpted) })
	r = n.l7Traffic(t, ctx, cli["cli-none"], "flip-off", n.serviceIP(t, ctx, srvNS, "srv-none"))
	// A control case in the same round proves L7 still flows.
	rc := n.l7Traffic(t, ctx, cli["cli-none"], "flip-control", n.serviceIP(t, ctx, srvNS, "srv-both"))
	checkL7(t, ctx, ch, "flip-control", cli["cli-none"], srv["srv-both"], rc)
	time.Sleep(5 * time.Second)
	checkNoL7(t, ctx, ch, "flip-off", cli["cli-none"], none, r)
	t.Logf("live flip checked after %v", time.Since(start).Round(time.Second))

	// --- the agent killed (kill -9) and then deleted: the DaemonSet
	// restarts it and the mirrors converge, no duplicate, no stale one ---
	killAgent(t, ctx, n)
	waitUntil(t, ctx, "mirrors after kill -9 of the agent", 90*time.Second, func() error { return n.mirrorsConverged(t, all, isOpted) })
	r = n.l7Traffic(t, ctx, cli["cli-none"], "after-kill", n.serviceIP(t, ctx, srvNS, "srv-ingress"))
	checkL7(t, ctx, ch, "after-kill", cli["cli-none"], srv["srv-ingress"], r)
	if out, err := n.Kubectl(ctx, "delete", "pod", "-n", flNS, "-l", "app.kubernetes.io/component=agent", "--wait=true"); err != nil {
		t.Fatalf("delete agent pod: %v\n%s", err, out)
	}
	waitAgentReady(t, ctx, n, -1)
	waitUntil(t, ctx, "mirrors after the agent pod's deletion", 90*time.Second, func() error { return n.mirrorsConverged(t, all, isOpted) })
	t.Logf("agent restarts checked after %v", time.Since(start).Round(time.Second))

	// --- helm uninstall leaves nothing behind ---
	if out, err := n.Helm(ctx, "uninstall", release, "--namespace", flNS, "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	installed = false
	waitUntil(t, ctx, "flowlens pods gone", 60*time.Second, func() error {
		out, err := n.Kubectl(ctx, "get", "pods", "-n", flNS, "-o", "name")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("still there: %s", out)
		}
		return nil
	})
	waitUntil(t, ctx, "nothing left by helm uninstall", 30*time.Second, func() error { return n.leftovers(t) })
	t.Logf("done after %v", time.Since(start).Round(time.Second))
}

func (n *Node) l7Traffic(t *testing.T, ctx context.Context, client *podInfo, name, svcIP string) clientResult {
	t.Helper()
	return n.client(t, ctx, client, "-case", name,
		"-http", net.JoinHostPort(svcIP, "80"), "-tls", net.JoinHostPort(svcIP, "443"), "-dns", net.JoinHostPort(svcIP, "53"))
}

func checkSized(t *testing.T, ctx context.Context, ch clickhouse, src, dst *podInfo, svcIP string, r clientResult) {
	t.Helper()
	var rows []map[string]any
	sum := func(k string) uint64 {
		var s uint64
		for _, row := range rows {
			s += num(row, k)
		}
		return s
	}
	waitUntil(t, ctx, "rows of the sized connection", 90*time.Second, func() error {
		var err error
		if rows, err = ch.connRows(ctx, src, tcp, r.SizedLocal); err != nil {
			return err
		}
		if f, b := sum("octetDeltaCount"), sum("reverseOctetDeltaCount"); f < uint64(r.SizedSent) || b < uint64(r.SizedReceived) {
			return fmt.Errorf("%d rows, %d bytes sent / %d received so far, want at least %d / %d", len(rows), f, b, r.SizedSent, r.SizedReceived)
		}
		return nil
	})
	// Rows that come later (the connection's last records) must add no
	// byte: wait past an active timeout and the correlation wait.
	time.Sleep(8 * time.Second)
	rows, err := ch.connRows(ctx, src, tcp, r.SizedLocal)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"sourcePodName": src.name, "sourcePodNamespace": src.ns, "sourceWorkloadKind": "Deployment", "sourceWorkloadName": "cli-none",
		"destinationPodName": dst.name, "destinationPodNamespace": dst.ns, "destinationWorkloadKind": "StatefulSet", "destinationWorkloadName": "tcp",
		"destinationIP": dst.ip, "destinationTransportPort": "9000", "destinationClusterIP": svcIP, "destinationServicePort": "9000",
		"destinationServicePortName": srvNS + "/tcp:sized", "sourceNodeName": nodeName, "destinationNodeName": nodeName,
		"protocolIdentifier": "6", "flowType": "1",
	}
	for i, row := range rows {
		for k, v := range want {
			if got := str(row, k); got != v {
				t.Errorf("sized connection row %d: %s = %q, want %q", i, k, got, v)
			}
		}
	}
	// Conntrack counts IP packets: the application bytes plus 40..80
	// bytes of IPv4+TCP headers (options included) per packet.
	for _, d := range []struct {
		dir          string
		app          int64
		octets, pkts uint64
		total        string
	}{
		{"client to server", r.SizedSent, sum("octetDeltaCount"), sum("packetDeltaCount"), "octetTotalCount"},
		{"server to client", r.SizedReceived, sum("reverseOctetDeltaCount"), sum("reversePacketDeltaCount"), "reverseOctetTotalCount"},
	} {
		lo, hi := uint64(d.app)+40*d.pkts, uint64(d.app)+80*d.pkts
		if d.octets < lo || d.octets > hi || d.pkts == 0 {
			t.Errorf("%s: %d octets in %d packets for %d application bytes, want %d..%d", d.dir, d.octets, d.pkts, d.app, lo, hi)
		}
		var maxTotal uint64
		for _, row := range rows {
			maxTotal = max(maxTotal, num(row, d.total))
		}
		if maxTotal != d.octets {
			t.Errorf("%s: deltas sum to %d octets but the last %s is %d (a byte counted twice or lost)", d.dir, d.octets, d.total, maxTotal)
		}
	}
	t.Logf("sized connection: %d rows, %d/%d octets for %d/%d application bytes", len(rows),
		sum("octetDeltaCount"), sum("reverseOctetDeltaCount"), r.SizedSent, r.SizedReceived)
}

// checkL7 waits for the case's HTTP, TLS and DNS details on the rows of
// its three connections.
func checkL7(t *testing.T, ctx context.Context, ch clickhouse, name string, src, dst *podInfo, r clientResult) {
	t.Helper()
	host := name + ".e2e.test"
	waitUntil(t, ctx, "L7 of case "+name, 60*time.Second, func() error {
		var missing []string
		has := func(local, what string, ok func(map[string]any) bool) {
			rows, err := ch.connRows(ctx, src, protoOf[what], local)
			if err != nil {
				missing = append(missing, err.Error())
				return
			}
			for _, row := range rows {
				if str(row, "destinationPodName") != dst.name {
					missing = append(missing, fmt.Sprintf("%s row to %s, want %s", what, str(row, "destinationPodName"), dst.name))
					return
				}
				if ok(row) {
					return
				}
			}
			missing = append(missing, fmt.Sprintf("%s (%d rows)", what, len(rows)))
		}
		has(r.HTTPLocal, "http", func(row map[string]any) bool {
			return str(row, "appProtocolName") == "http" && strings.Contains(str(row, "httpVals"), r.HTTP) &&
				strings.Contains(str(row, "httpVals"), host)
		})
		has(r.TLSLocal, "tls", func(row map[string]any) bool { return str(row, "tlsServerName") == host })
		has(r.DNSLocal, "dns", func(row map[string]any) bool {
			return strings.TrimSuffix(str(row, "dnsQueryName"), ".") == host
		})
		if len(missing) > 0 {
			return fmt.Errorf("missing %s", strings.Join(missing, ", "))
		}
		return nil
	})
}

// checkNoL7 wants rows for each of the case's connections and no L7 field
// on any of them.
func checkNoL7(t *testing.T, ctx context.Context, ch clickhouse, name string, src, dst *podInfo, r clientResult) {
	t.Helper()
	waitUntil(t, ctx, "rows of case "+name, 30*time.Second, func() error {
		for what, local := range map[string]string{"http": r.HTTPLocal, "tls": r.TLSLocal, "dns": r.DNSLocal} {
			rows, err := ch.connRows(ctx, src, protoOf[what], local)
			if err != nil {
				return err
			}
			if len(rows) == 0 {
				return fmt.Errorf("no %s rows", what)
			}
		}
		return nil
	})
	for what, local := range map[string]string{"http": r.HTTPLocal, "tls": r.TLSLocal, "dns": r.DNSLocal} {
		rows, err := ch.connRows(ctx, src, protoOf[what], local)
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range rows {
			if str(row, "destinationPodName") != dst.name {
				t.Errorf("case %s %s: row to %s, want %s", name, what, str(row, "destinationPodName"), dst.name)
			}
			for _, k := range []string{"appProtocolName", "httpVals", "tlsServerName", "dnsQueryName"} {
				if v := str(row, k); v != "" {
					t.Errorf("case %s (no L7 expected) %s: %s = %q", name, what, k, v)
				}
			}
		}
	}
}

// waitSuricata waits until the Suricata sidecar has run long enough to
// capture (it needs ~10 s after start).
func waitSuricata(t *testing.T, ctx context.Context, n *Node) {
	t.Helper()
	var started time.Time
	waitUntil(t, ctx, "suricata running", 60*time.Second, func() error {
		out, err := n.Kubectl(ctx, "get", "pods", "-n", flNS, "-l", "app.kubernetes.io/component=agent", "-o",
			`jsonpath={.items[0].status.containerStatuses[?(@.name=="suricata")].state.running.startedAt}`)
		if err != nil {
			return err
		}
		if started, err = time.Parse(time.RFC3339, strings.TrimSpace(out)); err != nil {
			return fmt.Errorf("suricata not running: %q", out)
		}
		return nil
	})
	if d := 15*time.Second - time.Since(started); d > 0 {
		time.Sleep(d)
	}
}

// agentRestarts is the agent container's restart count.
func agentRestarts(t *testing.T, ctx context.Context, n *Node) int {
	out, err := n.Kubectl(ctx, "get", "pods", "-n", flNS, "-l", "app.kubernetes.io/component=agent", "-o",
		`jsonpath={.items[0].status.containerStatuses[?(@.name=="agent")].restartCount}`)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := strconv.Atoi(strings.TrimSpace(out))
	return c
}

func waitAgentReady(t *testing.T, ctx context.Context, n *Node, minRestarts int) {
	t.Helper()
	waitUntil(t, ctx, "agent pod ready", 90*time.Second, func() error {
		if minRestarts >= 0 && agentRestarts(t, ctx, n) < minRestarts {
			return fmt.Errorf("agent not restarted yet")
		}
		out, err := n.Kubectl(ctx, "get", "pods", "-n", flNS, "-l", "app.kubernetes.io/component=agent", "-o",
			`jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "True" {
			return fmt.Errorf("agent Ready=%q", out)
		}
		return nil
	})
	waitSuricata(t, ctx, n)
}

// killAgent sends SIGKILL to the agent process: no clean shutdown, so
// whatever it installed stays for the next one to recognise.
func killAgent(t *testing.T, ctx context.Context, n *Node) {
	t.Helper()
	before := agentRestarts(t, ctx, n)
	pids := n.processes(t, isAgent)
	if len(pids) != 1 {
		t.Fatalf("%d agent processes in the node's namespace, want 1", len(pids))
	}
	for pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	waitAgentReady(t, ctx, n, before+1)
}

// leftovers names anything of flowlens still on the node after helm
// uninstall: capture veths, tc filters, TCX programs, the EVE socket,
// agent or Suricata processes.
func (n *Node) leftovers(t *testing.T) error {
	var left []string
	for name, s := range n.hooks(t) {
		if strings.HasPrefix(name, "flc") {
			left = append(left, "link "+name)
		}
		if s.filters > 0 || s.tcxPrograms > 0 {
			left = append(left, fmt.Sprintf("%s: %d tc filters, %d TCX programs", name, s.filters, s.tcxPrograms))
		}
	}
	unix, err := n.InNetns(context.Background(), "cat", "/proc/net/unix")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(unix, "\n") {
		if strings.Contains(line, "eve.sock") || strings.Contains(line, "flowlens") {
			left = append(left, "socket "+line)
		}
	}
	for pid, cmd := range n.processes(t, func(cmd string) bool { return isAgent(cmd) || strings.Contains(cmd, "/etc/suricata-flowlens/") }) {
		left = append(left, fmt.Sprintf("process %d %s", pid, cmd))
	}
	if len(left) > 0 {
		sort.Strings(left)
		return fmt.Errorf("left behind: %s", strings.Join(left, "; "))
	}
	return nil
}

func isAgent(cmd string) bool { return strings.HasPrefix(cmd, "/flowlens-agent ") }

// processes are the processes in the node's network namespace whose command
// line (arguments joined by spaces) matches: those of this node only.
func (n *Node) processes(t *testing.T, match func(cmd string) bool) map[int]string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+n.Netns, &st); err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
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
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if !match(cmd) {
			continue
		}
		var pst syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &pst) != nil || pst.Ino != st.Ino || pst.Dev != st.Dev {
			continue
		}
		out[pid] = cmd
	}
	return out
}

// reapExpired lists the node's conntrack table. A closed connection's last
// record leaves the agent when conntrack destroys its entry, and the
// kernel reaps expired entries lazily, up to a minute later when the
// table (shared by the whole machine) holds long-lived entries; a dump
// reaps every expired entry it meets at once. It changes no entry that
// is still alive, so what flowlens reports is the same, only sooner.
func (n *Node) reapExpired(ctx context.Context) {
	if _, err := n.InNetns(ctx, "conntrack", "-L", "-o", "id"); err != nil {
		n.t.Logf("conntrack -L in the node's namespace: %v", err)
	}
}
