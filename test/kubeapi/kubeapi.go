// Package kubeapi starts a real control plane for integration tests: etcd
// (Debian's etcd-server) and kube-apiserver (built and cached by
// hack/build-kube-apiserver.sh), both on loopback, with token authentication
// and RBAC authorization. There is no controller-manager, scheduler or
// kubelet: tests create objects and set pod status themselves.
//
//	c, err := kubeapi.Start(ctx, kubeapi.Options{Dir: t.TempDir()})
//	defer c.Stop()
//	admin := c.AdminKubeconfig                     // system:masters
//	_ = c.Apply(ctx, "build/rbac/agent.yaml")        // as admin
//	sa, err := c.ServiceAccountKubeconfig(ctx, "flowlens", "flowlens-agent")
package kubeapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Version is the kube-apiserver release hack/build-kube-apiserver.sh builds.
const Version = "v1.31.0"

// Options configures Start. Zero values pick defaults.
type Options struct {
	// Dir holds data, logs, keys and kubeconfigs; required (t.TempDir()).
	Dir string
	// APIServer is the kube-apiserver binary. Default: $FLOWLENS_KUBE_APISERVER,
	// else /var/cache/flowlens/kube-apiserver-<Version>.
	APIServer string
	// Etcd is the etcd binary. Default: $FLOWLENS_ETCD, else etcd on PATH.
	Etcd string
	// ReadyTimeout bounds the wait for both to serve. Default 60s.
	ReadyTimeout time.Duration
}

// Cluster is a running etcd + kube-apiserver.
type Cluster struct {
	// URL is the API server's https URL on 127.0.0.1.
	URL string
	// AdminKubeconfig is a kubeconfig file for a system:masters user.
	AdminKubeconfig string
	// Dir is Options.Dir; logs are Dir/etcd.log and Dir/kube-apiserver.log.
	Dir string

	caFile string
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	exited map[string]error
}

// ErrMissingComponent wraps the error for a binary that is not installed.
var ErrMissingComponent = errors.New("missing component")

func resolveBinaries(o *Options) error {
	if o.APIServer == "" {
		o.APIServer = os.Getenv("FLOWLENS_KUBE_APISERVER")
	}
	if o.APIServer == "" {
		o.APIServer = "/var/cache/flowlens/kube-apiserver-" + Version
	}
	if _, err := os.Stat(o.APIServer); err != nil {
		return fmt.Errorf("%w: kube-apiserver %s (build it with hack/build-kube-apiserver.sh, or run hack/install-deps.sh): %v",
			ErrMissingComponent, o.APIServer, err)
	}
	if o.Etcd == "" {
		o.Etcd = os.Getenv("FLOWLENS_ETCD")
	}
	if o.Etcd == "" {
		p, err := exec.LookPath("etcd")
		if err != nil {
			return fmt.Errorf("%w: etcd not on PATH (apt-get install etcd-server, or run hack/install-deps.sh): %v",
				ErrMissingComponent, err)
		}
		o.Etcd = p
	}
	if _, err := os.Stat(o.Etcd); err != nil {
		return fmt.Errorf("%w: etcd %s (apt-get install etcd-server, or run hack/install-deps.sh): %v",
			ErrMissingComponent, o.Etcd, err)
	}
	return nil
}

