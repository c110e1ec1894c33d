// Command images builds flowlens's container images without a container
// engine or a registry (`make images`), as docker-archive tarballs under
// -out that `ctr images import`, `docker load` and `podman load` read:
//
//   - flowlens-agent, flowlens-aggregator, flowlens (the CLI): the static
//     binaries from -bin on a minimal base of one layer: the binary, the
//     host's CA bundle, /etc/passwd and /etc/group (root, nobody) and a
//     1777 /tmp. No shell, no package manager. The agent image also holds
//     flowlens-sysctl, which its chart's init container runs.
//   - flowlens-suricata, flowlens-clickhouse: a Debian bookworm root file
//     system made by mmdebstrap from Debian packages (Suricata 7 from
//     bookworm-backports; Debian's clickhouse-server 18.16), as one layer.
//
// Every file time, the image's creation time and the layer order come from
// -epoch (default: the commit time of HEAD), and entries are written in
// sorted order, so the same binaries give the same image digests. The
// Debian images are as reproducible as the archive's state (mmdebstrap
// clamps times to SOURCE_DATE_EPOCH; package versions are the archive's).
//
// It lives in its own module so that the main module does not depend on
// go-containerregistry.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// spec is one image.
type spec struct {
	repo       string
	entrypoint []string
	binaries   []string // static binaries from -bin, installed at /
	debian     []string // mmdebstrap --include packages; empty = the minimal base
	user       string
}

var specs = map[string]spec{
	"agent":      {repo: "flowlens-agent", entrypoint: []string{"/flowlens-agent"}, binaries: []string{"flowlens-agent", "flowlens-sysctl"}},
	"aggregator": {repo: "flowlens-aggregator", entrypoint: []string{"/flowlens-aggregator"}, binaries: []string{"flowlens-aggregator"}, user: "65534:65534"},
	"cli":        {repo: "flowlens", entrypoint: []string{"/flowlens"}, binaries: []string{"flowlens"}, user: "65534:65534"},
	// libhtp2 must come from backports with Suricata 7 (bookworm's is for 6).
	"suricata":   {repo: "flowlens-suricata", entrypoint: []string{"/usr/bin/suricata"}, debian: []string{"suricata/bookworm-backports", "libhtp2/bookworm-backports", "ca-certificates"}},
	"clickhouse": {repo: "flowlens-clickhouse", entrypoint: []string{"/usr/bin/clickhouse-server"}, debian: []string{"clickhouse-server", "tzdata"}},
	// The real-node end-to-end test's pods (test/nodee2e/testpod, `make
	// e2e-images`), and its pod sandbox image: the same binary pausing.
	"e2e":       {repo: "flowlens-e2e", entrypoint: []string{"/flowlens-e2e-pod"}, binaries: []string{"flowlens-e2e-pod"}},
	"e2e-pause": {repo: "flowlens-e2e-pause", entrypoint: []string{"/flowlens-e2e-pod", "pause"}, binaries: []string{"flowlens-e2e-pod"}},
}

func main() {
	var (
		tag      = flag.String("tag", "", "image tag (make images: git describe)")
		binDir   = flag.String("bin", "", "directory of the static binaries")
		out      = flag.String("out", "", "output directory for <repo>.tar")
		which    = flag.String("images", "agent,aggregator,cli,suricata,clickhouse", "images to build, comma-separated")
		epoch    = flag.Int64("epoch", 0, "time of every file and of the image (default: HEAD's commit time)")
		caBundle = flag.String("ca", "/etc/ssl/certs/ca-certificates.crt", "CA bundle for the minimal base")
		sources  = flag.String("sources", "/etc/apt/sources.list.d/debian.sources,/etc/apt/sources.list.d/bookworm-backports.sources", "apt sources files mmdebstrap uses (the machine's own mirrors)")
	)
	flag.Parse()
	if err := run(*tag, *binDir, *out, *which, *epoch, *caBundle, *sources); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(tag, binDir, out, which string, epoch int64, caBundle, sources string) error {
	if tag == "" || out == "" {
		return fmt.Errorf("-tag and -out are required")
	}
	if epoch == 0 {
		b, err := exec.Command("git", "log", "-1", "--format=%ct").Output()
		if err != nil {
			return fmt.Errorf("epoch from git log (or pass -epoch): %w", err)
		}
		if epoch, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return fmt.Errorf("epoch from git log: %w", err)
		}
	}
	mtime := time.Unix(epoch, 0).UTC()
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	fmt.Printf("%-22s %-40s %12s %12s  %s\n", "IMAGE", "TAG", "COMPRESSED", "UNPACKED", "DIGEST")
	for _, w := range strings.Split(which, ",") {
		s, ok := specs[strings.TrimSpace(w)]
		if !ok {
			return fmt.Errorf("unknown image %q", w)
		}
		start := time.Now()
		var (
			layerTar string
			err      error
		)
		if len(s.debian) > 0 {
			layerTar, err = debianRootfs(s, out, epoch, strings.Split(sources, ","))
		} else {
			layerTar, err = minimalRootfs(s, binDir, caBundle, out, mtime)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s.repo, err)
		}
		res, err := writeImage(s, layerTar, tag, out, mtime)
		os.Remove(layerTar)
		if err != nil {
			return fmt.Errorf("%s: %w", s.repo, err)
		}
		fmt.Printf("%-22s %-40s %12s %12s  %s  (%s)\n", s.repo, tag, mib(res.compressed), mib(res.unpacked), res.digest, time.Since(start).Round(time.Second))
	}
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// file is one entry of the minimal base.
type file struct {
	name string
	mode int64
	dir  bool
	data []byte
}

