// Package ui serves the flowlens web UI: the embedded browser assets
// (pkg/ui/web) at / and a JSON API under /api/ (/work/notes/ui-api.md,
// docs/ui.md) answered by pkg/servicemap from ClickHouse.
package ui

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/servicemap"
)

// Source answers the API's queries (a *servicemap.Reader).
type Source interface {
	Map(ctx context.Context, q servicemap.MapQuery) (*servicemap.Map, error)
	Flows(ctx context.Context, q servicemap.FlowQuery) (*servicemap.FlowPage, error)
	Flow(ctx context.Context, key string) (*servicemap.FlowDetail, error)
}

// Config configures a Server.
type Config struct {
	Source Source
	// Assets are served at / (web.FS()); index.html at its root.
	Assets fs.FS
	// QueryTimeout bounds one API request's queries (default 30s).
	QueryTimeout time.Duration
	// AllowedHosts, when set, are the only Host header values (without
	// port) accepted: a server on loopback accepts only loopback names,
	// so a web page cannot reach it through DNS rebinding.
	AllowedHosts []string
}

// Server is the UI's HTTP handler.
type Server struct {
	cfg     Config
	mux     *http.ServeMux
	metrics *metrics
}

type metrics struct {
	requests   *prometheus.CounterVec
	errors     *prometheus.CounterVec
	mapSources *prometheus.CounterVec
	duration   *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_ui_requests_total", Help: "UI API requests by endpoint and HTTP status code.",
		}, []string{"endpoint", "code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_ui_errors_total", Help: "UI API requests that failed, by endpoint and reason (bad_request, query, host).",
		}, []string{"endpoint", "reason"}),
		mapSources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_ui_map_queries_total", Help: "Service maps answered, by source (rollup or raw rows).",
		}, []string{"source"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "flowlens_ui_query_duration_seconds", Help: "Time to answer a UI API request, by endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"endpoint"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.errors, m.mapSources, m.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register ui metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New builds the server's handler.
func New(cfg Config, reg prometheus.Registerer) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("ui config: source: must be set")
	}
	if cfg.Assets == nil {
		return nil, errors.New("ui config: assets: must be set")
	}
	if cfg.QueryTimeout == 0 {
		cfg.QueryTimeout = 30 * time.Second
	}
	if cfg.QueryTimeout < 0 {
		return nil, fmt.Errorf("ui config: queryTimeout: must be positive, got %s", cfg.QueryTimeout)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), metrics: m}
	s.mux.HandleFunc("/api/map", s.api("map", s.handleMap))
	s.mux.HandleFunc("/api/flows", s.api("flows", s.handleFlows))
	s.mux.HandleFunc("/api/flow", s.api("flow", s.handleFlow))
	s.mux.HandleFunc("/api/", s.api("unknown", func(context.Context, url.Values) (any, error) {
		return nil, &httpError{code: http.StatusNotFound, msg: "no such API endpoint"}
	}))
	s.mux.Handle("/", http.FileServerFS(cfg.Assets))
	return s, nil
}

// LoopbackHosts are the Host names a loopback listener accepts.
func LoopbackHosts() []string { return []string{"localhost", "127.0.0.1", "::1"} }

// ServeHTTP checks the Host, sets the headers every answer carries and
// dispatches.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(s.cfg.AllowedHosts) > 0 && !s.hostAllowed(r.Host) {
		s.metrics.errors.WithLabelValues("any", "host").Inc()
		writeJSON(w, http.StatusMisdirectedRequest, map[string]string{"error": "host: this server answers only to " + strings.Join(s.cfg.AllowedHosts, ", ")})
		return
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method: only GET"})
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	for _, a := range s.cfg.AllowedHosts {
		if strings.EqualFold(host, a) {
			return true
		}
	}
	return false
}

// httpError is an error with its HTTP status.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &httpError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// api wraps a handler: bounded time, JSON out, errors mapped to codes
// (bad input 400 with its reason; a failing server 502, logged, its
// message kept short of internals).
func (s *Server) api(endpoint string, h func(context.Context, url.Values) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
		defer cancel()
		v, err := h(ctx, r.URL.Query())
		code := http.StatusOK
		var he *httpError
		switch {
		case err == nil:
		case errors.As(err, &he):
			code = he.code
			s.metrics.errors.WithLabelValues(endpoint, "bad_request").Inc()
			v = map[string]string{"error": he.msg}
		case errors.Is(err, servicemap.ErrInvalid):
			code = http.StatusBadRequest
			s.metrics.errors.WithLabelValues(endpoint, "bad_request").Inc()
			v = map[string]string{"error": strings.TrimPrefix(err.Error(), servicemap.ErrInvalid.Error()+": ")}
		default:
			code = http.StatusBadGateway
			if errors.Is(err, context.DeadlineExceeded) {
				code = http.StatusGatewayTimeout
			}
			s.metrics.errors.WithLabelValues(endpoint, "query").Inc()
			// The server's error text names tables, columns and hosts: it
			// goes to the log only, and the client gets an id to find it.
			id := errorID()
			klog.ErrorS(err, "UI query failed", "endpoint", endpoint, "query", r.URL.RawQuery, "errorID", id)
			msg := "query failed"
			if code == http.StatusGatewayTimeout {
				msg = "query timed out"
			}
			v = map[string]string{"error": msg + " (error id " + id + " in the server log)"}
		}
		s.metrics.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
		s.metrics.duration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
		writeJSON(w, code, v)
	}
}

