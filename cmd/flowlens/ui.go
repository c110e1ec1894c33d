package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/confutil"
	"github.com/flowlens/flowlens/pkg/servicemap"
	"github.com/flowlens/flowlens/pkg/ui"
	"github.com/flowlens/flowlens/pkg/ui/web"
)

func runUI(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ui", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("clickhouse-addr", "127.0.0.1:9000", "ClickHouse native-protocol host:port (in cluster mode: any shard)")
	database := fs.String("database", "default", "database of the flows table")
	table := fs.String("table", "flows", "the aggregator's flows table (sinks.clickhouse.table; the Distributed table in cluster mode)")
	username := fs.String("username", "default", "ClickHouse user (read access suffices)")
	passwordFile := fs.String("password-file", "", "file holding the ClickHouse password")
	listen := fs.String("listen", "127.0.0.1:8080", "HTTP listen address; loopback unless you mean to expose the flows")
	queryTimeout := fs.Duration("query-timeout", 30*time.Second, "bound on one API request's queries")
	maxEdges := fs.Int("max-edges", servicemap.DefaultMaxEdges, "most edges one map returns (the busiest)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: flowlens ui [flags]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Serves the service map and flow explorer over the aggregator's ClickHouse")
		fmt.Fprintln(stderr, "table (docs/ui.md). It only reads.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return flagError(err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if err := confutil.CheckHostPort(*addr, false); err != nil {
		return usagef("--clickhouse-addr: %v", err)
	}
	if err := confutil.CheckHostPort(*listen, true); err != nil {
		return usagef("--listen: %v", err)
	}
	if *queryTimeout <= 0 {
		return usagef("--query-timeout %v: must be positive", *queryTimeout)
	}
	if *maxEdges < 1 || *maxEdges > 100000 {
		return usagef("--max-edges %d: must be within 1..100000", *maxEdges)
	}
	if *database == "" || *table == "" {
		return usagef("--database and --table must be set")
	}
	password := ""
	if *passwordFile != "" {
		b, err := os.ReadFile(*passwordFile)
		if err != nil {
			return fmt.Errorf("--password-file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	conn, err := ch.Open(&ch.Options{
		Addr:         []string{*addr},
		Auth:         ch.Auth{Database: *database, Username: *username, Password: password},
		DialTimeout:  5 * time.Second,
		MaxOpenConns: 8,
		MaxIdleConns: 2,
		// The UI only reads: readonly=2 refuses writes and DDL even if
		// the user may (2, not 1: the driver sends per-query settings),
		// and the server stops a query past the API's own bound.
		Settings: ch.Settings{
			"readonly":           2,
			"max_execution_time": int(max(*queryTimeout/time.Second, 1)),
		},
	})
	if err != nil {
		return fmt.Errorf("open clickhouse %s: %w", *addr, err)
	}
	defer conn.Close()
	reader, err := servicemap.New(servicemap.Config{Database: *database, Table: *table, MaxEdges: *maxEdges}, conn)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	cfg := ui.Config{Source: reader, Assets: web.FS(), QueryTimeout: *queryTimeout}
	if ip, ok := l.Addr().(*net.TCPAddr); ok && ip.IP.IsLoopback() {
		cfg.AllowedHosts = ui.LoopbackHosts()
	}
	srv, err := ui.New(cfg, prometheus.NewRegistry())
	if err != nil {
		l.Close()
		return err
	}
	fmt.Fprintf(stdout, "flowlens ui: http://%s/ (ClickHouse %s, table %s.%s)\n", l.Addr(), *addr, *database, *table)
	return ui.Serve(ctx, l, srv)
}
