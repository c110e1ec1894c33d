package web

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The embedded UI is exactly the three built files, and the page loads
// the other two.
func TestFSHoldsTheBuiltUI(t *testing.T) {
	var names []string
	err := fs.WalkDir(FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names, " "); got != "app.css app.js index.html" {
		t.Fatalf("embedded files %q, want app.css app.js index.html", got)
	}
	index, err := fs.ReadFile(FS(), "index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{`src="app.js"`, `href="app.css"`} {
		if !bytes.Contains(index, []byte(ref)) {
			t.Errorf("index.html does not load %s", ref)
		}
	}
	// Relative references: the UI works behind a path prefix.
	if bytes.Contains(index, []byte(`="/`)) {
		t.Errorf("index.html has an absolute path reference")
	}
}

// dist/ is committed: it must be what `make generate` builds from the
// sources now (build.mjs writes the hash of what it read).
func TestDistIsBuiltFromTheCurrentSources(t *testing.T) {
	inputs := []string{"build.mjs", "package.json", "package-lock.json"}
	src, err := os.ReadDir("src")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range src {
		inputs = append(inputs, "src/"+e.Name())
	}
	sort.Strings(inputs)
	h := sha256.New()
	for _, f := range inputs {
		b, err := os.ReadFile(filepath.FromSlash(f))
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(f + "\x00"))
		h.Write(b)
		h.Write([]byte{0})
	}
	want, err := os.ReadFile(filepath.Join("dist", ".sources.sha256"))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.TrimSpace(string(want)) {
		t.Fatalf("dist/ was built from other sources (hash %s, dist/.sources.sha256 %s): run `make generate` and commit dist/", got, strings.TrimSpace(string(want)))
	}
}