// errorID is a short random id tying a 502 to its log line.
func errorID() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "unknown"
	}
	return hex.EncodeToString(b[:])
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		klog.V(2).InfoS("Writing a UI response failed", "err", err)
	}
}

// maxParamLen bounds any one parameter before it is parsed further.
const maxParamLen = 2048

// params reads query parameters, collecting the first error.
type params struct {
	v   url.Values
	err error
}

func (p *params) fail(field, format string, args ...any) {
	if p.err == nil {
		p.err = badRequest("%s: %s", field, fmt.Sprintf(format, args...))
	}
}

func (p *params) str(field string) string {
	vs := p.v[field]
	if len(vs) == 0 {
		return ""
	}
	if len(vs) > 1 {
		p.fail(field, "given %d times", len(vs))
		return ""
	}
	if len(vs[0]) > maxParamLen {
		p.fail(field, "longer than %d bytes", maxParamLen)
		return ""
	}
	return vs[0]
}

func (p *params) int(field string, def, lo, hi int64) int64 {
	s := p.str(field)
	if s == "" {
		return def
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > hi {
		p.fail(field, "want an integer within %d..%d, got %q", lo, hi, trunc(s))
		return def
	}
	return n
}

func (p *params) window() servicemap.Window {
	const maxTime = 1<<32 - 1
	if p.str("from") == "" {
		p.fail("from", "required (Unix seconds)")
	}
	if p.str("to") == "" {
		p.fail("to", "required (Unix seconds)")
	}
	from := p.int("from", 0, 0, maxTime)
	to := p.int("to", 0, 0, maxTime)
	return servicemap.Window{From: time.Unix(from, 0).UTC(), To: time.Unix(to, 0).UTC()}
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func (s *Server) handleMap(ctx context.Context, v url.Values) (any, error) {
	p := &params{v: v}
	q := servicemap.MapQuery{Window: p.window(), Namespace: p.str("namespace")}
	src, err := servicemap.ParseSource(p.str("source"))
	if p.err != nil {
		return nil, p.err
	}
	if err != nil {
		return nil, err
	}
	q.Source = src
	m, err := s.cfg.Source.Map(ctx, q)
	if err != nil {
		return nil, err
	}
	source := "raw"
	if m.Rollup {
		source = "rollup"
	}
	s.metrics.mapSources.WithLabelValues(source).Inc()
	return m, nil
}

func (s *Server) handleFlows(ctx context.Context, v url.Values) (any, error) {
	p := &params{v: v}
	q := servicemap.FlowQuery{
		Window:      p.window(),
		Namespace:   p.str("namespace"),
		Pod:         p.str("pod"),
		Service:     p.str("service"),
		AppProtocol: p.str("appProtocol"),
		Correlation: p.str("correlation"),
		Text:        p.str("q"),
		Node:        p.str("node"),
		Edge:        p.str("edge"),
		Sort:        p.str("sort"),
		Limit:       int(p.int("limit", servicemap.DefaultLimit, 1, servicemap.MaxLimit)),
		Offset:      int(p.int("offset", 0, 0, servicemap.MaxOffset)),
	}
	if p.str("protocol") != "" {
		proto := uint8(p.int("protocol", 0, 0, 255))
		q.Protocol = &proto
	}
	switch o := p.str("order"); o {
	case "", "desc":
		q.Desc = true
	case "asc":
	default:
		p.fail("order", "want asc or desc, got %q", trunc(o))
	}
	if p.err != nil {
		return nil, p.err
	}
	return s.cfg.Source.Flows(ctx, q)
}

func (s *Server) handleFlow(ctx context.Context, v url.Values) (any, error) {
	p := &params{v: v}
	key := p.str("key")
	if key == "" {
		p.fail("key", "required")
	}
	if p.err != nil {
		return nil, p.err
	}
	return s.cfg.Source.Flow(ctx, key)
}

// Serve serves h on l until ctx ends, then shuts down gracefully.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve ui on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down ui server: %w", err)
	}
	return nil
}
