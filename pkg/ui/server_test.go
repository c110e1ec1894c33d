package ui

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/servicemap"
)

// fakeSource records what the handlers asked; it validates like the real
// reader would for the parts the handlers leave to it.
type fakeSource struct {
	mapQ  *servicemap.MapQuery
	flowQ *servicemap.FlowQuery
	key   string
	err   error
}

func (f *fakeSource) Map(_ context.Context, q servicemap.MapQuery) (*servicemap.Map, error) {
	f.mapQ = &q
	if f.err != nil {
		return nil, f.err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	return &servicemap.Map{From: q.From.Unix(), To: q.To.Unix(), Rollup: true, Nodes: []servicemap.Node{}, Edges: []servicemap.Edge{}}, nil
}

func (f *fakeSource) Flows(_ context.Context, q servicemap.FlowQuery) (*servicemap.FlowPage, error) {
	f.flowQ = &q
	if f.err != nil {
		return nil, f.err
	}
	return &servicemap.FlowPage{Total: 7, Rows: []servicemap.FlowRow{}}, nil
}

func (f *fakeSource) Flow(_ context.Context, key string) (*servicemap.FlowDetail, error) {
	f.key = key
	if f.err != nil {
		return nil, f.err
	}
	return &servicemap.FlowDetail{Key: key}, nil
}

func newTestServer(t *testing.T, src Source, hosts ...string) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	assets := fstest.MapFS{"index.html": {Data: []byte("<html>flowlens</html>")}}
	s, err := New(Config{Source: src, Assets: assets, AllowedHosts: hosts}, reg)
	if err != nil {
		t.Fatal(err)
	}
	return s, reg
}

func get(t *testing.T, h http.Handler, target string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	req.Host = "127.0.0.1:8080"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var body map[string]any
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: body %q: %v", target, rec.Body.String(), err)
		}
	}
	return rec.Code, body
}

func TestMapParams(t *testing.T) {
	src := &fakeSource{}
	s, reg := newTestServer(t, src)
	code, body := get(t, s, "/api/map?from=600&to=1200&namespace=demo")
	if code != 200 || body["rollup"] != true || body["from"] != 600.0 {
		t.Fatalf("code %d body %v", code, body)
	}
	if src.mapQ.Namespace != "demo" || src.mapQ.From.Unix() != 600 || src.mapQ.To.Unix() != 1200 || src.mapQ.Source != servicemap.SourceAuto {
		t.Errorf("query %+v", src.mapQ)
	}
	if got := counterValue(t, reg, "flowlens_ui_map_queries_total"); got != 1 {
		t.Errorf("rollup maps counted %v", got)
	}
	for target, field := range map[string]string{
		"/api/map?to=1200":                                                 "from",
		"/api/map?from=600":                                                "to",
		"/api/map?from=x&to=1200":                                          "from",
		"/api/map?from=600&to=99999999999":                                 "to",
		"/api/map?from=1200&to=600":                                        "to",
		"/api/map?from=600&to=1200&source=fast":                            "source",
		"/api/map?from=600&from=700&to=1200":                               "from",
		"/api/map?from=600&to=1200&namespace=" + strings.Repeat("a", 3000): "namespace",
	} {
		code, body := get(t, s, target)
		msg, _ := body["error"].(string)
		if code != 400 || !strings.HasPrefix(msg, field+":") {
			t.Errorf("%s: %d %q, want 400 naming %s", target[:min(len(target), 60)], code, msg, field)
		}
	}
	if n := counterValue(t, reg, "flowlens_ui_errors_total"); n != 8 {
		t.Errorf("errors counted %v, want 8", n)
	}
}

