package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestUIFlags(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"ui", "--help"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stderr.String(), "Usage: flowlens ui") || !strings.Contains(stderr.String(), "-clickhouse-addr") {
		t.Errorf("help: exit %d\n%s", code, stderr.String())
	}
	for _, args := range [][]string{
		{"ui", "--bogus"},
		{"ui", "--listen", "nowhere"},
		{"ui", "--clickhouse-addr", "host-without-port"},
		{"ui", "--max-edges", "0"},
		{"ui", "--query-timeout", "-1s"},
		{"ui", "extra"},
	} {
		stderr.Reset()
		if code := run(context.Background(), args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2\n%s", args, code, stderr.String())
		}
	}
}

// The subcommand serves the embedded UI and answers the API; a
// ClickHouse that cannot be reached is a 502 naming the failure, not a
// crash.
func TestUIServesAssetsAndReportsAnUnreachableServer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, []string{"ui", "--listen", "127.0.0.1:0", "--clickhouse-addr", "127.0.0.1:1", "--query-timeout", "5s"}, pw, &stderr)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no address printed: %v\n%s", err, stderr.String())
	}
	go io.Copy(io.Discard, pr)
	_, rest, _ := strings.Cut(line, "http://")
	base := "http://" + strings.Fields(rest)[0]
	base = strings.TrimSuffix(base, "/")
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(strings.ToLower(string(body)), "<html") {
		t.Errorf("index: %d %.200s", resp.StatusCode, body)
	}
	resp, err = client.Get(base + "/api/map?from=1&to=60")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(body), `"error"`) {
		t.Errorf("map with ClickHouse down: %d %s", resp.StatusCode, body)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after cancel\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ui did not stop")
	}
}
