// Command flowlens is the user CLI: small tools around the agent's data,
// one subcommand each.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/flowlens/flowlens/pkg/cli"
)

// command is one subcommand. run gets the arguments after the subcommand
// name; it returns a usageError for bad arguments.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands is the subcommand table, one line per subcommand.
var commands = []command{
	{"collect", "receive IPFIX and print one JSON object per record", runCollect},
	{"eve", "check Suricata EVE files: eve check [--json] FILE...", runEve},
	{"ui", "serve the service map and flow explorer over ClickHouse (docs/ui.md)", runUI},
}

// usageError is an error in how the command was called that run prints
// (exit status 2). A flag the flag package rejected comes back as a
// *cli.UsageError instead: the flag package printed it with the usage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// errHelp reports that -h was asked for: usage printed, exit status 0.
var errHelp = cli.ErrHelp

// flagError wraps an error of fs.Parse other than help, which the flag
// package has already printed together with the command's usage.
func flagError(err error) error { return &cli.UsageError{Err: err} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return cli.ExitUsage
		}
		return cli.ExitOK
	}
	if strings.HasPrefix(args[0], "-") {
		// flowlens itself has no flags; they belong after a command.
		fmt.Fprintf(stderr, "flowlens: unknown flag %q (flags go after the command)\n\n", args[0])
		usage(stderr)
		return cli.ExitUsage
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		var ue *usageError
		switch {
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "flowlens %s: %v\n", c.name, err)
			return cli.ExitUsage
		case cli.ExitCode(err) == cli.ExitFailure:
			fmt.Fprintf(stderr, "flowlens %s: %v\n", c.name, err)
		}
		// Help (0) and flag errors (2) are printed already.
		return cli.ExitCode(err)
	}
	fmt.Fprintf(stderr, "flowlens: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: flowlens <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'flowlens <command> -h' for a command's flags.")
}
