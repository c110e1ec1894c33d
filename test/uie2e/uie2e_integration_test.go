//go:build integration

package uie2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/clickhousetest"
	"github.com/flowlens/flowlens/test/l7e2e"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin, aggregatorBin, cliBin, chromium string

func TestMain(m *testing.M) {
	agenttest.RunMain(m, "UI browser tests", func(dir string) (err error) {
		if agentBin, err = agenttest.BuildAgent(dir); err != nil {
			return err
		}
		if aggregatorBin, err = agenttest.BuildAggregator(dir); err != nil {
			return err
		}
		cliBin = filepath.Join(dir, "flowlens")
		build := exec.Command("go", "build", "-o", cliBin, "github.com/flowlens/flowlens/cmd/flowlens")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build flowlens: %w", err)
		}
		return nil
	}, netnstest.CheckPrereqs,
		func() error { _, err := l7e2e.FindSuricata(); return err },
		func() (err error) { chromium, err = findChromium(); return err })
}

// What the client pod asks the web pod's DNS server: one name it knows,
// one it does not (NXDOMAIN, a DNS error on the map).
const (
	dnsKnown   = "web.uie2e.test."
	dnsUnknown = "nope.uie2e.test."
	dnsAnswer  = "10.1.2.3"
)

// The nodes the map must show, by id: the client's workload, the three
// Services it went through, and the web workload it reached directly.
const (
	clientNode = "w:front/Deployment/frontend"
	webSvcNode = "s:shop/web"
	dnsSvcNode = "s:shop/dns"
	echoNode   = "s:shop/echo"
	webNode    = "w:shop/Deployment/web"
	warmupNode = "s:shop/warmup"
)

// sent is one connection the test made, as the client saw it.
type sent struct {
	what     string
	src      netip.AddrPort
	edge     string // the map edge it belongs to
	payload  int64  // payload bytes client -> server
	received int64  // payload bytes server -> client
	path     string // HTTP: the request path, without its query
	status   int    // HTTP: the response status
	rcode    dnsmessage.RCode
	dns      bool
}

