package cli

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

func newSet(out *bytes.Buffer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("prog", flag.ContinueOnError)
	fs.SetOutput(out)
	config := fs.String("config", "", "path of the configuration")
	return fs, config
}

func TestParseHelpListsOwnFlagsBeforeKlog(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help"} {
		var out bytes.Buffer
		fs, _ := newSet(&out)
		err := Parse(fs, []string{arg}, true)
		if !errors.Is(err, ErrHelp) {
			t.Fatalf("%s: err = %v, want ErrHelp", arg, err)
		}
		if code := ExitCode(err); code != ExitOK {
			t.Errorf("%s: exit code %d, want 0", arg, code)
		}
		text := out.String()
		own := strings.Index(text, "-config string")
		heading := strings.Index(text, "Logging flags (klog):")
		v := strings.Index(text, "\n  -v value")
		if !strings.HasPrefix(text, "Usage of prog:\n") || own < 0 || heading < own || v < heading {
			t.Errorf("%s: usage not in the order own flags, klog heading, klog flags:\n%s", arg, text)
		}
		if strings.Count(text, "Usage of prog:") != 1 {
			t.Errorf("%s: usage printed %d times", arg, strings.Count(text, "Usage of prog:"))
		}
	}
}

func TestParseWithoutKlogHasNoKlogFlags(t *testing.T) {
	var out bytes.Buffer
	fs, _ := newSet(&out)
	if err := Parse(fs, []string{"--help"}, false); !errors.Is(err, ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(out.String(), "klog") || fs.Lookup("v") != nil {
		t.Errorf("klog flags present without klogFlags:\n%s", out.String())
	}
}

func TestParseBadFlagIsUsageError(t *testing.T) {
	var out bytes.Buffer
	fs, _ := newSet(&out)
	err := Parse(fs, []string{"-nope"}, true)
	var usage *UsageError
	if !errors.As(err, &usage) || ExitCode(err) != ExitUsage {
		t.Fatalf("err = %v (exit %d), want *UsageError, exit 2", err, ExitCode(err))
	}
	text := out.String()
	if !strings.HasPrefix(text, "prog: flag provided but not defined: -nope\nUsage of prog:\n") {
		t.Errorf("output does not start with the error then the usage:\n%s", text)
	}
}

func TestParseSetsOwnAndKlogFlags(t *testing.T) {
	var out bytes.Buffer
	fs, config := newSet(&out)
	if err := Parse(fs, []string{"-config", "a.yaml", "-v", "0", "rest"}, true); err != nil {
		t.Fatal(err)
	}
	if *config != "a.yaml" || fs.Lookup("v").Value.String() != "0" || fs.NArg() != 1 {
		t.Errorf("config=%q v=%s args=%q", *config, fs.Lookup("v").Value, fs.Args())
	}
	if out.Len() != 0 {
		t.Errorf("successful parse printed %q", out.String())
	}
}

func TestUsagefAndExitCodes(t *testing.T) {
	var out bytes.Buffer
	fs, _ := newSet(&out)
	err := Usagef(fs, "unexpected arguments %q", []string{"x"})
	if ExitCode(err) != ExitUsage || !strings.Contains(out.String(), `prog: unexpected arguments ["x"]`) ||
		!strings.Contains(out.String(), "prog --help") {
		t.Errorf("exit %d, output %q", ExitCode(err), out.String())
	}
	if ExitCode(nil) != ExitOK || ExitCode(errors.New("boom")) != ExitFailure {
		t.Error("nil must exit 0 and other errors 1")
	}
}
