package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// health is healthy while conntrack dumps keep succeeding: an agent whose
// source is broken exports nothing and should be restarted, not trusted.
type health struct {
	maxAge      time.Duration
	lastSuccess atomic.Int64 // Unix nanoseconds of the last good dump
}

func (h *health) ok() { h.lastSuccess.Store(time.Now().UnixNano()) }

func (h *health) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	last := h.lastSuccess.Load()
	if last == 0 {
		http.Error(w, "no conntrack dump has succeeded yet", http.StatusServiceUnavailable)
		return
	}
	if age := time.Since(time.Unix(0, last)); age > h.maxAge {
		http.Error(w, fmt.Sprintf("last good conntrack dump %s ago", age.Round(time.Millisecond)), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// serveHTTP serves /metrics and /healthz until ctx ends. The listener is
// opened before returning so a bad address fails start-up.
func serveHTTP(ctx context.Context, addr string, gatherer prometheus.Gatherer, h http.Handler) (func() error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on server.listen %s: %w", addr, err)
	}
	klog.InfoS("Serving metrics and health", "address", ln.Addr().String())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.Handle("/healthz", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	wait := func() error {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics server: %w", err)
		}
		return nil
	}
	return wait, nil
}
