//go:build integration

package l7e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/l7e2e"
	"github.com/flowlens/flowlens/test/netnstest"
)

var agentBin string

func TestMain(m *testing.M) {
	agenttest.RunMain(m, "l7e2e integration tests", func(dir string) (err error) {
		agentBin, err = agenttest.BuildAgent(dir)
		return err
	}, netnstest.CheckPrereqs, func() error { _, err := l7e2e.FindSuricata(); return err })
}

// Names the clients use; Suricata logs them as the HTTP hostname, the DNS
// question and the TLS SNI.
const (
	webHost   = "web.l7e2e.test"
	dnsName   = "web.l7e2e.test."
	tlsHost   = "secure.l7e2e.test"
	dnsAnswer = "10.1.2.3"
)

// world is the node, servers, agent, collector and Suricata shared by the
// subtests: Suricata takes ~10 s to start, so it is started once and the
// opt-in is changed by rewriting the inventory file the agent watches.
type world struct {
	node                *netnstest.Node
	client, server      *netnstest.Pod
	web, tlsSvc, dnsSvc netnstest.Service
	cert                l7e2e.TestCert
	inventory           string
	agent               *agenttest.Agent
	col                 *agenttest.Collector
	probe               *l7e2e.Probe
	sensor              *l7e2e.Sensor
}

// TestL7DetailsFollowTheOptInOfEitherEnd: real client-pod traffic through
// Service VIPs to a server pod, seen by real Suricata on a both-direction
// mirror of the server pod's veth, eve-log to the real agent binary, IPFIX
// to an in-process collector. Whichever end opted in (server ingress,
// client egress) the record carries the exact L7 details; with neither, it
// carries none although Suricata logged the transaction.
func TestL7DetailsFollowTheOptInOfEitherEnd(t *testing.T) {
	w := setUp(t)

	t.Run("server annotated ingress: HTTP, DNS and TLS details in its records", func(t *testing.T) {
		w.setOptIn(t, "", "ingress")
		w.checkHTTP(t, true)
		w.checkDNS(t, true)
		w.checkTLS(t)
	})
	t.Run("client annotated egress, server not: its connection is enriched", func(t *testing.T) {
		w.setOptIn(t, "egress", "")
		w.checkHTTP(t, true)
		w.checkDNS(t, true)
	})
	t.Run("neither end annotated: no L7 fields although Suricata logged them", func(t *testing.T) {
		w.setOptIn(t, "", "")
		before := w.metric(t, `flowlens_l7_events_dropped_total{reason="not_wanted"}`)
		w.checkHTTP(t, false)
		w.checkDNS(t, false)
		if after := w.metric(t, `flowlens_l7_events_dropped_total{reason="not_wanted"}`); after <= before {
			t.Errorf("not_wanted drops %v -> %v: the agent did not receive (and refuse) the events", before, after)
		}
	})
}

