//go:build integration

package dnsnames

import (
	"context"
	"testing"
	"time"
)

// TestLoad loads the program on this kernel: the verifier accepts it or
// the test fails with its log. Every program of the object is loaded.
func TestLoad(t *testing.T) {
	n, err := New(Config{}, nil)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer n.Close()
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Programs) != 1 || spec.Programs[bpfProgDnsToPod] == nil {
		t.Errorf("object programs %v, want only %s (New loads only it)", spec.Programs, bpfProgDnsToPod)
	}
	if n.objs.DnsToPod == nil {
		t.Errorf("%s not loaded", bpfProgDnsToPod)
	}
}

// TestCloseStopsRun: Close ends a running Run with nil; Run after Close
// is an error; Close twice is not.
func TestCloseStopsRun(t *testing.T) {
	n, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(context.Background()) }()
	time.Sleep(100 * time.Millisecond)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run still running 2s after Close")
	}
	if err := n.Run(context.Background()); err == nil {
		t.Error("Run on a closed Names returned nil")
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := n.Attach(1, ""); err == nil {
		t.Error("Attach after Close succeeded")
	}
}