// TestUIShowsThePipelinesFlows: real traffic on a simulated node, seen by
// the real agent (conntrack, and Suricata's eve-log for L7), correlated by
// the real aggregator into a private ClickHouse, read by `flowlens ui`,
// shown in Debian's chromium. The map must show the nodes and edges the
// traffic made, with the connections, requests and errors the test sent
// and the bytes ClickHouse stored; clicking the web Service's edge on the
// canvas must list exactly its connections (and a click on the web
// workload's node the one direct connection); a 404's detail must show the
// HTTP transaction, both nodes' counters, its times and end reason; the
// explorer's free text, Service filter and sort must select and order the
// right rows; a range before the traffic must show an empty map.
func TestUIShowsThePipelinesFlows(t *testing.T) {
	w := setUp(t)
	conns := w.driveTraffic(t)
	w.waitStored(t, conns)
	uiURL := startUI(t, w.ch.Addr)

	b := startBrowser(t, chromium, 1600, 1000)
	out := t.ArtifactDir()

	// The map over the last hour: all of this test's traffic.
	b.open(t, uiURL, "#/map?win=1h")
	b.do(t, "draw the map", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#cy[data-placed]`)))
	nodes := map[string]map[string]string{}
	for _, n := range b.attrs(t, `tr.map-node`) {
		nodes[n["data-id"]] = n
	}
	for _, id := range []string{clientNode, webSvcNode, dnsSvcNode, echoNode, webNode, warmupNode} {
		if _, ok := nodes[id]; !ok {
			t.Errorf("map has no node %s; it has %v", id, keys(nodes))
		}
	}
	if len(nodes) != 6 {
		t.Errorf("map has %d nodes %v, want the 6 the traffic made", len(nodes), keys(nodes))
	}
	if got := nodes[clientNode]["data-kind"]; got != "workload" {
		t.Errorf("node %s kind %q, want workload", clientNode, got)
	}
	if got := nodes[webSvcNode]["data-kind"]; got != "service" {
		t.Errorf("node %s kind %q, want service", webSvcNode, got)
	}
	if got, want := b.attrs(t, `#cy`)[0]["data-nodes"], strconv.Itoa(len(nodes)); got != want {
		t.Errorf("the canvas draws %s nodes, the table lists %s", got, want)
	}

	edges := map[string]map[string]string{}
	for _, e := range b.attrs(t, `tr.map-edge`) {
		edges[e["data-id"]] = e
	}
	byEdge := map[string][]sent{}
	for _, c := range conns {
		byEdge[c.edge] = append(byEdge[c.edge], c)
	}
	for id, cs := range byEdge {
		e, ok := edges[id]
		if !ok {
			t.Errorf("map has no edge %s; it has %v", id, keys(edges))
			continue
		}
		w.checkEdge(t, id, e, cs)
	}
	// The warm-up requests have their own Service, so that the web
	// Service's edge carries only what the test counts.
	if _, ok := edges[warmupEdge(w)]; !ok {
		t.Errorf("map has no warm-up edge %s", warmupEdge(w))
	}
	if len(edges) != len(byEdge)+1 {
		t.Errorf("map has %d edges %v, want %d", len(edges), keys(edges), len(byEdge)+1)
	}
	b.screenshot(t, filepath.Join(out, "map.png"))

	// Click the web Service's edge where the canvas draws it.
	webEdge := byEdge[webEdgeID(w)]
	box := run(t, b, "canvas position", chromedp.Evaluate[[]float64](
		`(r => [r.left, r.top])(document.getElementById('cy').getBoundingClientRect())`))
	row := edges[webEdgeID(w)]
	x, errX := strconv.ParseFloat(row["data-cx"], 64)
	y, errY := strconv.ParseFloat(row["data-cy"], 64)
	if errX != nil || errY != nil {
		t.Fatalf("edge row has no canvas position: %v", row)
	}
	b.do(t, "click the web Service's edge on the canvas", 30*time.Second,
		chromedp.MouseClickXY(box[0]+x, box[1]+y),
		chromedp.WaitVisible(chromedp.CSS(`#sel-flows[data-ready] table`)))
	if got := b.attrs(t, `#selection dl`)[0]["data-edge"]; got != webEdgeID(w) {
		t.Fatalf("the click selected %q, want the edge %s", got, webEdgeID(w))
	}
	// One table row per stored record: every row of the edge's
	// connections, and nothing else.
	flows := b.attrs(t, `#sel-flows tr.flow-row`)
	gotRows := map[string]uint64{}
	for _, f := range flows {
		gotRows[f["data-source"]]++
	}
	wantRows := map[string]uint64{}
	for _, c := range webEdge {
		wantRows[c.src.String()] = w.storedTotals(t, c.src).rows
	}
	if fmt.Sprint(gotRows) != fmt.Sprint(wantRows) {
		t.Errorf("the edge lists rows (per client address) %v, want the web Service's connections' stored rows %v", gotRows, wantRows)
	}
	b.screenshot(t, filepath.Join(out, "map-edge.png"))

	// Click the web workload's node: its flows are the one connection
	// made to the pod directly, not through the Service.
	var direct []string
	for _, c := range conns {
		if strings.Contains(c.edge, "|"+webNode+"|") {
			direct = append(direct, c.src.String())
		}
	}
	node := nodes[webNode]
	nx, errX := strconv.ParseFloat(node["data-cx"], 64)
	ny, errY := strconv.ParseFloat(node["data-cy"], 64)
	if errX != nil || errY != nil {
		t.Fatalf("node row has no canvas position: %v", node)
	}
	b.do(t, "click the web workload's node on the canvas", 30*time.Second,
		chromedp.MouseClickXY(box[0]+nx, box[1]+ny),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#sel-flows[data-ready=%q] table`, webNode))))
	var gotDirect []string
	for _, f := range b.attrs(t, `#sel-flows tr.flow-row`) {
		if !slices.Contains(gotDirect, f["data-source"]) {
			gotDirect = append(gotDirect, f["data-source"])
		}
	}
	if len(direct) != 1 || fmt.Sprint(gotDirect) != fmt.Sprint(direct) {
		t.Errorf("node %s lists flows from %v, want %v", webNode, gotDirect, direct)
	}
	// Back to the edge, from its row in the side table this time.
	b.do(t, "select the web Service's edge from the table", 30*time.Second,
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr.map-edge[data-id=%q]`, webEdgeID(w)))),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#sel-flows[data-ready=%q] table`, webEdgeID(w)))))

	// The 404's detail: its HTTP transaction and both halves.
	var notFound sent
	for _, c := range webEdge {
		if c.status == http.StatusNotFound {
			notFound = c
		}
	}
	b.do(t, "open the 404's flow", 30*time.Second,
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`#sel-flows tr.flow-row[data-source=%q] td.src`, notFound.src.String()))),
		chromedp.WaitVisible(chromedp.CSS(`#flow-detail[data-ready]`)))
	txs := b.attrs(t, `#http tr.http-tx`)
	if len(txs) != 1 {
		t.Fatalf("the 404's detail shows %d HTTP transactions, want 1: %v", len(txs), txs)
	}
	if tx := txs[0]; tx["data-method"] != http.MethodGet || tx["data-url"] != notFound.path || tx["data-status"] != strconv.Itoa(notFound.status) {
		t.Errorf("HTTP transaction %s %s %s, want GET %s %d", tx["data-method"], tx["data-url"], tx["data-status"], notFound.path, notFound.status)
	}
	stored := w.storedTotals(t, notFound.src)
	bytesRow := b.texts(t, `#halves tr[data-counter="octetTotalCount"] td`)
	if len(bytesRow) != 3 {
		t.Fatalf("both-halves bytes row has %d cells: %v", len(bytesRow), bytesRow)
	}
	// One node saw both ends: each half reports the connection's bytes.
	for i, cell := range bytesRow {
		if n := digits(cell); n != stored.bytes {
			t.Errorf("both halves, bytes column %d: %q, want %d as stored", i, cell, stored.bytes)
		}
	}
	// The connection started and ended while the test ran.
	now := time.Now().Unix()
	for _, f := range []string{"flowStartSeconds", "flowEndSeconds"} {
		v := b.attrs(t, fmt.Sprintf(`#flow-detail dd[data-field=%q]`, f))
		if len(v) != 1 {
			t.Fatalf("the detail shows %s %d times", f, len(v))
		}
		if s := int64(digits(v[0]["data-value"])); s < w.started.Unix() || s > now {
			t.Errorf("%s %q, want within the test's run %d..%d", f, v[0]["data-value"], w.started.Unix(), now)
		}
	}
	if got := b.texts(t, `#flow-detail dd[data-field="flowEndReason"]`); len(got) != 1 || got[0] != "end-of-flow" {
		t.Errorf("end reason %v, want end-of-flow (the client closed the connection)", got)
	}
	b.screenshot(t, filepath.Join(out, "flow-detail.png"))

	// The explorer, filtered by free text on the URL: the connections
	// that requested it, and no other.
	const q = "/status/5"
	var wantQ, gotQ []string
	for _, c := range conns {
		if strings.Contains(c.path, q) {
			wantQ = append(wantQ, c.src.String())
		}
	}
	b.open(t, uiURL, "#/flows?win=1h&q="+q)
	for _, r := range b.attrs(t, `#explorer tr.flow-row`) {
		if !slices.Contains(gotQ, r["data-source"]) {
			gotQ = append(gotQ, r["data-source"])
		}
	}
	sort.Strings(wantQ)
	sort.Strings(gotQ)
	if len(wantQ) < 2 || strings.Join(gotQ, " ") != strings.Join(wantQ, " ") {
		t.Errorf("explorer q=%s lists flows from %v, want %v", q, gotQ, wantQ)
	}
	// The explorer's form: the dns Service's flows are the DNS queries.
	var wantDNS, gotDNS []string
	for _, c := range conns {
		if c.dns {
			wantDNS = append(wantDNS, c.src.String())
		}
	}
	b.open(t, uiURL, "#/flows?win=1h")
	b.do(t, "filter the explorer by Service with its form", 30*time.Second,
		chromedp.SendKeys(chromedp.CSS(`#flow-filters input[name="service"]`), "shop/dns"),
		chromedp.Click(chromedp.CSS(`#flow-filters button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#view[data-state="ready"][data-hash*="service="] #explorer`)))
	for _, r := range b.attrs(t, `#explorer tr.flow-row`) {
		if !slices.Contains(gotDNS, r["data-source"]) {
			gotDNS = append(gotDNS, r["data-source"])
		}
	}
	sort.Strings(wantDNS)
	sort.Strings(gotDNS)
	if len(wantDNS) == 0 || fmt.Sprint(gotDNS) != fmt.Sprint(wantDNS) {
		t.Errorf("explorer service=shop/dns lists flows from %v, want the DNS queries %v", gotDNS, wantDNS)
	}

	// Sorted by bytes (a click on the header, descending first): the
	// transfer's upload is the largest.
	var transfer sent
	for _, c := range conns {
		if c.payload > transfer.payload {
			transfer = c
		}
	}
	b.open(t, uiURL, "#/flows?win=1h")
	b.do(t, "sort the explorer by bytes", 30*time.Second,
		chromedp.Click(chromedp.CSS(`#explorer th[data-sort="bytes"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#explorer th[data-sort="bytes"][aria-sort="descending"]`)))
	rows := b.attrs(t, `#explorer tr.flow-row`)
	if len(rows) == 0 || rows[0]["data-source"] != transfer.src.String() {
		t.Errorf("sorted by bytes, the first row is %v, want the transfer from %s", rows[:min(len(rows), 1)], transfer.src)
	}
	for i := 1; i < len(rows); i++ {
		if digits(rows[i]["data-bytes"]) > digits(rows[i-1]["data-bytes"]) {
			t.Errorf("sorted by bytes descending, row %d has %s after %s", i, rows[i]["data-bytes"], rows[i-1]["data-bytes"])
		}
	}

	// A custom range that ends before the test's traffic: an empty map.
	b.open(t, uiURL, fmt.Sprintf("#/map?win=custom&from=%d&to=%d", w.started.Unix()-7200, w.started.Unix()-3600))
	if got := b.attrs(t, `#cy`)[0]["data-edges"]; got != "0" {
		t.Errorf("the map of a range before the traffic has %s edges, want 0", got)
	}
	t.Logf("screenshots in %s", out)
}