func setUp(t *testing.T) *world {
	t.Helper()
	w := &world{}
	w.node = netnstest.NewNodeT(t, netnstest.Config{Name: "l7e2e",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}}})
	w.client, w.server = w.node.Pod("client"), w.node.Pod("server")

	if _, err := w.server.ServeHTTP(8080); err != nil {
		t.Fatal(err)
	}
	dns, err := l7e2e.ServeDNS(w.server, 53, map[string]netip.Addr{dnsName: netip.MustParseAddr(dnsAnswer)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Close() })
	if w.cert, err = l7e2e.NewTestCert(tlsHost); err != nil {
		t.Fatal(err)
	}
	tlsSrv, err := l7e2e.ServeTLS(w.server, 443, w.cert.Cert)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tlsSrv.Close() })
	w.web = netnstest.AddServiceT(t, w.node, netnstest.Service{Name: "web", Port: 80, TargetPort: 8080, Backend: w.server})
	w.tlsSvc = netnstest.AddServiceT(t, w.node, netnstest.Service{Name: "secure", Port: 443, Backend: w.server})
	w.dnsSvc = netnstest.AddServiceT(t, w.node, netnstest.Service{Name: "dns", Port: 53, Proto: flow.ProtoUDP, Backend: w.server})

	// Short socket paths: a unix socket path is limited to 107 bytes.
	dir, err := os.MkdirTemp("", "fl-l7e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept %s (suricata.log; the agent log is above)", dir)
			return
		}
		os.RemoveAll(dir)
	})
	w.inventory = filepath.Join(dir, "inventory.yaml")
	if err := os.WriteFile(w.inventory, []byte(w.inventoryYAML("", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	w.col = agenttest.StartCollector(t)
	agentSock := filepath.Join(dir, "eve.sock")
	w.agent = agenttest.StartAgent(t, agentBin, fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
  pollInterval: 1s
connections:
  activeTimeout: 5s
  idleTimeout: 2s
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
`, w.node.Name, w.node.NetnsPath, w.col.Addr, w.inventory, agentSock))

	if w.probe, err = l7e2e.StartProbe(filepath.Join(dir, "probe.sock")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.probe.Close() })
	w.sensor, err = l7e2e.StartSensor(l7e2e.SensorConfig{Node: w.node, Pod: w.server, Dir: dir,
		EVESockets: []string{agentSock, filepath.Join(dir, "probe.sock")}})
	if err != nil {
		t.Fatal(err)
	}
	// Registered after the node's cleanup, so it runs before it.
	t.Cleanup(func() {
		if err := w.sensor.Close(); err != nil {
			t.Error(err)
		}
	})

	// Suricata needs ~10 s before it captures: request once a second until
	// it logs one of them.
	start := time.Now()
	for n := 0; ; n++ {
		res, err := w.client.HTTPGet(fmt.Sprintf("http://%s/?warmup=%d", w.web.Addr(), n))
		if err != nil {
			t.Fatalf("warm-up request: %v", err)
		}
		_, err = w.probe.Wait(time.Second, w.sensor.Done(), func(ev eve.Event) bool { return ev.HTTP != nil })
		if err == nil {
			t.Logf("Suricata logged its first HTTP transaction %s after start (request %d from %s)", time.Since(start).Round(time.Millisecond), n, res.Local)
			break
		}
		if err == l7e2e.ErrStopped {
			t.Fatal(w.sensor.ExitError())
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("Suricata logged no HTTP transaction within 60 s of start\n%s", w.sensor.LogTail(30))
		}
	}
	return w
}

// inventoryYAML lists both pods (with the given l7-export annotations,
// "" for none) and the three Services.
func (w *world) inventoryYAML(clientL7, serverL7 string) string {
	ann := func(mode string) string {
		if mode == "" {
			return ""
		}
		return fmt.Sprintf("\n    annotations: {visibility.antrea.io/l7-export: %s}", mode)
	}
	return fmt.Sprintf(`entries:
  - name: client
    group: default
    ips: [%s]%s
  - name: server
    group: default
    ips: [%s]%s
services:
  - {name: web, group: default, ips: [%s], ports: [{name: http, port: 80, protocol: TCP}]}
  - {name: secure, group: default, ips: [%s], ports: [{name: https, port: 443, protocol: TCP}]}
  - {name: dns, group: default, ips: [%s], ports: [{name: dns, port: 53, protocol: UDP}]}
`, w.client.IPv4, ann(clientL7), w.server.IPv4, ann(serverL7), w.web.VIP, w.tlsSvc.VIP, w.dnsSvc.VIP)
}

// setOptIn rewrites the inventory (atomically, as an operator's tool would)
// and waits until the agent reloaded it.
func (w *world) setOptIn(t *testing.T, clientL7, serverL7 string) {
	t.Helper()
	const reloads = `flowlens_inventory_reloads_total{result="ok"}`
	before := w.metric(t, reloads)
	tmp := w.inventory + ".tmp"
	if err := os.WriteFile(tmp, []byte(w.inventoryYAML(clientL7, serverL7)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, w.inventory); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for w.metric(t, reloads) <= before {
		if time.Now().After(deadline) {
			t.Fatalf("agent did not reload the inventory within 5 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitEvent waits for Suricata's event of a kind (http, dns response, tls)
// on the connection from local, as the probe socket received it.
func (w *world) waitEvent(t *testing.T, local netip.AddrPort, match func(eve.Event) bool) eve.Event {
	t.Helper()
	ev, err := w.probe.Wait(10*time.Second, w.sensor.Done(), func(ev eve.Event) bool { return l7e2e.Involves(ev, local) && match(ev) })
	if err == l7e2e.ErrStopped {
		t.Fatal(w.sensor.ExitError())
	}
	if err != nil {
		t.Fatalf("connection from %s: %v\n%s", local, err, w.sensor.LogTail(10))
	}
	return ev
}

// checkHTTP makes one GET through the web Service with a query string and
// a Host of its own, and checks the connection's records: with wantL7,
// appProtocolName http and exactly that transaction in httpVals (query
// dropped); otherwise no L7 field at all.
func (w *world) checkHTTP(t *testing.T, wantL7 bool) {
	t.Helper()
	// Closed as soon as the response is read, as most clients do: Suricata
	// may log the transaction after conntrack saw the close, and the
	// agent's l7.closeDelay must still get it into the final record.
	tr := w.client.HTTPClient().Transport.(*http.Transport).Clone()
	tr.DisableKeepAlives = false
	defer tr.CloseIdleConnections()
	var local netip.AddrPort
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		local = netip.MustParseAddrPort(info.Conn.LocalAddr().String())
	}}
	ctx, cancel := context.WithTimeout(httptrace.WithClientTrace(context.Background(), trace), 10*time.Second)
	defer cancel()
	const path, query, status = "/status/201", "?user=alice&token=s3cret", 201
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+w.web.Addr().String()+path+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = webHost
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != status {
		t.Fatalf("GET %s: status %d, want %d", path, resp.StatusCode, status)
	}
	tr.CloseIdleConnections()
	// Suricata logged the transaction, so a missing httpVals below is the
	// agent's doing (and, for the negative case, the opt-in's).
	ev := w.waitEvent(t, local, func(ev eve.Event) bool { return ev.HTTP != nil })
	if ev.HTTP.URL != path+query || ev.HTTP.Hostname != webHost {
		t.Fatalf("Suricata logged %+v, want the request the client sent", *ev.HTTP)
	}
	recs := finalRecords(t, w.col, local, flow.ProtoTCP, flow.EndOfFlow, 10*time.Second)
	final := recs[len(recs)-1]
	if final.Source.PodName != "client" || final.Destination.PodName != "server" || final.ServicePortName != "default/web:http" {
		t.Errorf("record names pods %q -> %q via %q, want client -> server via default/web:http (inventory context)",
			final.Source.PodName, final.Destination.PodName, final.ServicePortName)
	}
	l7 := mergeL7(t, recs)
	if !wantL7 {
		if l7 != (flow.L7{}) {
			t.Errorf("records of a connection no end opted in carry L7 %+v", l7)
		}
		return
	}
	if l7.AppProtocolName != "http" {
		t.Errorf("appProtocolName %q, want http", l7.AppProtocolName)
	}
	var vals map[string]map[string]any
	if err := json.Unmarshal([]byte(l7.HTTPVals), &vals); err != nil {
		t.Fatalf("httpVals %q is not one JSON object: %v", l7.HTTPVals, err)
	}
	if len(vals) != 1 {
		t.Fatalf("httpVals has %d transactions, want the one request: %s", len(vals), l7.HTTPVals)
	}
	for id, v := range vals {
		if _, err := strconv.ParseUint(id, 10, 64); err != nil {
			t.Errorf("httpVals key %q is not a transaction id", id)
		}
		want := map[string]any{"http_method": "GET", "hostname": webHost, "url": path, "status": float64(status), "protocol": "HTTP/1.1"}
		for k, wv := range want {
			if v[k] != wv {
				t.Errorf("httpVals[%s][%s] = %v, want %v (all: %s)", id, k, v[k], wv, l7.HTTPVals)
			}
		}
	}
	if strings.Contains(l7.HTTPVals, "s3cret") {
		t.Errorf("httpVals leaks the query string under the default privacy: %s", l7.HTTPVals)
	}
}

// checkDNS sends one A query through the dns Service (UDP) and checks the
// connection's records: with wantL7 the question, type, rcode and answer;
// otherwise no L7 field.
func (w *world) checkDNS(t *testing.T, wantL7 bool) {
	t.Helper()
	res, err := l7e2e.QueryDNS(w.client, w.dnsSvc.Addr(), dnsName)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Answers) != 1 || res.Answers[0].String() != dnsAnswer {
		t.Fatalf("DNS answer %v, want %s", res.Answers, dnsAnswer)
	}
	// UDP has no close: the record comes at the idle timeout (2 s).
	recs := finalRecords(t, w.col, res.Local, flow.ProtoUDP, flow.EndIdleTimeout, 10*time.Second)
	w.waitEvent(t, res.Local, func(ev eve.Event) bool { return ev.DNS != nil && ev.DNS.Response })
	l7 := mergeL7(t, recs)
	if !wantL7 {
		if l7 != (flow.L7{}) {
			t.Errorf("records of a DNS exchange no end opted in carry L7 %+v", l7)
		}
		return
	}
	want := flow.L7{AppProtocolName: "dns", DNSQueryName: strings.TrimSuffix(dnsName, "."),
		DNSQueryType: "A", DNSResponseCode: "NOERROR", DNSAnswers: dnsAnswer}
	if l7 != want {
		t.Errorf("DNS exchange L7 = %+v\nwant %+v", l7, want)
	}
}

// checkTLS completes a TLS 1.3 handshake with an SNI through the secure
// Service and checks the record names the protocol, the SNI and version.
func (w *world) checkTLS(t *testing.T) {
	t.Helper()
	c, err := l7e2e.DialTLS(w.client, w.tlsSvc.Addr(), tlsHost, w.cert.Pool)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	w.waitEvent(t, c.Local, func(ev eve.Event) bool { return ev.TLS != nil })
	recs := finalRecords(t, w.col, c.Local, flow.ProtoTCP, flow.EndOfFlow, 10*time.Second)
	l7 := mergeL7(t, recs)
	if l7.AppProtocolName != "tls" || l7.TLSServerName != tlsHost || l7.TLSVersion != "TLS 1.3" {
		t.Errorf("TLS connection L7 = %+v, want appProtocolName tls, tlsServerName %s, tlsVersion TLS 1.3", l7, tlsHost)
	}
	if l7.HTTPVals != "" || l7.DNSQueryName != "" {
		t.Errorf("TLS connection carries HTTP/DNS details: %+v", l7)
	}
}

// mergeL7 combines the L7 fields of a connection's records: each detail is
// exported once, on whichever record followed its event. A field set to
// two different values is an error.
func mergeL7(t *testing.T, recs []flow.Record) flow.L7 {
	t.Helper()
	var m flow.L7
	for _, r := range recs {
		for _, f := range []struct {
			name     string
			dst, src *string
		}{
			{"appProtocolName", &m.AppProtocolName, &r.L7.AppProtocolName},
			{"httpVals", &m.HTTPVals, &r.L7.HTTPVals},
			{"dnsQueryName", &m.DNSQueryName, &r.L7.DNSQueryName},
			{"dnsQueryType", &m.DNSQueryType, &r.L7.DNSQueryType},
			{"dnsResponseCode", &m.DNSResponseCode, &r.L7.DNSResponseCode},
			{"dnsAnswers", &m.DNSAnswers, &r.L7.DNSAnswers},
			{"tlsServerName", &m.TLSServerName, &r.L7.TLSServerName},
			{"tlsVersion", &m.TLSVersion, &r.L7.TLSVersion},
			{"tlsJA3", &m.TLSJA3, &r.L7.TLSJA3},
			{"tlsJA3S", &m.TLSJA3S, &r.L7.TLSJA3S},
			{"tlsJA4", &m.TLSJA4, &r.L7.TLSJA4},
		} {
			switch {
			case *f.src == "":
			case *f.dst == "":
				*f.dst = *f.src
			case *f.dst != *f.src && f.name == "httpVals":
				t.Errorf("httpVals exported twice for one connection: %s and %s", *f.dst, *f.src)
			case *f.dst != *f.src:
				t.Errorf("%s changes between records: %q then %q", f.name, *f.dst, *f.src)
			}
		}
	}
	return m
}

// metric reads one sample of the agent's /metrics; absent is 0.
func (w *world) metric(t *testing.T, series string) float64 {
	t.Helper()
	v, _ := w.agent.Metric(t, series)
	return v
}

// finalRecords waits for the connection's record with the given end reason
// and returns its records up to and including that one.
func finalRecords(t *testing.T, col *agenttest.Collector, src netip.AddrPort, proto uint8, reason flow.EndReason, within time.Duration) []flow.Record {
	t.Helper()
	arrivals := col.WaitFor(t, src, proto, reason, within)
	recs := make([]flow.Record, len(arrivals))
	for i, a := range arrivals {
		recs[i] = a.Rec
	}
	return recs
}
