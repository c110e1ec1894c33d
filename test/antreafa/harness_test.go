//go:build integration && antreafa

package antreafa_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/test/kubeapi"
)

// The aggregator's IPFIX and gRPC collectors listen on these fixed ports of
// every address (pkg/flowaggregator/collector in Antrea); the test checks
// they are free rather than fail obscurely.
const (
	faIPFIXPort = 4739
	faGRPCPort  = 14739
	// faNamespace is where the aggregator keeps its CA and certificates
	// (POD_NAMESPACE), even when it collects over plain TCP.
	faNamespace = "flow-aggregator"
)

// faRecords keeps every data record the aggregator exports.
type faRecords struct {
	addr string
	mu   sync.Mutex
	recs []ipfixcollect.Record
}

func startFARecords(t *testing.T) *faRecords {
	t.Helper()
	c, err := ipfixcollect.New(ipfixcollect.Config{Network: ipfixcollect.TCP, Address: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatalf("collector of the aggregator's records: %v", err)
	}
	out := &faRecords{addr: c.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, func(r ipfixcollect.Record) {
			out.mu.Lock()
			out.recs = append(out.recs, r.Clone())
			out.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("collector of the aggregator's records: %v", err)
		}
	})
	return out
}

// of returns the records of the TCP connection src -> dst.
func (f *faRecords) of(src, dst netip.AddrPort) []ipfixcollect.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ipfixcollect.Record
	for _, r := range f.recs {
		s, ok1 := r.Get("sourceIPv4Address")
		sp, ok2 := r.Get("sourceTransportPort")
		d, ok3 := r.Get("destinationIPv4Address")
		dp, ok4 := r.Get("destinationTransportPort")
		p, ok5 := r.Get("protocolIdentifier")
		if ok1 && ok2 && ok3 && ok4 && ok5 && s.Addr == src.Addr() && sp.Uint == uint64(src.Port()) &&
			d.Addr == dst.Addr() && dp.Uint == uint64(dst.Port()) && p.Uint == uint64(flow.ProtoTCP) {
			out = append(out, r)
		}
	}
	return out
}

func (f *faRecords) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.recs)
}

