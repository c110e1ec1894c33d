//go:build integration

package uie2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// findChromium returns Debian's chromium. The test never downloads a
// browser: hack/install-deps.sh installs the package.
func findChromium() (string, error) {
	for _, name := range []string{"chromium", "/usr/bin/chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("chromium is not installed (hack/install-deps.sh chromium installs Debian's package)")
}

// browser is one headless chromium tab, closed when the test ends; the
// page's uncaught exceptions and console errors are collected, and any
// fails the test.
type browser struct {
	ctx    context.Context
	mu     sync.Mutex
	errors []string
}

// startBrowser starts chromium headless with a fixed window size, so
// screenshots and canvas coordinates do not depend on the machine.
func startBrowser(t testing.TB, execPath string, width, height int) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(execPath),
		chromedp.Flag("headless", "new"),
		// Root in a container: chromium's sandbox needs user namespaces.
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.WindowSize(width, height),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	if err := chromedp.Do(ctx); err != nil {
		cancelTab()
		cancelAlloc()
		t.Fatalf("start chromium %s: %v", execPath, err)
	}
	b := &browser{ctx: ctx}
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		for m, err := range chromedp.Console(ctx) {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == "error" {
				b.mu.Lock()
				b.errors = append(b.errors, m.String())
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		<-consoleDone
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.errors {
			t.Errorf("page error: %s", e)
		}
	})
	return b
}

// do runs actions with a deadline, failing the test with what was being
// done.
func (b *browser) do(t testing.TB, what string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// run runs one action returning a value.
func run[T any](t testing.TB, b *browser, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// open navigates to base+fragment and waits until the page rendered that
// fragment's view with its data (the UI marks #view with the fragment it
// rendered): a fragment change keeps the document, so waiting for an
// element alone could see the previous view's.
func (b *browser) open(t testing.TB, base, fragment string) {
	t.Helper()
	b.do(t, "open "+fragment, 30*time.Second, chromedp.Navigate(base+"/"+fragment))
	ready := fmt.Sprintf(`(v => v.dataset.state === 'ready' && v.dataset.hash === %q)(document.getElementById('view'))`, fragment)
	run(t, b, "render "+fragment, chromedp.Poll[bool](ready, chromedp.WithPollingTimeout(19*time.Second)))
}

// screenshot writes a PNG of the whole page to path.
func (b *browser) screenshot(t testing.TB, path string) {
	t.Helper()
	png := run(t, b, "screenshot", chromedp.FullScreenshot(100))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatalf("write screenshot: %v", err)
	}
	t.Logf("screenshot %s (%d bytes)", path, len(png))
}

// attrs returns the attributes of every element matching the CSS selector
// (none: an empty slice, without waiting).
func (b *browser) attrs(t testing.TB, css string) []map[string]string {
	t.Helper()
	return run(t, b, fmt.Sprintf("read %s", css), chromedp.Evaluate[[]map[string]string](fmt.Sprintf(
		`Array.from(document.querySelectorAll(%q)).map(e => Object.fromEntries(Array.from(e.attributes).map(a => [a.name, a.value])))`, css)))
}

// texts returns the text of every element matching the CSS selector.
func (b *browser) texts(t testing.TB, css string) []string {
	t.Helper()
	return run(t, b, fmt.Sprintf("read text of %s", css), chromedp.Evaluate[[]string](fmt.Sprintf(
		`Array.from(document.querySelectorAll(%q)).map(e => e.innerText)`, css)))
}
