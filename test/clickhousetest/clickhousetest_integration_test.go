//go:build integration

package clickhousetest

import (
	"strings"
	"testing"
)

func TestServerSurvivesKillAndRestartWithItsData(t *testing.T) {
	s := Start(t)
	for _, q := range []string{
		"CREATE TABLE t (x UInt32) ENGINE = MergeTree() ORDER BY x",
		"INSERT INTO t VALUES (1), (2), (3)",
	} {
		if _, err := s.Query(q); err != nil {
			t.Fatal(err)
		}
	}
	s.Kill()
	if _, err := s.Query("SELECT 1"); err == nil {
		t.Fatal("killed server still answers")
	}
	if err := s.Start(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	got, err := s.Query("SELECT sum(x) FROM t")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(got) != "6" {
		t.Errorf("sum after restart = %q, want 6 (same directory, same data)", got)
	}
	if !strings.HasPrefix(s.Addr, "127.0.0.1:") || s.Addr == "127.0.0.1:9000" {
		t.Errorf("native address %s: want a free loopback port, not the default", s.Addr)
	}
}

func TestClusterDistributedTableSeesEveryShard(t *testing.T) {
	c := StartCluster(t, 2)
	shards := c.Shards()
	if len(shards) != 2 || shards[0] == shards[1] {
		t.Fatalf("shards %v: want two distinct addresses", shards)
	}
	for i := 0; i < c.Len(); i++ {
		for _, q := range []string{
			"CREATE TABLE t_local (x UInt32) ENGINE = MergeTree() ORDER BY x",
			"CREATE TABLE t AS t_local ENGINE = Distributed(" + c.Name + ", default, t_local, x)",
		} {
			if _, err := c.Query(i, q); err != nil {
				t.Fatalf("shard %d: %v", i, err)
			}
		}
	}
	if _, err := c.Query(0, "INSERT INTO t_local VALUES (1), (2)"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Query(1, "INSERT INTO t_local VALUES (40)"); err != nil {
		t.Fatal(err)
	}
	got, err := c.Query(1, "SELECT count(), sum(shard_num) FROM system.clusters WHERE cluster = '"+c.Name+"'")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(got) != "2\t3" {
		t.Errorf("system.clusters: %q, want 2 shards numbered 1 and 2", got)
	}
	for i := 0; i < c.Len(); i++ {
		got, err := c.Query(i, "SELECT sum(x) FROM t")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(got) != "43" {
			t.Errorf("sum through the Distributed table on shard %d = %q, want 43 (both shards)", i, got)
		}
	}
	c.Kill(1)
	if _, err := c.Query(0, "SELECT sum(x) FROM t"); err == nil {
		t.Error("Distributed query answered with shard 1 down; want an error, not a partial sum")
	}
	if err := c.Start(1); err != nil {
		t.Fatal(err)
	}
	got, err = c.Query(0, "SELECT sum(x) FROM t")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(got) != "43" {
		t.Errorf("sum after shard 1 restart = %q, want 43", got)
	}
}
