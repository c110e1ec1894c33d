package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"strings"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/l7e2e"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The demo node: a client pod; a web pod serving HTTP, TLS and DNS behind
// three Services (the pod opted into L7 export, see inventoryYAML); an echo
// server behind a TCP and a UDP Service.
const (
	nodeName = "demo-node"
	webPort  = 8080
	tlsPort  = 443 // Suricata looks for TLS on 443 first
	dnsPort  = 53  // and for DNS only on 53
	echoPort = 9000
	udpPort  = 5353

	// What the client asks the web pod's DNS and TLS servers.
	dnsName   = "web.demo.test."
	dnsAnswer = "10.96.0.1"
	tlsName   = "secure.demo.test"

	tcpUp, tcpDown = 1 << 20, 64 << 10 // TCP transfer through the echo Service
	udpUp, udpDown = 4096, 2048        // UDP exchange through the echo-udp Service
)

// httpPaths are the GETs sent through the web Service, one connection each.
// The query string shows the default L7 privacy: it is not exported.
func httpPaths() []string {
	return []string{"/", "/status/404?user=alice", "/bytes/100000", "/"}
}

// topology is the demo node and what runs on it.
type topology struct {
	node                    *netnstest.Node
	client, web, echo       *netnstest.Pod
	webSvc, echoSvc, udpSvc netnstest.Service
	tlsSvc, dnsSvc          netnstest.Service
	cert                    l7e2e.TestCert
	closers                 []interface{ Close() error } // DNS and TLS servers
}

// close stops the servers the demo started itself and removes the node.
func (t *topology) close() error {
	var errs []error
	for _, c := range t.closers {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := t.node.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// buildTopology creates the node, starts the servers and installs the
// Services. The caller calls t.close (also on error, when t is non-nil).
func buildTopology() (*topology, error) {
	node, err := netnstest.NewNode(netnstest.Config{
		Name: nodeName,
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "web"}, {Name: "echo"}},
	})
	if err != nil {
		return nil, err
	}
	t := &topology{node: node, client: node.Pod("client"), web: node.Pod("web"), echo: node.Pod("echo")}
	if _, err := t.web.ServeHTTP(webPort); err != nil {
		return t, err
	}
	dns, err := l7e2e.ServeDNS(t.web, dnsPort, map[string]netip.Addr{dnsName: netip.MustParseAddr(dnsAnswer)})
	if err != nil {
		return t, err
	}
	t.closers = append(t.closers, dns)
	if t.cert, err = l7e2e.NewTestCert(tlsName); err != nil {
		return t, err
	}
	tlsSrv, err := l7e2e.ServeTLS(t.web, tlsPort, t.cert.Cert)
	if err != nil {
		return t, err
	}
	t.closers = append(t.closers, tlsSrv)
	if _, err := t.echo.ListenTCP(echoPort); err != nil {
		return t, err
	}
	if _, err := t.echo.ListenUDP(udpPort); err != nil {
		return t, err
	}
	if t.webSvc, err = node.AddService(netnstest.Service{Name: "web", Port: 80, TargetPort: webPort, Backend: t.web}); err != nil {
		return t, err
	}
	if t.echoSvc, err = node.AddService(netnstest.Service{Name: "echo", Port: echoPort, Backend: t.echo}); err != nil {
		return t, err
	}
	if t.udpSvc, err = node.AddService(netnstest.Service{Name: "echo-udp", Port: 53, TargetPort: udpPort, Proto: flow.ProtoUDP, Backend: t.echo}); err != nil {
		return t, err
	}
	if t.tlsSvc, err = node.AddService(netnstest.Service{Name: "web-tls", Port: 443, TargetPort: tlsPort, Backend: t.web}); err != nil {
		return t, err
	}
	t.dnsSvc, err = node.AddService(netnstest.Service{Name: "dns", Port: 53, TargetPort: dnsPort, Proto: flow.ProtoUDP, Backend: t.web})
	return t, err
}

// expected is one connection the demo made, as the client saw it.
type expected struct {
	What     string // human label: "GET /status/404"
	Proto    uint8
	Src      netip.AddrPort // client pod address and ephemeral port
	Service  netnstest.Service
	Sent     int64 // payload bytes, client -> server
	Received int64 // payload bytes, server -> client
}

