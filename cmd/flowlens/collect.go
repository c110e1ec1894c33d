package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/ipfixcollect"
)

func runCollect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("collect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "tcp://127.0.0.1:4739", "where to listen: tcp://, udp:// or tls://host:port")
	tlsCert := fs.String("tls-cert", "", "server certificate (PEM) for tls://")
	tlsKey := fs.String("tls-key", "", "server private key (PEM) for tls://")
	clientCA := fs.String("tls-client-ca", "", "CA (PEM) that exporters' client certificates must chain to; requires client certificates")
	count := fs.Int("count", 0, "exit after this many records (0: no limit)")
	timeout := fs.Duration("timeout", 0, "exit after this long (0: no limit); with --count, not reaching the count is an error")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: flowlens collect [flags]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Receives IPFIX from exporters and prints one JSON object per data record,")
		fmt.Fprintln(stderr, "keyed by information-element name, to stdout. flowlens' DNS/TLS details")
		fmt.Fprintln(stderr, "(enterprise 32473, docs/ipfix-elements.md) are named too; other unknown")
		fmt.Fprintln(stderr, "IEs appear as ie<enterprise>_<id> with their bytes in hex.")
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
	if *count < 0 {
		return usagef("--count %d: must not be negative", *count)
	}
	if *timeout < 0 {
		return usagef("--timeout %v: must not be negative", *timeout)
	}
	network, addr, err := ipfixcollect.ParseListen(*listen)
	if err != nil {
		return usagef("--listen: %v", err)
	}
	if network != ipfixcollect.TLS && (*tlsCert != "" || *tlsKey != "" || *clientCA != "") {
		return usagef("--tls-cert, --tls-key and --tls-client-ca need a tls:// --listen address")
	}
	if network == ipfixcollect.TLS && (*tlsCert == "" || *tlsKey == "") {
		return usagef("tls:// needs --tls-cert and --tls-key")
	}

	col, err := ipfixcollect.New(ipfixcollect.Config{
		Network: network,
		Address: addr,
		TLS:     ipfixcollect.TLSConfig{CertFile: *tlsCert, KeyFile: *tlsKey, ClientCAFile: *clientCA},
	}, prometheus.NewRegistry())
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "flowlens collect: listening on %s://%s\n", network, col.Addr())

	timeoutCtx := ctx
	if *timeout > 0 {
		var cancel context.CancelFunc
		timeoutCtx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(timeoutCtx)
	defer cancel()
	out := bufio.NewWriter(stdout)
	var line []byte
	var writeErr error
	got := 0
	runErr := col.Run(ctx, func(r ipfixcollect.Record) {
		if writeErr != nil || (*count > 0 && got >= *count) {
			return
		}
		line = append(r.AppendJSON(line[:0]), '\n')
		if _, err := out.Write(line); err != nil {
			writeErr = err
			cancel()
			return
		}
		// Flush per record: the output is usually piped to something
		// waiting for each line.
		if err := out.Flush(); err != nil {
			writeErr = err
			cancel()
			return
		}
		got++
		if *count > 0 && got >= *count {
			cancel()
		}
	})
	switch {
	case runErr != nil:
		return runErr
	case writeErr != nil:
		return fmt.Errorf("write output: %w", writeErr)
	case *count > 0 && got < *count && errors.Is(timeoutCtx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("timeout after %v: received %d of %d records", *timeout, got, *count)
	}
	return nil
}
