//go:build integration

package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/flowlens/flowlens/pkg/servicemap"
	"github.com/flowlens/flowlens/pkg/sink/clickhouse"
	"github.com/flowlens/flowlens/test/clickhousetest"
)

// The API end to end over a real server: the JSON the frontend reads,
// and hostile parameters refused or matched as text.
func TestAPIOverClickHouse(t *testing.T) {
	s := clickhousetest.Start(t)
	w, err := clickhouse.New(clickhouse.Config{Addr: s.Addr, Aggregator: "test", Rollup: &clickhouse.RollupConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Truncate(time.Minute).Add(2 * time.Minute).Unix()
	if _, err := s.Query(fmt.Sprintf(`INSERT INTO default.flows (flowStartSeconds, flowEndSeconds, flowEndReason, sourceIP, destinationIP,
		destinationTransportPort, protocolIdentifier, sourcePodNamespace, sourcePodName, sourceWorkloadKind, sourceWorkloadName,
		destinationPodNamespace, destinationPodName, destinationServicePortName, appProtocolName, octetDeltaCount, reverseOctetDeltaCount,
		httpRequests, http5xx, connectionKey) VALUES
		(toDateTime(%[1]d), toDateTime(%[1]d + 5), 3, '10.0.0.1', '10.0.1.1', 8080, 6, 'demo', 'web-1', 'Deployment', 'web', 'demo', 'api-1', 'demo/api:http', 'http', 100, 900, 2, 1, 5),
		(toDateTime(%[1]d), toDateTime(%[1]d + 65), 3, '10.0.0.2', '10.0.1.1', 8080, 6, 'demo', 'web-2', 'Deployment', 'web', 'demo', 'api-1', 'demo/api:http', 'http', 50, 100, 1, 0, 6)`, t0)); err != nil {
		t.Fatal(err)
	}
	conn, err := ch.Open(&ch.Options{Addr: []string{s.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	reader, err := servicemap.New(servicemap.Config{}, conn)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Source: reader, Assets: fstest.MapFS{"index.html": {Data: []byte("x")}}, AllowedHosts: LoopbackHosts()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	call := func(path string, v url.Values) (int, string) {
		req := httptest.NewRequest(http.MethodGet, path+"?"+v.Encode(), nil)
		req.Host = "127.0.0.1:8080"
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	win := url.Values{"from": {fmt.Sprint(t0)}, "to": {fmt.Sprint(t0 + 120)}}

	code, body := call("/api/map", win)
	var m servicemap.Map
	if err := json.Unmarshal([]byte(body), &m); code != 200 || err != nil {
		t.Fatalf("map: %d %s %v", code, body, err)
	}
	if !m.Rollup || len(m.Edges) != 1 || len(m.Nodes) != 2 {
		t.Fatalf("map %s", body)
	}
	e := m.Edges[0]
	if e.ID != "w:demo/Deployment/web|s:demo/api|8080|6" || e.Bytes != 150 || e.ReverseBytes != 1000 || e.Connections != 2 || e.Requests != 3 || e.HTTP5xx != 1 {
		t.Errorf("edge %+v", e)
	}

	v := url.Values{"edge": {e.ID}, "sort": {"bytes"}, "order": {"asc"}}
	for k, x := range win {
		v[k] = x
	}
	code, body = call("/api/flows", v)
	var page servicemap.FlowPage
	if err := json.Unmarshal([]byte(body), &page); code != 200 || err != nil || page.Total != 2 || len(page.Rows) != 2 || page.Rows[0].Bytes != 50 {
		t.Fatalf("flows by edge: %d %s", code, body)
	}
	code, body = call("/api/flow", url.Values{"key": {page.Rows[1].Key}})
	if code != 200 || !strings.Contains(body, `"octetDeltaCount":100`) || !strings.Contains(body, `"records":[{`) {
		t.Errorf("flow: %d %.300s", code, body)
	}

	for name, hv := range map[string]url.Values{
		"namespace": {"namespace": {`demo' OR '1'='1`}},
		"q":         {"q": {`'); DROP TABLE flows; --`}},
		"node":      {"node": {`x:' OR 1=1 --`}},
	} {
		for k, x := range win {
			hv[k] = x
		}
		code, body := call("/api/flows", hv)
		if code != 200 || !strings.HasPrefix(body, `{"total":0,`) {
			t.Errorf("%s: %d %s", name, code, body)
		}
	}
	long := url.Values{"q": {strings.Repeat("'", 10*1024)}}
	for k, x := range win {
		long[k] = x
	}
	if code, body := call("/api/flows", long); code != 400 || !strings.Contains(body, `"error":"q: `) {
		t.Errorf("10 kB q: %d %s", code, body)
	}
	if out, err := s.Query("SELECT count() FROM default.flows"); err != nil || strings.TrimSpace(out) != "2" {
		t.Errorf("table after hostile input: %q %v", out, err)
	}
}