func TestFlowsParams(t *testing.T) {
	src := &fakeSource{}
	s, _ := newTestServer(t, src)
	code, body := get(t, s, "/api/flows?from=1&to=2&namespace=n&pod=p&service=n/s&protocol=17&appProtocol=dns&correlation=unmatched"+
		"&q=%27%20OR%201%3D1&node=x:1.2.3.4&edge=e&sort=bytes&order=asc&limit=20&offset=40")
	if code != 200 || body["total"] != 7.0 {
		t.Fatalf("code %d body %v", code, body)
	}
	q := src.flowQ
	if q.Namespace != "n" || q.Pod != "p" || q.Service != "n/s" || q.Protocol == nil || *q.Protocol != 17 || q.AppProtocol != "dns" ||
		q.Correlation != "unmatched" || q.Text != "' OR 1=1" || q.Node != "x:1.2.3.4" || q.Edge != "e" || q.Sort != "bytes" ||
		q.Desc || q.Limit != 20 || q.Offset != 40 {
		t.Errorf("query %+v", q)
	}
	get(t, s, "/api/flows?from=1&to=2")
	if q := src.flowQ; q.Protocol != nil || !q.Desc || q.Limit != servicemap.DefaultLimit || q.Offset != 0 {
		t.Errorf("defaults %+v", q)
	}
	for target, field := range map[string]string{
		"/api/flows?from=1&to=2&protocol=256": "protocol",
		"/api/flows?from=1&to=2&limit=0":      "limit",
		"/api/flows?from=1&to=2&limit=501":    "limit",
		"/api/flows?from=1&to=2&offset=-1":    "offset",
		"/api/flows?from=1&to=2&order=up":     "order",
		"/api/flow":                           "key",
	} {
		code, body := get(t, s, target)
		if msg, _ := body["error"].(string); code != 400 || !strings.HasPrefix(msg, field+":") {
			t.Errorf("%s: %d %q", target, code, msg)
		}
	}
}

func TestErrorMapping(t *testing.T) {
	src := &fakeSource{err: errors.New("dial tcp: connection refused")}
	s, _ := newTestServer(t, src)
	// The server's error text stays in the log; the body has an id.
	if code, body := get(t, s, "/api/flow?key=1-2"); code != 502 || strings.Contains(body["error"].(string), "connection refused") ||
		!regexp.MustCompile(`^query failed \(error id [0-9a-f]{12} in the server log\)$`).MatchString(body["error"].(string)) {
		t.Errorf("server failure: %d %v", code, body)
	}
	src.err = context.DeadlineExceeded
	if code, _ := get(t, s, "/api/flows?from=1&to=2"); code != 504 {
		t.Errorf("timeout: %d", code)
	}
	src.err = servicemapInvalid("sort: nope")
	if code, body := get(t, s, "/api/flows?from=1&to=2"); code != 400 || body["error"] != "sort: nope" {
		t.Errorf("invalid: %d %v", code, body)
	}
	if code, _ := get(t, s, "/api/nothing"); code != 404 {
		t.Errorf("unknown endpoint: %d", code)
	}
}

// servicemapInvalid is an error as servicemap reports a bad query.
func servicemapInvalid(msg string) error {
	return &wrapped{msg: servicemap.ErrInvalid.Error() + ": " + msg}
}

type wrapped struct{ msg string }

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return servicemap.ErrInvalid }

func TestAssetsAndHeaders(t *testing.T) {
	s, _ := newTestServer(t, &fakeSource{}, LoopbackHosts()...)
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Host = "localhost:8080"
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "flowlens") || rec.Header().Get("X-Content-Type-Options") != "nosniff" ||
		!strings.Contains(rec.Header().Get("Content-Security-Policy"), "default-src 'self'") {
		t.Errorf("index: %d %q %v", rec.Code, rec.Body.String(), rec.Header())
	}
	for _, host := range []string{"evil.example", "evil.example:8080", "127.0.0.2"} {
		req = httptest.NewRequest(http.MethodGet, "/api/map?from=1&to=2", nil)
		req.Host = host
		rec = httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != http.StatusMisdirectedRequest {
			t.Errorf("host %s: %d", host, rec.Code)
		}
	}
	for _, host := range []string{"[::1]:8080", "127.0.0.1", "LOCALHOST:1"} {
		req = httptest.NewRequest(http.MethodGet, "/api/map?from=1&to=2", nil)
		req.Host = host
		rec = httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Errorf("host %s: %d", host, rec.Code)
		}
	}
	req = httptest.NewRequest(http.MethodPost, "/api/map?from=1&to=2", nil)
	req.Host = "localhost"
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != 405 {
		t.Errorf("POST: %d", rec.Code)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{Assets: fstest.MapFS{}}, nil); err == nil {
		t.Error("nil source accepted")
	}
	if _, err := New(Config{Source: &fakeSource{}}, nil); err == nil {
		t.Error("nil assets accepted")
	}
}

// counterValue sums a counter family's series.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
