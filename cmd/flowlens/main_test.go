package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestHelpExitsZeroAndShowsTheCommandsFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"Usage: flowlens <command>", "collect", "eve"}},
		{[]string{"-h"}, []string{"Usage: flowlens <command>"}},
		{[]string{"help"}, []string{"Usage: flowlens <command>"}},
		{[]string{"collect", "--help"}, []string{"Usage: flowlens collect", "-listen", "-count"}},
		{[]string{"eve", "check", "--help"}, []string{"Usage: flowlens eve check", "-json", "-max-line-bytes"}},
		{[]string{"eve", "--help"}, []string{"Usage: flowlens eve check"}},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != 0 {
			t.Errorf("%q: exit %d, want 0", tc.args, code)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%q: help lacks %q:\n%s", tc.args, w, stderr.String())
			}
		}
	}
}

func TestBadFlagExitsTwoWithUsageOnce(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		err, usage string
	}{
		{[]string{"collect", "--bogus"}, "flag provided but not defined: -bogus", "Usage: flowlens collect"},
		{[]string{"collect", "--count", "many"}, `invalid value "many" for flag -count`, "Usage: flowlens collect"},
		{[]string{"eve", "check", "--bogus", "x.json"}, "flag provided but not defined: -bogus", "Usage: flowlens eve check"},
		{[]string{"--bogus"}, `unknown flag "--bogus"`, "Usage: flowlens <command>"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		out := stderr.String()
		if code != 2 {
			t.Errorf("%q: exit %d, want 2", tc.args, code)
		}
		if strings.Count(out, tc.err) != 1 || strings.Count(out, tc.usage) != 1 {
			t.Errorf("%q: want the error and the usage once each:\n%s", tc.args, out)
		}
	}
}
