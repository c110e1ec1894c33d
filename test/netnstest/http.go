package netnstest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"strconv"
	"sync/atomic"
)

// maxHTTPBytes caps GET /bytes/{n}.
const maxHTTPBytes = 64 << 20

// HTTPServer is a small web server in a pod with fixed paths:
//
//	GET /                 200 "hello from <namespace>/<pod>\n"
//	GET /status/{code}   {code} (100..599) with a one-line body
//	GET /bytes/{n}        200 with n bytes (n <= 64 MiB)
//	anything else         404
type HTTPServer struct {
	pod      *Pod
	srv      *http.Server
	port     uint16
	done     chan error
	requests atomic.Int64
}

// ServeHTTP starts the server on port (0 picks one) on all the pod's
// addresses. Node.Close stops it.
func (p *Pod) ServeHTTP(port uint16) (*HTTPServer, error) {
	l, err := p.listen("tcp", port)
	if err != nil {
		return nil, err
	}
	ln := l.(net.Listener)
	s := &HTTPServer{pod: p, port: localAddrPort(ln.Addr()).Port(), done: make(chan error, 1)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", p)
	})
	mux.HandleFunc("GET /status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 100 || code > 599 {
			http.Error(w, "status code must be 100..599", http.StatusBadRequest)
			return
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d from %s\n", code, p)
	})
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
		if err != nil || n < 0 || n > maxHTTPBytes {
			http.Error(w, fmt.Sprintf("byte count must be 0..%d", maxHTTPBytes), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.CopyN(w, zeroReader{}, n)
	})
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.requests.Add(1)
			mux.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: ioTimeout,
	}
	if err := p.node.track(s); err != nil {
		return nil, errors.Join(err, ln.Close())
	}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Port returns the listening port.
func (s *HTTPServer) Port() uint16 { return s.port }

// Addr returns the pod's IPv4 address and the listening port.
func (s *HTTPServer) Addr() netip.AddrPort { return s.pod.Addr(s.port) }

// Requests returns how many requests the server has received.
func (s *HTTPServer) Requests() int64 { return s.requests.Load() }

// Close stops the server, dropping open connections.
func (s *HTTPServer) Close() error {
	err := s.srv.Close()
	if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	if err != nil {
		return fmt.Errorf("close http server %s:%d: %w", s.pod, s.port, err)
	}
	return nil
}

// HTTPClient returns a client whose connections start in the pod. URLs must
// use IP literals. Keep-alives are off so that every request is its own
// connection, hence its own conntrack entry and flow record.
func (p *Pod) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: ioTimeout,
		Transport: &http.Transport{
			DialContext:       p.dialContext,
			DisableKeepAlives: true,
			Proxy:             nil, // never send pod traffic to a proxy from the environment
		},
	}
}

// HTTPResult is one completed request.
type HTTPResult struct {
	Status int
	Body   []byte
	// Local is the client's address and port, i.e. the flow's source.
	Local netip.AddrPort
}

// HTTPGet fetches url from the pod and reads the whole body. A non-2xx
// status is a result, not an error.
func (p *Pod) HTTPGet(url string) (HTTPResult, error) {
	var res HTTPResult
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		res.Local = localAddrPort(info.Conn.LocalAddr())
	}}
	ctx, cancel := context.WithTimeout(httptrace.WithClientTrace(context.Background(), trace), ioTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return res, fmt.Errorf("GET %s from pod %s: %w", url, p, err)
	}
	resp, err := p.HTTPClient().Do(req)
	if err != nil {
		return res, fmt.Errorf("GET %s from pod %s: %w", url, p, err)
	}
	defer resp.Body.Close()
	res.Status = resp.StatusCode
	if res.Body, err = io.ReadAll(resp.Body); err != nil {
		return res, fmt.Errorf("GET %s from pod %s: read body: %w", url, p, err)
	}
	return res, nil
}
