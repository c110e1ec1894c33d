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
