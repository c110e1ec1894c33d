package netnstest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/flowlens/flowlens/pkg/netns"
)

// dialTimeout bounds connection set-up; inside one machine a connect that
// takes this long is a routing or NAT bug, not a slow network.
const dialTimeout = 10 * time.Second

// Pod is one pod namespace behind a Node. Its fields are fixed at creation.
type Pod struct {
	Name      string
	Namespace string
	NetnsName string
	NetnsPath string
	// IPv4 is the pod address; IPv6 is valid only on a dual-stack node.
	IPv4 netip.Addr
	IPv6 netip.Addr
	// HostVeth is the node-side interface of the pod's veth (in the node
	// namespace); the pod side is eth0.
	HostVeth string

	node *Node
}

// Node returns the node the pod runs on.
func (p *Pod) Node() *Node { return p.node }

// String returns namespace/name, as Kubernetes prints a pod.
func (p *Pod) String() string { return p.Namespace + "/" + p.Name }

// Addr returns the pod's IPv4 address with a port, e.g. a backend endpoint.
func (p *Pod) Addr(port uint16) netip.AddrPort { return netip.AddrPortFrom(p.IPv4, port) }

// Addr6 returns the pod's IPv6 address with a port (invalid on a single-stack node).
func (p *Pod) Addr6(port uint16) netip.AddrPort { return netip.AddrPortFrom(p.IPv6, port) }

// Run runs fn with the calling goroutine in the pod namespace. Sockets fn
// creates stay in the pod namespace afterwards and may be used from any
// goroutine; goroutines fn starts do not run in the namespace.
func (p *Pod) Run(fn func() error) error { return netns.Do(p.NetnsPath, fn) }

// DialTCP connects from the pod to addr.
func (p *Pod) DialTCP(addr netip.AddrPort) (*net.TCPConn, error) {
	c, err := p.dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// DialUDP opens a UDP socket in the pod connected to addr.
func (p *Pod) DialUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	c, err := p.dial("udp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

func (p *Pod) dial(network string, addr netip.AddrPort) (net.Conn, error) {
	return p.dialContext(context.Background(), network, addr.String())
}

// dialContext is a net.Dialer.DialContext whose sockets live in the pod.
// The address must be a literal: a name lookup would run on other threads,
// outside the namespace.
func (p *Pod) dialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if _, err := netip.ParseAddrPort(address); err != nil {
		return nil, fmt.Errorf("dial from pod %s: %q is not an ip:port literal", p, address)
	}
	var c net.Conn
	err := p.Run(func() error {
		d := net.Dialer{Timeout: dialTimeout}
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from pod %s: %w", network, address, p, err)
	}
	return c, nil
}

// listen opens a listener in the pod on all its addresses (both families).
func (p *Pod) listen(network string, port uint16) (any, error) {
	var l any
	err := p.Run(func() error {
		var err error
		addr := fmt.Sprintf(":%d", port)
		if network == "udp" {
			l, err = net.ListenPacket(network, addr)
		} else {
			l, err = net.Listen(network, addr)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s :%d in pod %s: %w", network, port, p, err)
	}
	return l, nil
}

// localAddrPort converts a socket address, unmapping IPv4-in-IPv6.
func localAddrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
