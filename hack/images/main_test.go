package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// fakeBinary is enough of an ELF file for checkStatic.
var fakeBinary = []byte("\x7fELF static binary")

func buildMinimal(t *testing.T, out string, mtime time.Time) result {
	t.Helper()
	bin := t.TempDir()
	for _, b := range specs["agent"].binaries {
		if err := os.WriteFile(filepath.Join(bin, b), fakeBinary, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ca := filepath.Join(bin, "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	layer, err := minimalRootfs(specs["agent"], bin, ca, out, mtime)
	if err != nil {
		t.Fatal(err)
	}
	res, err := writeImage(specs["agent"], layer, "v1.2.3-4-gabcdef", out, mtime)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestMinimalImageIsReproducibleAndHoldsOnlyTheBase(t *testing.T) {
	mtime := time.Unix(1764460800, 0).UTC()
	a, b := t.TempDir(), t.TempDir()
	ra, rb := buildMinimal(t, a, mtime), buildMinimal(t, b, mtime)
	if ra.digest != rb.digest {
		t.Errorf("two builds of the same inputs: digests %s and %s", ra.digest, rb.digest)
	}
	if rc := buildMinimal(t, t.TempDir(), mtime.Add(time.Second)); rc.digest == ra.digest {
		t.Error("the epoch does not reach the image")
	}

	img, err := tarball.ImageFromPath(filepath.Join(a, "flowlens-agent.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.Entrypoint[0] != "/flowlens-agent" || !cf.Created.Time.Equal(mtime) {
		t.Errorf("entrypoint %v created %v", cf.Config.Entrypoint, cf.Created)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	want := map[string]int64{
		"etc/": 0o755, "etc/ssl/": 0o755, "etc/ssl/certs/": 0o755, "etc/ssl/certs/ca-certificates.crt": 0o644,
		"etc/passwd": 0o644, "etc/group": 0o644, "tmp/": 0o1777, "flowlens-agent": 0o755, "flowlens-sysctl": 0o755,
	}
	tr := tar.NewReader(rc)
	var prev string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		mode, ok := want[h.Name]
		if !ok {
			t.Errorf("unexpected entry %s", h.Name)
			continue
		}
		delete(want, h.Name)
		if h.Mode != mode || h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(mtime) {
			t.Errorf("%s: mode %o uid %d gid %d mtime %v", h.Name, h.Mode, h.Uid, h.Gid, h.ModTime)
		}
		if h.Name < prev {
			t.Errorf("%s after %s: entries not sorted", h.Name, prev)
		}
		prev = h.Name
	}
	if len(want) != 0 {
		t.Errorf("missing entries: %v", want)
	}
}

func TestDynamicBinaryIsRefused(t *testing.T) {
	if err := checkStatic([]byte("\x7fELF ... /lib64/ld-linux-x86-64.so.2 ...")); err == nil {
		t.Error("dynamically linked binary accepted")
	}
	if err := checkStatic([]byte("#!/bin/sh\n")); err == nil {
		t.Error("script accepted")
	}
	if err := checkStatic(fakeBinary); err != nil {
		t.Errorf("static binary refused: %v", err)
	}
}
