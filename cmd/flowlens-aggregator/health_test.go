package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type fakeSinks struct{ err error }

func (f *fakeSinks) Healthy() error { return f.err }

func TestHealthAnswers503WithEveryReason(t *testing.T) {
	get := func(h *health) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	sinks := &fakeSinks{}
	h := newHealth()
	h.watchSinks(sinks)
	if code, body := get(h); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("healthy: %d %q", code, body)
	}
	sinks.err = errors.New("sink clickhouse: writes failing since 2026-01-01T00:00:00Z: connection refused")
	if code, body := get(h); code != http.StatusServiceUnavailable || !strings.Contains(body, "sink clickhouse: writes failing") {
		t.Errorf("failing sink: %d %q", code, body)
	}
	sinks.err = nil
	h.listenerStopped("tcp://0.0.0.0:4739", errors.New("accept: use of closed network connection"))
	code, body := get(h)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "listener tcp://0.0.0.0:4739 stopped: accept") {
		t.Errorf("stopped listener: %d %q", code, body)
	}
	// A listener does not come back: the sinks recovering does not hide it.
	sinks.err = errors.New("sink jsonl: stopped")
	if _, body := get(h); !strings.Contains(body, "listener tcp://0.0.0.0:4739") || !strings.Contains(body, "sink jsonl") {
		t.Errorf("both reasons not reported: %q", body)
	}
}
