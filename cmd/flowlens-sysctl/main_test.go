package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSetsNetfilterSysctlsAndReadsThemBack(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"nf_conntrack_acct", "nf_conntrack_timestamp"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := run([]string{"-dir", dir, "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1"}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"nf_conntrack_acct", "nf_conntrack_timestamp"} {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		if string(b) != "1" {
			t.Errorf("%s = %q, want 1", f, b)
		}
	}
}

func TestRefusesNamesOutsideNetfilter(t *testing.T) {
	dir := t.TempDir()
	for _, arg := range []string{
		"kernel.panic=1",
		"net.netfilter.../../kernel/panic=1",
		"net.netfilter.a/b=1",
		"net.netfilter.=1",
		"net.netfilter.nf_conntrack_acct",
		"net.netfilter.nf_conntrack_acct=",
	} {
		if err := run([]string{"-dir", dir, arg}); err == nil {
			t.Errorf("%q accepted", arg)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files written: %v", entries)
	}
}

func TestMissingSysctlFileFails(t *testing.T) {
	// A missing file means the mount is not the node's netfilter directory
	// (or conntrack is not loaded): creating it would hide that.
	dir := t.TempDir()
	if err := run([]string{"-dir", dir, "net.netfilter.nf_conntrack_acct=1"}); err == nil {
		t.Fatal("no error for a missing file")
	}
	if _, err := os.Stat(filepath.Join(dir, "nf_conntrack_acct")); err == nil {
		t.Error("the missing file was created")
	}
}