// minimalRootfs writes the one-layer tar of a static-binary image.
func minimalRootfs(s spec, binDir, caBundle, out string, mtime time.Time) (string, error) {
	ca, err := os.ReadFile(caBundle)
	if err != nil {
		return "", fmt.Errorf("CA bundle (hack/install-deps.sh base installs ca-certificates): %w", err)
	}
	files := []file{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/ssl/", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{name: "tmp/", mode: 0o1777, dir: true},
	}
	for _, b := range s.binaries {
		data, err := os.ReadFile(filepath.Join(binDir, b))
		if err != nil {
			return "", fmt.Errorf("binary (make images builds it): %w", err)
		}
		if err := checkStatic(data); err != nil {
			return "", fmt.Errorf("%s: %w", b, err)
		}
		files = append(files, file{name: b, mode: 0o755, data: data})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: mtime, Format: tar.FormatPAX, Uname: "root", Gname: "root"}
		if f.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return "", err
		}
		if _, err := tw.Write(f.data); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	path := filepath.Join(out, s.repo+".rootfs.tar")
	return path, os.WriteFile(path, buf.Bytes(), 0o644)
}

// checkStatic refuses a dynamically linked ELF binary: the base has no
// libc, so it would fail only when the pod starts.
func checkStatic(data []byte) error {
	if !bytes.HasPrefix(data, []byte("\x7fELF")) {
		return fmt.Errorf("not an ELF binary")
	}
	if bytes.Contains(data, []byte("/lib64/ld-linux-x86-64.so")) || bytes.Contains(data, []byte("/lib/ld-linux-aarch64.so")) {
		return fmt.Errorf("dynamically linked (build with CGO_ENABLED=0)")
	}
	return nil
}

// debianRootfs runs mmdebstrap for the image's packages into a tar. The
// apt sources are the machine's own files (mmdebstrap accepts a sources
// file as its mirror argument), so no archive host is named here.
func debianRootfs(s spec, out string, epoch int64, sources []string) (string, error) {
	path := filepath.Join(out, s.repo+".rootfs.tar")
	args := []string{
		"--variant=essential", "--mode=root", "--format=tar",
		"--include=" + strings.Join(s.debian, ","),
		// Documentation, manuals and translations are most of a small
		// system; copyright files stay.
		"--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"--dpkgopt=path-exclude=/usr/share/info/*",
		// Package lists and caches are not needed at run time and differ
		// between builds.
		"--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/* \"$1\"/var/cache/ldconfig/aux-cache \"$1\"/var/log/*",
		"bookworm", path,
	}
	for _, src := range sources {
		if _, err := os.Stat(src); err != nil {
			return "", fmt.Errorf("apt sources %s (hack/install-deps.sh images writes the backports one): %w", src, err)
		}
		args = append(args, src)
	}
	cmd := exec.Command("mmdebstrap", args...)
	// A plain PATH: a python shim first in PATH makes mmdebstrap crawl.
	cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SOURCE_DATE_EPOCH="+strconv.FormatInt(epoch, 10))
	cmd.Stderr = &tail{max: 4096}
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("mmdebstrap %s: %w\n%s", strings.Join(s.debian, ","), err, cmd.Stderr)
	}
	return path, nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tail) String() string { return string(t.b) }

type result struct {
	compressed, unpacked int64
	digest               string
}

// writeImage makes a one-layer image of layerTar and writes it as
// <out>/<repo>.tar tagged repo:tag.
func writeImage(s spec, layerTar, tag, out string, mtime time.Time) (result, error) {
	layer, err := tarball.LayerFromFile(layerTar)
	if err != nil {
		return result{}, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: mtime}, CreatedBy: "flowlens hack/images", Comment: s.repo,
	}})
	if err != nil {
		return result{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return result{}, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: mtime}
	// make images builds the binaries for the machine it runs on.
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = s.entrypoint
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.User = s.user
	cf.Config.Labels = map[string]string{"org.opencontainers.image.title": s.repo, "org.opencontainers.image.version": tag}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return result{}, err
	}
	ref, err := name.NewTag(s.repo + ":" + tag)
	if err != nil {
		return result{}, fmt.Errorf("tag %q: %w", tag, err)
	}
	path := filepath.Join(out, s.repo+".tar")
	if err := tarball.WriteToFile(path, ref, img); err != nil {
		return result{}, fmt.Errorf("write %s: %w", path, err)
	}
	var r result
	if r.compressed, err = layer.Size(); err != nil {
		return result{}, err
	}
	if fi, err := os.Stat(layerTar); err == nil {
		r.unpacked = fi.Size()
	}
	d, err := img.Digest()
	if err != nil {
		return result{}, err
	}
	r.digest = d.String()
	return r, nil
}
