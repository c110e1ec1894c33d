package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/cli"
)

func TestHelpShowsTheAgentsFlagsFirstAndExitsZero(t *testing.T) {
	var out bytes.Buffer
	err := mainErr(context.Background(), []string{"--help"}, &out)
	if code := cli.ExitCode(err); code != 0 {
		t.Fatalf("--help: exit %d (%v), want 0", code, err)
	}
	text := out.String()
	klogHeading := strings.Index(text, "Logging flags (klog):")
	if klogHeading < 0 {
		t.Fatalf("no klog heading in:\n%s", text)
	}
	for _, f := range []string{"-config", "-node-name", "-netns", "-collector", "-transport", "-listen"} {
		if i := strings.Index(text, "\n  "+f+" "); i < 0 || i > klogHeading {
			t.Errorf("flag %s missing or not before the klog flags:\n%s", f, text)
		}
	}
	if i := strings.Index(text, "\n  -v value"); i < klogHeading {
		t.Errorf("klog's -v not under its heading:\n%s", text)
	}
}

func TestBadCommandLineExitsTwoWithUsage(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"-config"}, {"stray-argument"}} {
		var out bytes.Buffer
		err := mainErr(context.Background(), args, &out)
		if code := cli.ExitCode(err); code != 2 {
			t.Errorf("%q: exit %d (%v), want 2", args, code, err)
		}
		if !strings.HasPrefix(out.String(), "flowlens-agent: ") {
			t.Errorf("%q: output does not start with the error:\n%s", args, out.String())
		}
	}
}

func TestBadConfigurationExitsOneNamingTheField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte("connections:\n  activeTimeout: -1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := mainErr(context.Background(), []string{"--config", path}, &out)
	if code := cli.ExitCode(err); code != 1 || !strings.Contains(err.Error(), "connections.activeTimeout") {
		t.Errorf("exit %d, error %v; want 1 naming connections.activeTimeout", code, err)
	}
	if out.Len() != 0 {
		t.Errorf("a configuration error printed the usage:\n%s", out.String())
	}
}
