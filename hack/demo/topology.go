package main

import (
	"fmt"
	"net/netip"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/netnstest"
)

// The demo node: a client pod, a web server behind a Service and an echo
// server behind a TCP and a UDP Service.
const (
	nodeName = "demo-node"
	webPort  = 8080
	echoPort = 9000
	udpPort  = 5353

	tcpUp, tcpDown = 1 << 20, 64 << 10 // TCP transfer through the echo Service
	udpUp, udpDown = 4096, 2048        // UDP exchange through the echo-udp Service
)

// httpPaths are the GETs sent through the web Service, one connection each.
func httpPaths() []string { return []string{"/", "/", "/status/404", "/bytes/100000", "/"} }

// topology is the demo node and what runs on it.
type topology struct {
	node                    *netnstest.Node
	client, web, echo       *netnstest.Pod
	webSvc, echoSvc, udpSvc netnstest.Service
}

// buildTopology creates the node, starts the servers and installs the
// Services. The caller closes t.node (also on error, when it is non-nil).
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
	t.udpSvc, err = node.AddService(netnstest.Service{Name: "echo-udp", Port: 53, TargetPort: udpPort, Proto: flow.ProtoUDP, Backend: t.echo})
	if err != nil {
		return t, err
	}
	return t, nil
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

// driveTraffic runs the HTTP GETs, the TCP transfer and the UDP exchange
// from the client pod, each through its Service VIP.
func (t *topology) driveTraffic() ([]expected, error) {
	var out []expected
	for _, path := range httpPaths() {
		res, err := t.client.HTTPGet("http://" + t.webSvc.Addr().String() + path)
		if err != nil {
			return out, err
		}
		out = append(out, expected{
			What: fmt.Sprintf("GET %s -> %d", path, res.Status), Proto: flow.ProtoTCP,
			Src: res.Local, Service: t.webSvc, Received: int64(len(res.Body)),
		})
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
