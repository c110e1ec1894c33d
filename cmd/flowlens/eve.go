package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/l7"
)

// runEve dispatches `flowlens eve <subcommand>`; check is the only one.
func runEve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stderr, "Usage: flowlens eve check [flags] FILE...")
			return errHelp
		}
		return usagef("want 'flowlens eve check [flags] FILE...'")
	}
	return runEveCheck(ctx, args[1:], os.Stdin, stdout, stderr)
}

func runEveCheck(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("eve check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print one JSON object per parsed record, keyed by the IPFIX IE names the agent exports; counts go to stderr")
	maxLine := fs.Int("max-line-bytes", eve.DefaultMaxLineBytes, "lines longer than this are rejected as oversize")
	keepQuery := fs.Bool("keep-query", false, "with --json, keep URL query strings (the agent drops them by default)")
	keepParams := fs.Bool("keep-path-params", false, "with --json, keep URL path parameters such as ;jsessionid= (the agent drops them by default)")
	dropURL := fs.Bool("drop-url", false, "with --json, drop URLs")
	dropUA := fs.Bool("drop-user-agent", false, "with --json, drop User-Agents")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: flowlens eve check [flags] FILE...  ('-' reads stdin; .gz files are decompressed)")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Reads Suricata EVE files with the agent's parser and prints, per file, the")
		fmt.Fprintln(stderr, "parsed records by event type and the rejected lines by reason.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	// Flags may follow the files (flowlens eve check eve.json --json).
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return errHelp
			}
			return flagError(err)
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(files) == 0 {
		return usagef("no FILE given ('-' for stdin)")
	}
	if *maxLine <= 0 {
		return usagef("--max-line-bytes must be positive")
	}
	privacy := l7.Privacy{KeepQuery: *keepQuery, KeepPathParams: *keepParams, DropURL: *dropURL, DropUserAgent: *dropUA}

	out := bufio.NewWriter(stdout)
	defer out.Flush()
	summary := io.Writer(out)
	if *asJSON {
		summary = stderr
	}
	var failed []string
	for _, name := range files {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var tally eve.Tally
		var werr error
		handle := func(ev eve.Event) {
			if *asJSON && werr == nil {
				werr = writeRecordJSON(out, &ev, privacy)
			}
		}
		if err := checkFile(name, stdin, *maxLine, &tally, handle); err != nil {
			fmt.Fprintf(stderr, "flowlens eve check: %v\n", err)
			failed = append(failed, name)
			continue
		}
		if werr != nil {
			return fmt.Errorf("write output: %w", werr)
		}
		if *asJSON {
			// Keep stdout and stderr in order when both go to a terminal.
			out.Flush()
		}
		printTally(summary, name, &tally)
	}
	if len(failed) > 0 {
		return fmt.Errorf("could not read %s", strings.Join(failed, ", "))
	}
	return nil
}

func checkFile(name string, stdin io.Reader, maxLine int, tally *eve.Tally, h func(eve.Event)) error {
	var r io.Reader = stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	if strings.HasSuffix(name, ".gz") {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return fmt.Errorf("%s: gunzip: %w", name, err)
		}
		defer zr.Close()
		r = zr
	}
	if err := eve.ReadAll(r, maxLine, tally, h); err != nil {
		return fmt.Errorf("%s: read: %w", name, err)
	}
	return nil
}

func printTally(w io.Writer, name string, t *eve.Tally) {
	parsed, rejected := t.Totals()
	fmt.Fprintf(w, "%s: %d lines, %d parsed, %d rejected\n", name, parsed+rejected, parsed, rejected)
	for _, c := range t.Types() {
		fmt.Fprintf(w, "  %-16s %d\n", c.Key, c.N)
	}
	for _, c := range t.RejectedCounts() {
		fmt.Fprintf(w, "  rejected %-16s %d\n", c.Key, c.N)
	}
}

// writeRecordJSON prints what the agent would export for this event alone,
// keyed by IE name; fields are always present, as in the IPFIX template.
func writeRecordJSON(w *bufio.Writer, ev *eve.Event, p l7.Privacy) error {
	l := l7.L7Of(*ev, p)
	t := ev.Tuple
	srcName, dstName := "sourceIPv4Address", "destinationIPv4Address"
	if !t.IsIPv4() {
		srcName, dstName = "sourceIPv6Address", "destinationIPv6Address"
	}
	type kv struct {
		k string
		v any
	}
	fields := []kv{
		{srcName, t.Src().String()},
		{dstName, t.Dst().String()},
		{"sourceTransportPort", t.SrcPort},
		{"destinationTransportPort", t.DstPort},
		{"protocolIdentifier", t.Proto},
		{"appProtocolName", l.AppProtocolName},
		{"httpVals", l.HTTPVals},
	}
	for _, e := range l7.Elements() {
		fields = append(fields, kv{e.Name, e.Value(&l)})
	}
	w.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			w.WriteByte(',')
		}
		k, _ := json.Marshal(f.k)
		v, err := json.Marshal(f.v)
		if err != nil {
			return err
		}
		w.Write(k)
		w.WriteByte(':')
		w.Write(v)
	}
	_, err := w.WriteString("}\n")
	return err
}
