// Package cli gives every flowlens binary (flowlens-agent,
// flowlens-aggregator, flowlens and its subcommands) the same command-line
// behaviour:
//
//   - -h, -help and --help print the usage to fs.Output() and the program
//     exits 0;
//   - the usage lists the binary's own flags first and, when klog's flags are
//     accepted, those under a separate "Logging flags (klog):" heading, so
//     the dozen klog flags do not bury the few that matter;
//   - an unknown flag or a bad flag value prints the error and the usage to
//     fs.Output() and the program exits 2 (the flag package's and most Unix
//     tools' convention for a usage error);
//   - any other failure exits 1.
//
// A main function uses it like this:
//
//	func main() {
//		err := mainErr(os.Args[1:])
//		if cli.ExitCode(err) == cli.ExitFailure {
//			klog.ErrorS(err, "flowlens-agent failed")
//		}
//		klog.Flush()
//		os.Exit(cli.ExitCode(err))
//	}
//
//	func mainErr(args []string) error {
//		fs := flag.NewFlagSet("flowlens-agent", flag.ContinueOnError)
//		config := fs.String("config", "", "...")
//		if err := cli.Parse(fs, args, true); err != nil {
//			return err // ErrHelp or a *UsageError, already printed
//		}
//		if fs.NArg() > 0 {
//			return cli.Usagef(fs, "unexpected arguments %q", fs.Args())
//		}
//		...
//	}
//
// The flag set must be created with flag.ContinueOnError: ExitOnError would
// exit from inside Parse, before the caller can flush its logs.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"k8s.io/klog/v2"
)

// Exit statuses returned by ExitCode.
const (
	ExitOK      = 0 // success, or help was asked for
	ExitFailure = 1 // the program ran and failed
	ExitUsage   = 2 // bad command line
)

// ErrHelp is returned by Parse when -h, -help or --help was given; the usage
// has been printed and the program should exit 0 (ExitCode does that).
var ErrHelp = flag.ErrHelp

// UsageError is a bad command line. Parse and Usagef have already printed it
// (and Parse the usage) to the flag set's output, so the caller should not
// print it again; ExitCode maps it to ExitUsage.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Parse parses args into fs. With klogFlags, klog's flags (-v, -vmodule,
// -logtostderr, ...) are accepted too; they act on klog's process-wide
// settings, as klog.InitFlags(fs) would, but are listed apart in the usage.
// Parse replaces fs.Usage, so fs.Usage() prints the same text. It returns nil,
// ErrHelp, or a *UsageError; both errors have been printed already.
func Parse(fs *flag.FlagSet, args []string, klogFlags bool) error {
	out := fs.Output()
	var own []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { own = append(own, f) })
	var logging []*flag.Flag
	if klogFlags {
		klogSet := flag.NewFlagSet("klog", flag.ContinueOnError)
		klog.InitFlags(klogSet)
		klogSet.VisitAll(func(f *flag.Flag) {
			if fs.Lookup(f.Name) != nil {
				return // the binary's own flag of that name wins
			}
			fs.Var(f.Value, f.Name, f.Usage)
			logging = append(logging, fs.Lookup(f.Name))
		})
	}
	usage := func() { printUsage(out, fs.Name(), own, logging) }

	// The flag package prints errors and calls Usage itself; silence it so
	// that help and errors are printed once, here, in one format.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.SetOutput(out)
	fs.Usage = usage
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return ErrHelp
	default:
		fmt.Fprintf(out, "%s: %v\n", fs.Name(), err)
		fs.Usage()
		return &UsageError{Err: err}
	}
}

// Usagef reports a command-line problem found after Parse (unexpected
// arguments, two flags that exclude each other): it prints the message and a
// hint to run with --help, and returns a *UsageError.
func Usagef(fs *flag.FlagSet, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	fmt.Fprintf(fs.Output(), "%s: %v\nRun '%s --help' for usage.\n", fs.Name(), err, fs.Name())
	return &UsageError{Err: err}
}

// ExitCode is the process exit status for the error a main function ends
// with: ExitOK for nil and ErrHelp, ExitUsage for a *UsageError, ExitFailure
// otherwise.
func ExitCode(err error) int {
	var usage *UsageError
	switch {
	case err == nil, errors.Is(err, ErrHelp):
		return ExitOK
	case errors.As(err, &usage):
		return ExitUsage
	default:
		return ExitFailure
	}
}

func printUsage(w io.Writer, name string, own, logging []*flag.Flag) {
	fmt.Fprintf(w, "Usage of %s:\n", name)
	printFlags(w, own)
	if len(logging) > 0 {
		fmt.Fprintf(w, "\nLogging flags (klog):\n")
		printFlags(w, logging)
	}
}

// printFlags prints flags in flag.PrintDefaults' format, by building a flag
// set holding only them (the flag package has no per-flag printer).
func printFlags(w io.Writer, flags []*flag.Flag) {
	view := flag.NewFlagSet("", flag.ContinueOnError)
	view.SetOutput(w)
	for _, f := range flags {
		view.Var(f.Value, f.Name, f.Usage)
		// DefValue as registered, not the value the command line set.
		view.Lookup(f.Name).DefValue = f.DefValue
	}
	view.PrintDefaults()
}
