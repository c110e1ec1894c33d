//go:build integration

package shardinge2e_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// freeAddr returns a free loopback host:port. Replicas listen on fixed
// ports, not port 0: the agents' replica list is static, so a restarted
// replica must come back where it was.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// replica describes one aggregator replica's configuration.
type replica struct {
	id     string
	listen string // host:port, fixed across restarts
	walDir string // "" = write-ahead log off
}

// aggregatorConfig is a replica's YAML: one TCP listener, the ClickHouse
// cluster sink (each row inserted into the shard of its connectionKey,
// read through the Distributed table `table`).
func aggregatorConfig(r replica, ch *clickhousetest.Cluster, table string, correlationWait, commitInterval time.Duration) string {
	wal := "wal:\n  enabled: false\n"
	if r.walDir != "" {
		// sync never: a killed process loses nothing either way (the
		// write reaches the kernel first); only a machine crash would.
		wal = fmt.Sprintf("wal:\n  enabled: true\n  dir: %s\n  sync: never\n", r.walDir)
	}
	return fmt.Sprintf(`aggregatorID: %s
listen: [tcp://%s]
shutdownTimeout: 30s
correlation:
  correlationWait: %s
  startWindow: 5s
  activeTimeout: 10m
  inactiveTimeout: 10m
  maxConnections: 2000000
inputQueue: 65536
%ssinks:
  clickhouse:
    enabled: true
    database: default
    table: %s
    cluster:
      name: %s
      shards: [%s]
    dialTimeout: 5s
    queueRecords: 1000000
    maxBatch: 50000
    commitInterval: %s
    retryMin: 100ms
    retryMax: 1s
    flushTimeout: 20s
`, r.id, r.listen, correlationWait, wal, table, ch.Name, strings.Join(ch.Shards(), ", "), commitInterval)
}

// sample is one line of a /metrics page.
type sample struct {
	labels string
	value  float64
}

// samples returns every sample of the metric name, whatever its labels.
func samples(page, name string) []sample {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	var out []sample
	for _, m := range re.FindAllStringSubmatch(page, -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			continue
		}
		out = append(out, sample{labels: m[1], value: v})
	}
	return out
}

// sum adds every sample of name; ok is false when there is none, so a
// renamed metric does not read as zero.
func sum(page, name string) (total float64, ok bool) {
	s := samples(page, name)
	for _, x := range s {
		total += x.value
	}
	return total, len(s) > 0
}

// mustSum is sum, failing the test when the metric is missing.
func mustSum(t testing.TB, who, page, name string) float64 {
	t.Helper()
	v, ok := sum(page, name)
	if !ok {
		t.Fatalf("%s /metrics has no %s", who, name)
	}
	return v
}

// nonZero lists the samples above zero of flowlens_ metrics whose name
// matches pat.
func nonZero(page, pat string) []string {
	return agenttest.NonZeroLosses(page, pat)
}

// procCPU is the CPU time (user + system) a process has used, from
// /proc/<pid>/stat: the whole process, all its threads, whatever it
// reports about itself.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu of pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; fields count from the
	// closing parenthesis. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: malformed stat %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short stat %q", pid, b)
	}
	var ticks uint64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("pid %d: stat field %q: %w", pid, s, err)
		}
		ticks += v
	}
	// USER_HZ is 100 on every Linux architecture Go supports.
	return time.Duration(ticks) * (time.Second / 100), nil
}

// procRSS is a process's resident set size from /proc/<pid>/status.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: VmRSS %q: %w", pid, rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in status", pid)
}

// serverPid finds the clickhouse-server process of a test server by its
// configuration file, which lives in the server's own directory.
func serverPid(s *clickhousetest.Server) (int, error) {
	want := []byte(filepath.Join(s.Dir, "config.xml"))
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("list /proc: %w", err)
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, want) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process runs clickhouse-server with %s", want)
}

// query runs q on shard i and returns its trimmed output.
func query(t testing.TB, ch *clickhousetest.Cluster, shard int, q string) string {
	t.Helper()
	out, err := ch.Query(shard, q)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// count runs a SELECT count() query on shard i.
func count(t testing.TB, ch *clickhousetest.Cluster, shard int, q string) int {
	t.Helper()
	out := query(t, ch, shard, q)
	n, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("%s on shard %d: %q is not a count", q, shard, out)
	}
	return n
}
