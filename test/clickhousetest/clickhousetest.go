// Package clickhousetest runs a real clickhouse-server for integration
// tests: loopback only, free ports, all state in a temporary directory, so
// several test packages can each run their own at once.
package clickhousetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is one running clickhouse-server.
type Server struct {
	// Addr is the native protocol address (host:port).
	Addr string
	// HTTPAddr is the HTTP interface (readiness and ad-hoc checks only).
	HTTPAddr string
	Dir      string
	Binary   string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// binary finds the server program; Debian's package installs
// clickhouse-server, newer packages a single clickhouse binary.
func binary() (path string, args []string, err error) {
	if p, err := exec.LookPath("clickhouse-server"); err == nil {
		return p, nil, nil
	}
	for _, p := range []string{"/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil, nil
		}
	}
	if p, err := exec.LookPath("clickhouse"); err == nil {
		return p, []string{"server"}, nil
	}
	return "", nil, errors.New("clickhouse-server not found in PATH: install the Debian packages clickhouse-server and clickhouse-client (hack/install-deps.sh)")
}

// Start starts a server and stops it when the test ends. A missing
// clickhouse-server fails the test: integration tests never skip.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatalf("clickhousetest: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("clickhousetest: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

// New prepares a server's configuration under dir without starting it.
func New(dir string) (*Server, error) {
	bin, _, err := binary()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	s := &Server{
		Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		HTTPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
		Dir:      dir,
		Binary:   bin,
	}
	if err := s.writeConfig(ports[0], ports[1], ""); err != nil {
		return nil, err
	}
	return s, nil
}

// writeConfig lays out the server's directory; extra is XML placed inside
// the top-level element (a cluster's remote_servers).
func (s *Server) writeConfig(tcp, http int, extra string) error {
	dir := s.Dir
	for _, d := range []string{"data", "tmp", "user_files", "format_schemas", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "config.xml"), []byte(s.config(tcp, http, extra)), 0o644); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), []byte(usersXML), 0o644); err != nil {
		return fmt.Errorf("write users: %w", err)
	}
	return nil
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
			return nil, fmt.Errorf("find free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (s *Server) config(tcp, http int, extra string) string {
	return fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>%[1]s/log/server.log</log>
    <errorlog>%[1]s/log/server.err.log</errorlog>
    <console>0</console>
  </logger>
  <tcp_port>%[2]d</tcp_port>
  <http_port>%[3]d</http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>%[1]s/data/</path>
  <tmp_path>%[1]s/tmp/</tmp_path>
  <user_files_path>%[1]s/user_files/</user_files_path>
  <format_schema_path>%[1]s/format_schemas/</format_schema_path>
  <users_config>%[1]s/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
%[4]s</yandex>
`, s.Dir, tcp, http, extra)
}

const usersXML = `<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>4000000000</max_memory_usage>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks>
        <ip>127.0.0.1</ip>
        <ip>::1</ip>
      </networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries>
        <errors>0</errors>
        <result_rows>0</result_rows>
        <read_rows>0</read_rows>
        <execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
`

// Start runs the server and waits until it answers; it is also how a test
// brings a killed server back (same directory, same ports, same data).
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("already running")
	}
	_, extra, err := binary()
	if err != nil {
		return err
	}
	args := append(extra, "--config-file="+filepath.Join(s.Dir, "config.xml"))
	cmd := exec.Command(s.Binary, args...)
	cmd.Dir = s.Dir
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.Binary, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		if ping(ctx, s.HTTPAddr) == nil {
			return nil
		}
		select {
		case <-done:
			s.cmd = nil
			log, _ := os.ReadFile(filepath.Join(s.Dir, "log", "server.err.log"))
			return fmt.Errorf("clickhouse-server exited at start: %s\n%s\n%s", cmd.ProcessState, stderr.String(), tail(log, 2000))
		case <-ctx.Done():
			s.killLocked()
			return fmt.Errorf("clickhouse-server not ready on %s after 60s", s.HTTPAddr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func ping(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/ping", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ping: %s", resp.Status)
	}
	return nil
}

// Kill stops the server abruptly (SIGKILL), as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

// Stop stops the server gracefully, killing it if it takes too long.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
		s.cmd = nil
		return nil
	case <-time.After(20 * time.Second):
		s.killLocked()
		return errors.New("clickhouse-server ignored SIGTERM for 20s; killed")
	}
}

// Query runs a query over the HTTP interface and returns the raw body
// (TabSeparated); the production code never uses HTTP, which is fine for
// test assertions against 18.16.
func (s *Server) Query(q string) (string, error) {
	resp, err := http.Post("http://"+s.HTTPAddr+"/", "text/plain", bytes.NewBufferString(q))
	if err != nil {
		return "", fmt.Errorf("query %q: %w", q, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		return "", fmt.Errorf("query %q: read: %w", q, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("query %q: %s: %s", q, resp.Status, b.String())
	}
	return b.String(), nil
}