// Dst is the endpoint the Service sends the connection to.
func (e expected) Dst() netip.AddrPort { return e.Service.Endpoint() }

// driveTraffic runs the HTTP GETs, a DNS query, a TLS handshake, the TCP
// transfer and the UDP exchange from the client pod, each through its
// Service VIP.
func (t *topology) driveTraffic() ([]expected, error) {
	var out []expected
	for _, path := range httpPaths() {
		res, err := t.httpGet("http://" + t.webSvc.Addr().String() + path)
		if err != nil {
			return out, err
		}
		out = append(out, expected{
			What: fmt.Sprintf("GET %s -> %d", path, res.Status), Proto: flow.ProtoTCP,
			Src: res.Local, Service: t.webSvc, Received: int64(len(res.Body)),
		})
	}
	dns, err := l7e2e.QueryDNS(t.client, t.dnsSvc.Addr(), dnsName)
	if err != nil {
		return out, err
	}
	out = append(out, expected{What: fmt.Sprintf("DNS A %s -> %v", strings.TrimSuffix(dnsName, "."), dns.Answers), Proto: flow.ProtoUDP,
		Src: dns.Local, Service: t.dnsSvc})
	tc, err := l7e2e.DialTLS(t.client, t.tlsSvc.Addr(), tlsName, t.cert.Pool)
	if err != nil {
		return out, err
	}
	out = append(out, expected{What: "TLS " + tlsName, Proto: flow.ProtoTCP, Src: tc.Local, Service: t.tlsSvc})
	if err := tc.Close(); err != nil {
		return out, err
	}
	tr, err := netnstest.SendExactly(t.client, t.echoSvc.Addr(), tcpUp, tcpDown)
	if err != nil {
		return out, err
	}
	out = append(out, expected{What: "tcp transfer", Proto: flow.ProtoTCP, Src: tr.Local, Service: t.echoSvc, Sent: tr.Sent, Received: tr.Received})
	tr, err = netnstest.SendUDP(t.client, t.udpSvc.Addr(), udpUp, udpDown)
	if err != nil {
		return out, err
	}
	out = append(out, expected{What: "udp exchange", Proto: flow.ProtoUDP, Src: tr.Local, Service: t.udpSvc, Sent: tr.Sent, Received: tr.Received})
	return out, nil
}

// httpGet is netnstest.Pod.HTTPGet on a connection of its own, closed as
// soon as the response is read, and reports the client's address.
func (t *topology) httpGet(url string) (netnstest.HTTPResult, error) {
	var res netnstest.HTTPResult
	tr := t.client.HTTPClient().Transport.(*http.Transport).Clone()
	tr.DisableKeepAlives = false
	defer tr.CloseIdleConnections()
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		res.Local = netip.MustParseAddrPort(info.Conn.LocalAddr().String())
	}}
	ctx, cancel := context.WithTimeout(httptrace.WithClientTrace(context.Background(), trace), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return res, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return res, fmt.Errorf("GET %s from pod %s: %w", url, t.client, err)
	}
	res.Status = resp.StatusCode
	res.Body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return res, fmt.Errorf("GET %s from pod %s: read body: %w", url, t.client, err)
	}
	return res, nil
}

// inventoryYAML describes the demo's pods and Services to the agent (it
// has no Kubernetes here): pod names for the records, and the web pod's
// opt-in to L7 export of its inbound connections.
func (t *topology) inventoryYAML() string {
	var b strings.Builder
	b.WriteString("entries:\n")
	for _, p := range t.node.Pods() {
		fmt.Fprintf(&b, "  - {name: %s, group: %s, ips: [%s]", p.Name, p.Namespace, p.IPv4)
		if p == t.web {
			b.WriteString(", annotations: {visibility.antrea.io/l7-export: ingress}")
		}
		b.WriteString("}\n")
	}
	b.WriteString("services:\n")
	for _, s := range t.node.Services() {
		proto := flow.ProtoName(s.Proto)
		fmt.Fprintf(&b, "  - {name: %s, group: %s, ips: [%s], ports: [{name: %s-%d, port: %d, protocol: %s}]}\n",
			s.Name, s.Namespace, s.VIP, proto, s.Port, s.Port, strings.ToUpper(proto))
	}
	return b.String()
}
