package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/flowlens/flowlens/pkg/sink"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// Sinks the demo can point the aggregator at.
const (
	sinkAuto       = "auto" // ClickHouse when clickhouse-server is installed, else JSON lines
	sinkClickHouse = "clickhouse"
	sinkJSONL      = "jsonl"
)

// chTable is where the aggregator writes in the demo's private server.
const chDatabase, chTable = "default", "flows"

// clickhouseInstalled reports whether a server program is there, looked up
// the way test/clickhousetest starts one (Debian's clickhouse-server, or a
// newer single clickhouse binary).
func clickhouseInstalled() bool {
	for _, name := range []string{"clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server", "clickhouse"} {
		if _, err := exec.LookPath(name); err == nil {
			return true
		}
	}
	return false
}

// chooseSink resolves the -sink flag. With auto, a missing
// clickhouse-server selects JSON lines and why says so.
func chooseSink(flagValue string) (kind, why string, err error) {
	switch flagValue {
	case sinkClickHouse, sinkJSONL:
		return flagValue, "", nil
	case sinkAuto, "":
		if clickhouseInstalled() {
			return sinkClickHouse, "", nil
		}
		return sinkJSONL, "clickhouse-server is not installed", nil
	}
	return "", "", fmt.Errorf("-sink %q: want auto, clickhouse or jsonl", flagValue)
}

// startClickHouse starts a private clickhouse-server under dir, on free
// loopback ports. Its own start-up wait ignores ctx, so an interrupt waits
// for it (well under a second here) and then stops the server.
func startClickHouse(ctx context.Context, dir string) (*clickhousetest.Server, error) {
	srv, err := clickhousetest.New(dir)
	if err != nil {
		return nil, fmt.Errorf("prepare clickhouse-server: %w", err)
	}
	started := make(chan error, 1)
	go func() { started <- srv.Start() }()
	select {
	case err := <-started:
		if err != nil {
			return nil, fmt.Errorf("start clickhouse-server: %w", err)
		}
		return srv, nil
	case <-ctx.Done():
		if err := <-started; err == nil {
			_ = srv.Stop()
		}
		return nil, ctx.Err()
	}
}

// clickhouseLogTail is the end of the server's error log, for failures.
func clickhouseLogTail(srv *clickhousetest.Server) string {
	return fileTail(filepath.Join(srv.Dir, "log", "server.err.log"), 15)
}

// sinkReader reads back every row the aggregator has stored so far.
type sinkReader interface {
	read(ctx context.Context) ([]row, error)
	close() error
}

// chReader queries the flows table over the native protocol, the one
// clickhouse-go speaks to Debian's 18.16 (its HTTP mode does not).
type chReader struct {
	conn  driver.Conn
	query string
}

func newCHReader(addr string) (*chReader, error) {
	conn, err := ch.Open(&ch.Options{
		Addr:         []string{addr},
		Auth:         ch.Auth{Database: chDatabase, Username: "default"},
		DialTimeout:  5 * time.Second,
		MaxOpenConns: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", addr, err)
	}
	// Every output column, in insertion order, so that among rows with
	// equal totals the later one is taken as the connection's latest.
	return &chReader{conn: conn, query: clickhouse.SelectSQL(chDatabase, chTable, "ORDER BY timeInserted, batchId")}, nil
}

func (c *chReader) read(ctx context.Context) ([]row, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, err := c.conn.Query(ctx, c.query)
	if err != nil {
		return nil, fmt.Errorf("query %s.%s: %w", chDatabase, chTable, err)
	}
	defer rows.Close()
	var out []row
	for rows.Next() {
		r, err := clickhouse.ScanRow(rows)
		if err != nil {
			return nil, fmt.Errorf("read %s.%s: %w", chDatabase, chTable, err)
		}
		out = append(out, row{r})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s.%s: %w", chDatabase, chTable, err)
	}
	return out, nil
}

func (c *chReader) close() error { return c.conn.Close() }

// jsonlReader re-reads the JSON lines sink's file; it is small, and the
// aggregator only appends to it (the demo's size limit is far beyond what
// it writes, so it never rotates).
type jsonlReader struct {
	path string
	bad  int // lines of the last read that were not rows
}

func (j *jsonlReader) read(context.Context) ([]row, error) {
	b, err := os.ReadFile(j.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // nothing written yet
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", j.path, err)
	}
	// A line still being written has no newline yet: leave it for the
	// next read.
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	rows, bad := parseJSONL(b)
	j.bad = bad
	return rows, nil
}

func (j *jsonlReader) close() error { return nil }

// parseJSONL decodes one row per line; a line that is not a row (not a
// JSON object, a column of the wrong type, no source address) is counted
// and skipped, never fatal.
func parseJSONL(b []byte) (rows []row, bad int) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		r, err := sink.ParseJSONRow(line)
		if err != nil || r.Str("sourceIP") == "" {
			bad++
			continue
		}
		rows = append(rows, row{r})
	}
	return rows, bad
}