// world is the node, its pods and Services, ClickHouse and the pipeline.
type world struct {
	node                    *netnstest.Node
	client, web             *netnstest.Pod
	webSvc, dnsSvc, echoSvc netnstest.Service
	warmupSvc               netnstest.Service
	ch                      *clickhousetest.Server
	started                 time.Time // before any traffic
	probe                   *l7e2e.Probe
	sensor                  *l7e2e.Sensor
}

func webEdgeID(w *world) string {
	return fmt.Sprintf("%s|%s|%d|6", clientNode, webSvcNode, w.webSvc.Endpoint().Port())
}

func warmupEdge(w *world) string {
	return fmt.Sprintf("%s|%s|%d|6", clientNode, warmupNode, w.warmupSvc.Endpoint().Port())
}

func setUp(t *testing.T) *world {
	t.Helper()
	w := &world{started: time.Now()}
	w.ch = clickhousetest.Start(t)
	w.node = netnstest.NewNodeT(t, netnstest.Config{Name: "uie2e",
		Pods: []netnstest.PodSpec{{Name: "client", Namespace: "front"}, {Name: "web", Namespace: "shop"}}})
	w.client, w.web = w.node.Pod("client"), w.node.Pod("web")
	if _, err := w.web.ServeHTTP(8080); err != nil {
		t.Fatal(err)
	}
	dns, err := l7e2e.ServeDNS(w.web, 53, map[string]netip.Addr{dnsKnown: netip.MustParseAddr(dnsAnswer)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Close() })
	if _, err := w.web.ListenTCP(9000); err != nil {
		t.Fatal(err)
	}
	w.webSvc = netnstest.AddServiceT(t, w.node, netnstest.Service{Name: "web", Port: 80, TargetPort: 8080, Backend: w.web})
	w.warmupSvc = netnstest.AddServiceT(t, w.node, netnstest.Service{Name: "warmup", Port: 8081, TargetPort: 8080, Backend: w.web})
	w.dnsSvc = netnstest.AddServiceT(t, w.node, netnstest.Service{Name: "dns", Port: 53, Proto: flow.ProtoUDP, Backend: w.web})
	w.echoSvc = netnstest.AddServiceT(t, w.node, netnstest.Service{Name: "echo", Port: 9000, Backend: w.web})

	// Unix socket paths are limited to 107 bytes: a short directory.
	dir, err := os.MkdirTemp("", "fl-uie2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept %s (suricata.log, inventory)", dir)
			return
		}
		os.RemoveAll(dir)
	})

	agg := agenttest.StartAggregator(t, aggregatorBin, fmt.Sprintf(`aggregatorID: uie2e
listen:
  - tcp://127.0.0.1:0
shutdownTimeout: 10s
correlation:
  activeTimeout: 5s
  inactiveTimeout: 3s
sinks:
  clickhouse:
    enabled: true
    addr: %s
    database: default
    table: flows
    dialTimeout: 2s
    commitInterval: 500ms
    retryMin: 200ms
    retryMax: 2s
    flushTimeout: 5s
`, w.ch.Addr))

	inventory := filepath.Join(dir, "inventory.yaml")
	if err := os.WriteFile(inventory, []byte(w.inventoryYAML()), 0o644); err != nil {
		t.Fatal(err)
	}
	agentSock := filepath.Join(dir, "eve.sock")
	agenttest.StartAgent(t, agentBin, fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
  activeTimeout: 5s
  idleTimeout: 3s
  tickInterval: 100ms
export:
  collector: %s
  transport: tcp
  flushInterval: 200ms
  l7DetailElements: true
server:
  listen: 127.0.0.1:0
inventory:
  file: %s
l7:
  eve:
    source: unix_stream
    path: %s
`, w.node.Name, w.node.NetnsPath, agg.Addr(t, "tcp"), inventory, agentSock))

	if w.probe, err = l7e2e.StartProbe(filepath.Join(dir, "probe.sock")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.probe.Close() })
	w.sensor, err = l7e2e.StartSensor(l7e2e.SensorConfig{Node: w.node, Pod: w.web, Dir: dir,
		EVESockets: []string{agentSock, filepath.Join(dir, "probe.sock")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.sensor.Close(); err != nil {
			t.Error(err)
		}
	})
	// Suricata needs seconds before it captures: one request a second
	// through the warm-up Service until it logs one.
	start := time.Now()
	for n := 0; ; n++ {
		if _, err := w.client.HTTPGet(fmt.Sprintf("http://%s/?warmup=%d", w.warmupSvc.Addr(), n)); err != nil {
			t.Fatalf("warm-up request: %v", err)
		}
		_, err := w.probe.Wait(time.Second, w.sensor.Done(), func(ev eve.Event) bool { return ev.HTTP != nil })
		if err == nil {
			break
		}
		if errors.Is(err, l7e2e.ErrStopped) {
			t.Fatal(w.sensor.ExitError())
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("Suricata logged no HTTP transaction within 60 s\n%s", w.sensor.LogTail(30))
		}
	}
	return w
}

// inventoryYAML describes the pods (with their workloads; the web pod opts
// into L7 export of what it receives) and the Services to the agent.
func (w *world) inventoryYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, `entries:
  - {name: client, group: front, ips: [%s], workloadKind: Deployment, workloadName: frontend}
  - {name: web, group: shop, ips: [%s], workloadKind: Deployment, workloadName: web, annotations: {visibility.antrea.io/l7-export: ingress}}
services:
`, w.client.IPv4, w.web.IPv4)
	for _, s := range []netnstest.Service{w.webSvc, w.warmupSvc, w.dnsSvc, w.echoSvc} {
		proto := strings.ToUpper(flow.ProtoName(s.Proto))
		fmt.Fprintf(&b, "  - {name: %s, group: shop, ips: [%s], ports: [{name: p%d, port: %d, protocol: %s}]}\n", s.Name, s.VIP, s.Port, s.Port, proto)
	}
	return b.String()
}

// driveTraffic makes the connections the map must count: HTTP GETs with
// several statuses through the web Service, one straight to the web pod,
// a DNS answer and an NXDOMAIN through the dns Service, and a TCP
// transfer through the echo Service.
func (w *world) driveTraffic(t *testing.T) []sent {
	t.Helper()
	var out []sent
	viaSvc := webEdgeID(w)
	direct := fmt.Sprintf("%s|%s|8080|6", clientNode, webNode)
	for _, g := range []struct {
		path, edge string
		addr       netip.AddrPort
	}{
		{"/", viaSvc, w.webSvc.Addr()},
		{"/status/404", viaSvc, w.webSvc.Addr()},
		{"/status/503", viaSvc, w.webSvc.Addr()},
		{"/bytes/20000", viaSvc, w.webSvc.Addr()},
		{"/status/500", viaSvc, w.webSvc.Addr()},
		{"/status/404", direct, w.web.Addr(8080)},
	} {
		local, status, body, err := httpGet(w.client, "http://"+g.addr.String()+g.path)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sent{what: "GET " + g.path, src: local, edge: g.edge, received: body, path: g.path, status: status})
	}
	dnsEdge := fmt.Sprintf("%s|%s|53|17", clientNode, dnsSvcNode)
	for _, name := range []string{dnsKnown, dnsUnknown, dnsKnown} {
		res, err := l7e2e.QueryDNS(w.client, w.dnsSvc.Addr(), name)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sent{what: "DNS " + name, src: res.Local, edge: dnsEdge, dns: true, rcode: res.RCode})
	}
	tr, err := netnstest.SendExactly(w.client, w.echoSvc.Addr(), 300_000, 40_000)
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, sent{what: "tcp transfer", src: tr.Local, edge: fmt.Sprintf("%s|%s|9000|6", clientNode, echoNode), payload: tr.Sent, received: tr.Received})
	for _, c := range out {
		t.Logf("sent %-22s from %s (edge %s)", c.what, c.src, c.edge)
	}
	return out
}

// httpGet makes one GET on a connection of its own and reports the
// client's address, the status and the body's length.
func httpGet(pod *netnstest.Pod, url string) (local netip.AddrPort, status int, n int64, err error) {
	tr := pod.HTTPClient().Transport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		local = netip.MustParseAddrPort(info.Conn.LocalAddr().String())
	}}
	ctx, cancel := context.WithTimeout(httptrace.WithClientTrace(context.Background(), trace), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return local, 0, 0, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return local, 0, 0, fmt.Errorf("GET %s from %s: %w", url, pod, err)
	}
	defer resp.Body.Close()
	n, err = io.Copy(io.Discard, resp.Body)
	return local, resp.StatusCode, n, err
}

// totals are one connection's counters as stored: its final row's.
type totals struct {
	bytes, reverseBytes, rows uint64
	final                     bool
}

// storedTotals reads a connection's final totals straight from ClickHouse.
func (w *world) storedTotals(t *testing.T, src netip.AddrPort) totals {
	t.Helper()
	out, err := w.ch.Query(fmt.Sprintf(`SELECT max(octetTotalCount), max(reverseOctetTotalCount), count(), countIf(flowEndReason != 2)
FROM default.flows WHERE sourceIP = '%s' AND sourceTransportPort = %d`, src.Addr(), src.Port()))
	if err != nil {
		t.Fatalf("query ClickHouse: %v", err)
	}
	f := strings.Fields(out)
	if len(f) != 4 {
		t.Fatalf("query ClickHouse for %s: %q", src, out)
	}
	var v [4]uint64
	for i := range f {
		v[i], _ = strconv.ParseUint(f[i], 10, 64)
	}
	return totals{bytes: v[0], reverseBytes: v[1], rows: v[2], final: v[3] > 0}
}

// waitStored waits until every connection has its final row in ClickHouse.
func (w *world) waitStored(t *testing.T, conns []sent) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		missing := []string{}
		for _, c := range conns {
			if !w.storedTotals(t, c.src).final {
				missing = append(missing, c.what)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no final row in ClickHouse after 90 s for %v", missing)
		}
		time.Sleep(time.Second)
	}
}

// checkEdge compares an edge row the page rendered with what the test
// sent on it: connections, HTTP requests and error classes, DNS errors
// exactly; bytes as ClickHouse stored them, and at least the payload.
func (w *world) checkEdge(t *testing.T, id string, e map[string]string, cs []sent) {
	t.Helper()
	var want struct{ conns, requests, h4, h5, dnsErr, bytes, reverse, payload, received uint64 }
	for _, c := range cs {
		want.conns++
		if c.status != 0 {
			want.requests++
		}
		if c.status >= 400 && c.status < 500 {
			want.h4++
		}
		if c.status >= 500 {
			want.h5++
		}
		if c.dns && c.rcode != dnsmessage.RCodeSuccess {
			want.dnsErr++
		}
		st := w.storedTotals(t, c.src)
		want.bytes += st.bytes
		want.reverse += st.reverseBytes
		want.payload += uint64(c.payload)
		want.received += uint64(c.received)
	}
	num := func(k string) uint64 {
		v, err := strconv.ParseUint(e[k], 10, 64)
		if err != nil {
			t.Errorf("edge %s: %s = %q", id, k, e[k])
		}
		return v
	}
	check := func(k string, want uint64) {
		if got := num(k); got != want {
			t.Errorf("edge %s: %s %d, want %d", id, k, got, want)
		}
	}
	check("data-connections", want.conns)
	check("data-http4xx", want.h4)
	check("data-http5xx", want.h5)
	check("data-dns-errors", want.dnsErr)
	// A DNS edge's requests are the backend's to define (HTTP
	// transactions only, so far); its errors are checked above.
	if !cs[0].dns {
		check("data-requests", want.requests)
	}
	check("data-bytes", want.bytes)
	check("data-reverse-bytes", want.reverse)
	if num("data-bytes") < want.payload || num("data-reverse-bytes") < want.received {
		t.Errorf("edge %s: %s/%s bytes, less than the %d/%d payload bytes sent", id, e["data-bytes"], e["data-reverse-bytes"], want.payload, want.received)
	}
}

// startUI runs `flowlens ui` over the ClickHouse server on a free
// loopback port and returns the base URL it prints once it listens.
func startUI(t *testing.T, chAddr string) string {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "ui.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cliBin, "ui", "--clickhouse-addr", chAddr, "--database", "default", "--table", "flows", "--listen", "127.0.0.1:0")
	first := make(chan string, 1)
	cmd.Stdout = &firstLine{w: logFile, line: first}
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start flowlens ui: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("flowlens ui log:\n%s", b)
		}
	})
	// Its first line: "flowlens ui: http://ADDR/ (...)".
	select {
	case line := <-first:
		f := strings.Fields(line)
		if len(f) < 3 || !strings.HasPrefix(f[2], "http://") {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("flowlens ui printed %q, want its URL first\n%s", line, b)
		}
		return strings.TrimSuffix(f[2], "/")
	case err := <-exited:
		exited <- err // for the cleanup
		b, _ := os.ReadFile(logPath)
		t.Fatalf("flowlens ui exited: %v\n%s", err, b)
	case <-time.After(30 * time.Second):
		b, _ := os.ReadFile(logPath)
		t.Fatalf("flowlens ui printed no URL within 30 s\n%s", b)
	}
	return ""
}

// firstLine passes a program's output to w and sends its first line.
type firstLine struct {
	w    io.Writer
	buf  []byte
	line chan<- string
	sent bool
}

func (f *firstLine) Write(p []byte) (int, error) {
	if !f.sent {
		f.buf = append(f.buf, p...)
		if i := bytes.IndexByte(f.buf, '\n'); i >= 0 {
			f.line <- string(f.buf[:i])
			f.sent = true
		}
	}
	return f.w.Write(p)
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// digits reads a number the page printed with separators ("1,234").
func digits(s string) uint64 {
	n, _ := strconv.ParseUint(strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s), 10, 64)
	return n
}