// waitFor waits for the aggregator's first record of src -> dst.
func (f *faRecords) waitFor(t *testing.T, fa *flowAggregator, src, dst netip.AddrPort, within time.Duration) ipfixcollect.Record {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if recs := f.of(src, dst); len(recs) > 0 {
			return recs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("Antrea's aggregator exported no record of %s -> %s within %s (%d records of other connections); its log:\n%s",
				src, dst, within, f.len(), fa.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// flowAggregator is Antrea's flow-aggregator running against the test's
// kube-apiserver.
type flowAggregator struct {
	dir     string
	logPath string
}

func (fa *flowAggregator) logTail() string {
	b, _ := os.ReadFile(fa.logPath)
	if len(b) > 16<<10 {
		b = b[len(b)-16<<10:]
	}
	return string(b)
}

// startFlowAggregator runs the aggregator in Aggregate mode, collecting
// IPFIX over TCP on port 4739 and exporting its aggregated records over
// IPFIX to exportTo. It stops (SIGTERM) when the test ends.
//
// The aggregator only knows the in-cluster configuration: it reads the
// API server from KUBERNETES_SERVICE_HOST/PORT and its token and CA from
// /var/run/secrets/kubernetes.io/serviceaccount. It runs in a private
// mount namespace (unshare) where a tmpfs over /run holds those files, so
// nothing of the host's /run is touched or seen.
func startFlowAggregator(t *testing.T, cluster *kubeapi.Cluster, exportTo string, activeTimeout, inactiveTimeout time.Duration) *flowAggregator {
	t.Helper()
	for _, port := range []int{faIPFIXPort, faGRPCPort} {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			t.Fatalf("Antrea's aggregator needs port %d, which is taken: %v", port, err)
		}
		ln.Close()
	}
	ctx := context.Background()
	admin, err := cluster.AdminClient()
	if err != nil {
		t.Fatal(err)
	}
	// What an Antrea installation provides: the cluster identity written
	// by antrea-controller (the aggregator waits 10 s for it, then exits)
	// and the aggregator's namespace.
	_, err = admin.CoreV1().ConfigMaps("kube-system").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "antrea-cluster-identity"},
		Data:       map[string]string{"uuid": "0f7c1d2e-5a4b-4c3d-9e8f-7a6b5c4d3e2f"},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create antrea-cluster-identity: %v", err)
	}
	if err := kubeapi.EnsureNamespace(ctx, admin, faNamespace); err != nil {
		t.Fatal(err)
	}

	kc, err := clientcmd.LoadFromFile(cluster.AdminKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kctx := kc.Contexts[kc.CurrentContext]
	if kctx == nil || kc.AuthInfos[kctx.AuthInfo] == nil || kc.Clusters[kctx.Cluster] == nil {
		t.Fatalf("admin kubeconfig %s has no current context with user and cluster", cluster.AdminKubeconfig)
	}
	api, err := url.Parse(cluster.URL)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	sa := filepath.Join(dir, "serviceaccount")
	must(t, os.Mkdir(sa, 0o700))
	// The admin token (system:masters): the aggregator's own RBAC is not
	// what this test is about.
	must(t, os.WriteFile(filepath.Join(sa, "token"), []byte(kc.AuthInfos[kctx.AuthInfo].Token), 0o600))
	must(t, os.WriteFile(filepath.Join(sa, "ca.crt"), kc.Clusters[kctx.Cluster].CertificateAuthorityData, 0o600))
	must(t, os.WriteFile(filepath.Join(sa, "namespace"), []byte(faNamespace), 0o600))

	apiPort := freePort(t)
	// The aggregator watches its configuration's directory for changes:
	// nothing else may be written there.
	cfgDir := filepath.Join(dir, "config")
	must(t, os.Mkdir(cfgDir, 0o700))
	cfgPath := filepath.Join(cfgDir, "flow-aggregator.conf")
	must(t, os.WriteFile(cfgPath, []byte(fmt.Sprintf(`mode: Aggregate
activeFlowRecordTimeout: %s
inactiveFlowRecordTimeout: %s
aggregatorTransportProtocol: TCP
apiServer:
  apiPort: %d
flowCollector:
  enable: true
  address: "%s:tcp"
  observationDomainID: 4242
  recordFormat: IPFIX
clickHouse:
  enable: false
flowLogger:
  enable: true
  path: %s
  compress: false
  prettyPrint: false
`, activeTimeout, inactiveTimeout, apiPort, exportTo, filepath.Join(dir, "flows.csv"))), 0o600))

	fa := &flowAggregator{dir: dir, logPath: filepath.Join(dir, "flow-aggregator.log")}
	logFile, err := os.Create(fa.logPath)
	if err != nil {
		t.Fatal(err)
	}
	// unshare execs sh, which execs the aggregator: one process, so the
	// SIGTERM below reaches the aggregator itself.
	const script = `set -e
mount -t tmpfs -o size=4m,mode=0755 flowlens-antrea-fa /var/run
mkdir -p /var/run/secrets/kubernetes.io
cp -r "$1" /var/run/secrets/kubernetes.io/serviceaccount
exec "$2" --config "$3" --logtostderr=true --v=2`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", sa, faBin, cfgPath)
	cmd.Env = append(os.Environ(),
		"KUBERNETES_SERVICE_HOST="+api.Hostname(),
		"KUBERNETES_SERVICE_PORT="+api.Port(),
		"POD_NAMESPACE="+faNamespace,
		"POD_NAME=flow-aggregator-test",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start Antrea's aggregator: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("Antrea's aggregator did not stop within 15s of SIGTERM")
		}
		logFile.Close()
		if t.Failed() {
			t.Logf("Antrea's aggregator log (tail):\n%s", fa.logTail())
			if b, err := os.ReadFile(filepath.Join(dir, "flows.csv")); err == nil {
				t.Logf("Antrea's aggregator flow log:\n%s", b)
			}
		}
	})

	// Ready when its IPFIX collector accepts connections: the aggregator
	// starts it only after its object stores synced and its certificates
	// were set up.
	began := time.Now()
	deadline := began.Add(90 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", faIPFIXPort), time.Second)
		if err == nil {
			c.Close()
			t.Logf("Antrea's aggregator %s collecting on :%d %s after start", faBin, faIPFIXPort, time.Since(began).Round(time.Millisecond))
			return fa
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("Antrea's aggregator exited at start-up: %v\n%s", err, fa.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Antrea's aggregator not collecting on :%d 90s after start; log:\n%s", faIPFIXPort, fa.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startTee accepts an agent's IPFIX-over-TCP connections and copies every
// byte both to the aggregator and to copyTo, so the test knows exactly
// what each node's agent told the aggregator. It returns its address.
func startTee(t *testing.T, to, copyTo string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(cs ...net.Conn) {
		mu.Lock()
		conns = append(conns, cs...)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			main, err := net.Dial("tcp", to)
			if err != nil {
				in.Close() // the agent reconnects and retries
				continue
			}
			cp, err := net.Dial("tcp", copyTo)
			if err != nil {
				in.Close()
				main.Close()
				continue
			}
			track(in, main, cp)
			wg.Add(1)
			go func() {
				defer wg.Done()
				// IPFIX over TCP flows one way: exporter to collector.
				_, err := io.Copy(io.MultiWriter(main, cp), in)
				if err != nil && !errors.Is(err, net.ErrClosed) {
					t.Logf("tee %s: %v", ln.Addr(), err)
				}
				in.Close()
				main.Close()
				cp.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
