package agent

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func healthz(t *testing.T, h *Health) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	return rec.Code, rec.Body.String()
}

// TestHealthFollowsTheLoopsDumps: healthy while dumps succeed, unhealthy
// before the first one and once the last good one is older than maxAge.
func TestHealthFollowsTheLoopsDumps(t *testing.T) {
	src := newFakeSource()
	src.failDumps(errDump)
	var health *Health
	h := newHarness(t, src, func(cfg *LoopConfig) {
		health = NewHealth(cfg.Clock, 3*time.Second)
		cfg.Health = health
	})
	if code, body := healthz(t, health); code != http.StatusServiceUnavailable || !strings.Contains(body, "no conntrack dump has succeeded") {
		t.Errorf("before any good dump: %d %q", code, body)
	}

	src.failDumps(nil)
	h.poll(at(time.Second))
	if code, body := healthz(t, health); code != http.StatusOK || body != "ok\n" {
		t.Errorf("after a good dump: %d %q", code, body)
	}

	// Dumps fail from now on: healthy until the good one is 3 s old.
	src.failDumps(errDump)
	h.poll(at(2 * time.Second))
	h.poll(at(4 * time.Second))
	if code, _ := healthz(t, health); code != http.StatusOK {
		t.Errorf("3 s after the last good dump: %d, want 200", code)
	}
	h.poll(at(4001 * time.Millisecond))
	if code, body := healthz(t, health); code != http.StatusServiceUnavailable || !strings.Contains(body, "last good conntrack dump 3.001s ago") {
		t.Errorf("past maxAge: %d %q", code, body)
	}

	src.failDumps(nil)
	h.poll(at(5 * time.Second))
	if err := health.Check(); err != nil {
		t.Errorf("after dumps recovered: %v", err)
	}
}

// TestHealthIncludesOtherStagesChecks: a stage that cannot work (the EVE
// socket removed and not recreatable) makes /healthz fail naming it, even
// while dumps succeed, and recovers with it.
func TestHealthIncludesOtherStagesChecks(t *testing.T) {
	clock := SystemClock{}
	health := NewHealth(clock, time.Minute)
	health.DumpSucceeded(clock.Now())
	var socketErr error
	health.AddCheck("eve", func() error { return socketErr })
	if code, _ := healthz(t, health); code != http.StatusOK {
		t.Fatalf("all good: %d", code)
	}
	socketErr = errors.New("socket /run/eve.sock is not ours")
	if code, body := healthz(t, health); code != http.StatusServiceUnavailable || !strings.Contains(body, "eve: socket /run/eve.sock is not ours") {
		t.Errorf("EVE socket broken: %d %q", code, body)
	}
	socketErr = nil
	if code, _ := healthz(t, health); code != http.StatusOK {
		t.Errorf("EVE socket back: %d", code)
	}
}
