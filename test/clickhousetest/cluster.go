package clickhousetest

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// ClusterName is the name StartCluster gives its cluster in every
// server's remote_servers, the name a sink's cluster config refers to.
const ClusterName = "flowlens"

// Cluster is N clickhouse-server processes (separate directories and
// ports) that each carry the same remote_servers definition: cluster
// ClusterName with one non-replicated shard per server, in server order,
// equal weights. No ZooKeeper: a Distributed table over it works, ON
// CLUSTER DDL does not (create tables on each server instead).
type Cluster struct {
	Name    string
	servers []*Server
}

// StartCluster starts n servers forming one cluster and stops them when
// the test ends. A missing clickhouse-server fails the test. Shard i
// (0-based) is Server(i); Shards() lists their native addresses in the
// order of the cluster definition.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := NewCluster(t.TempDir(), n)
	if err != nil {
		t.Fatalf("clickhousetest: %v", err)
	}
	t.Cleanup(func() { c.Stop() })
	// In parallel: each server takes seconds to come up.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range c.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.servers[i].Start()
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("clickhousetest: start shard %d: %v", i, err)
		}
	}
	return c
}

// NewCluster prepares n servers under dir/shardN without starting them.
func NewCluster(dir string, n int) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("cluster of %d servers: need at least one", n)
	}
	bin, _, err := binary()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Name: ClusterName}
	for i := 0; i < n; i++ {
		c.servers = append(c.servers, &Server{
			Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2*i])),
			HTTPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2*i+1])),
			Dir:      filepath.Join(dir, fmt.Sprintf("shard%d", i)),
			Binary:   bin,
		})
	}
	remote := c.RemoteServersXML()
	for i, s := range c.servers {
		if err := s.writeConfig(ports[2*i], ports[2*i+1], remote); err != nil {
			return nil, fmt.Errorf("shard %d: %w", i, err)
		}
	}
	return c, nil
}

// RemoteServersXML is the <remote_servers> element every server of the
// cluster has: one shard per server, one replica each, in Shards() order.
func (c *Cluster) RemoteServersXML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "  <remote_servers>\n    <%s>\n", c.Name)
	for _, s := range c.servers {
		host, port, _ := net.SplitHostPort(s.Addr)
		fmt.Fprintf(&b, "      <shard>\n        <weight>1</weight>\n        <replica>\n          <host>%s</host>\n          <port>%s</port>\n        </replica>\n      </shard>\n", host, port)
	}
	fmt.Fprintf(&b, "    </%s>\n  </remote_servers>\n", c.Name)
	return b.String()
}

// Shards is the native address of every shard, in cluster order.
func (c *Cluster) Shards() []string {
	out := make([]string, len(c.servers))
	for i, s := range c.servers {
		out[i] = s.Addr
	}
	return out
}

// Server is shard i's server (Query, Kill, Start, Stop on it).
func (c *Cluster) Server(i int) *Server { return c.servers[i] }

// Len is the number of shards.
func (c *Cluster) Len() int { return len(c.servers) }

// Query runs q on shard i (see Server.Query).
func (c *Cluster) Query(i int, q string) (string, error) { return c.servers[i].Query(q) }

// Kill kills shard i abruptly (SIGKILL); Start(i) brings it back with its
// data.
func (c *Cluster) Kill(i int) { c.servers[i].Kill() }

// Start (re)starts shard i and waits until it answers.
func (c *Cluster) Start(i int) error { return c.servers[i].Start() }

// Stop stops every shard.
func (c *Cluster) Stop() {
	for _, s := range c.servers {
		_ = s.Stop()
	}
}