// Start launches etcd and kube-apiserver and returns once the API server is
// ready. The processes stop when ctx is done or Stop is called.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	if o.Dir == "" {
		return nil, errors.New("kubeapi: Options.Dir is empty")
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	if err := resolveBinaries(&o); err != nil {
		return nil, fmt.Errorf("kubeapi: %w", err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: pick ports: %w", err)
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]

	pctx, cancel := context.WithCancel(ctx)
	c := &Cluster{
		URL:    "https://127.0.0.1:" + strconv.Itoa(apiPort),
		Dir:    o.Dir,
		cancel: cancel,
		exited: map[string]error{},
	}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	if err := c.run(pctx, "etcd", o.Etcd,
		"--name=flowlens-test",
		"--data-dir="+filepath.Join(o.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=flowlens-test="+peerURL,
		"--log-level=warn",
	); err != nil {
		return nil, err
	}
	if err := c.waitHTTP(ctx, "etcd", etcdURL+"/health", "", "", o.ReadyTimeout); err != nil {
		return nil, err
	}

	token, err := randomToken()
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(o.Dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+`,admin,admin-uid,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("kubeapi: write token file: %w", err)
	}
	saKey := filepath.Join(o.Dir, "sa.key")
	if err := writeRSAKey(saKey); err != nil {
		return nil, err
	}
	certDir := filepath.Join(o.Dir, "certs")
	if err := c.run(pctx, "kube-apiserver", o.APIServer,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(apiPort),
		"--cert-dir="+certDir,
		"--token-auth-file="+tokens,
		"--anonymous-auth=false",
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+saKey,
		"--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		// No controller-manager creates the "default" ServiceAccounts that
		// this admission plugin requires of every pod.
		"--disable-admission-plugins=ServiceAccount",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	); err != nil {
		return nil, err
	}
	// The API server writes its self-signed serving certificate on start;
	// clients trust exactly that certificate.
	c.caFile = filepath.Join(certDir, "apiserver.crt")
	if err := c.waitHTTP(ctx, "kube-apiserver", c.URL+"/readyz", token, c.caFile, o.ReadyTimeout); err != nil {
		return nil, err
	}
	c.AdminKubeconfig = filepath.Join(o.Dir, "admin.kubeconfig")
	if err := c.writeKubeconfig(c.AdminKubeconfig, "admin", token); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// run starts one process with its output in Dir/<name>.log.
func (c *Cluster) run(ctx context.Context, name, bin string, args ...string) error {
	logf, err := os.Create(filepath.Join(c.Dir, name+".log"))
	if err != nil {
		return fmt.Errorf("kubeapi: create %s log: %w", name, err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("kubeapi: start %s: %w", name, err)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		err := cmd.Wait()
		logf.Close()
		c.mu.Lock()
		c.exited[name] = err
		c.mu.Unlock()
	}()
	return nil
}

func (c *Cluster) exitErr(name string) (error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	err, ok := c.exited[name]
	return err, ok
}

// logTail returns the end of a process's log for error messages.
func (c *Cluster) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, name+".log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (c *Cluster) waitHTTP(ctx context.Context, name, url, token, caFile string, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if err, done := c.exitErr(name); done {
			return fmt.Errorf("kubeapi: %s exited before ready (%v); log:\n%s", name, err, c.logTail(name))
		}
		if caFile != "" && client.Transport == nil {
			if tr, err := tlsTransport(caFile); err == nil {
				client.Transport = tr
			}
		}
		if caFile == "" || client.Transport != nil {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
				err = fmt.Errorf("status %s", resp.Status)
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubeapi: wait for %s: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("kubeapi: %s not ready after %v (last: %v); log:\n%s", name, timeout, last, c.logTail(name))
}

// Stop terminates both processes and waits for them to exit.
func (c *Cluster) Stop() {
	c.cancel()
	c.wg.Wait()
}

func (c *Cluster) writeKubeconfig(path, user, token string) error {
	ca, err := os.ReadFile(c.caFile)
	if err != nil {
		return fmt.Errorf("kubeapi: read serving certificate: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: user}
	cfg.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("kubeapi: write kubeconfig %s: %w", path, err)
	}
	return nil
}

// Client returns a clientset for a kubeconfig file.
func Client(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeapi: load %s: %w", kubeconfig, err)
	}
	return kubernetes.NewForConfig(rc)
}

// AdminClient returns a system:masters clientset.
func (c *Cluster) AdminClient() (kubernetes.Interface, error) { return Client(c.AdminKubeconfig) }

// ServiceAccountKubeconfig writes a kubeconfig authenticating as an existing
// ServiceAccount with a token from the TokenRequest API, so the caller gets
// exactly the permissions RBAC grants that account.
func (c *Cluster) ServiceAccountKubeconfig(ctx context.Context, namespace, name string) (string, error) {
	admin, err := c.AdminClient()
	if err != nil {
		return "", err
	}
	exp := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1CreateOptions)
	if err != nil {
		return "", fmt.Errorf("kubeapi: token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	path := filepath.Join(c.Dir, "sa-"+namespace+"-"+name+".kubeconfig")
	if err := c.writeKubeconfig(path, "system:serviceaccount:"+namespace+":"+name, tr.Status.Token); err != nil {
		return "", err
	}
	return path, nil
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("kubeapi: random token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func writeRSAKey(path string) error {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("kubeapi: generate service account key: %w", err)
	}
	var buf bytes.Buffer
	if err := pem.Encode(&buf, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}); err != nil {
		return fmt.Errorf("kubeapi: encode service account key: %w", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("kubeapi: write service account key: %w", err)
	}
	return nil
}

// trimmed is used by Apply to skip empty YAML documents.
func trimmed(b []byte) string { return strings.TrimSpace(string(b)) }
