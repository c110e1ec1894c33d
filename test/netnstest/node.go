package netnstest

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/netns"
)

// Config describes one simulated node.
type Config struct {
	// Name is the Kubernetes node name; it is also part of the namespace
	// names. Default "node".
	Name string
	// Index places the node in the address plan (pods in 10.244.<Index>.0/24,
	// VIPs in 10.96.<Index>.0/24). Nodes that ConnectNodes joins need
	// different indexes; unrelated nodes may share one.
	Index uint8
	// IPv6 makes pods dual-stack and allows IPv6 Services.
	IPv6 bool
	// Pods are created with the node, in order.
	Pods []PodSpec
}

// PodSpec names one pod.
type PodSpec struct {
	Name string
	// Namespace is the Kubernetes namespace; default "default".
	Namespace string
}

// Node is a node namespace with its pods and Services. Its exported fields
// are fixed at construction; methods are safe for concurrent use.
type Node struct {
	Name  string
	Index uint8
	IPv6  bool
	// NetnsName is the `ip netns` name; NetnsPath is the file to give the
	// agent (conntrack.netns) or netns.Do.
	NetnsName string
	NetnsPath string
	PodCIDRv4 netip.Prefix
	PodCIDRv6 netip.Prefix // valid only when IPv6

	prefix string // "fl-<rand>-<name>", shared by the pod namespaces

	mu       sync.Mutex
	pods     []*Pod
	services []Service
	closers  []io.Closer // servers started in pods, stopped before the namespaces go
	closed   bool
}

// NewNode builds the node namespace, enables conntrack with accounting and
// timestamps in it, and adds cfg.Pods. On error nothing is left behind.
func NewNode(cfg Config) (*Node, error) {
	if cfg.Name == "" {
		cfg.Name = "node"
	}
	if err := validName(cfg.Name); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	if err := CheckPrereqs(); err != nil {
		return nil, err
	}
	id, err := runID()
	if err != nil {
		return nil, err
	}
	prefix := "fl-" + id + "-" + cfg.Name
	n := &Node{
		Name:      cfg.Name,
		Index:     cfg.Index,
		IPv6:      cfg.IPv6,
		NetnsName: prefix,
		NetnsPath: NetnsDir + "/" + prefix,
		PodCIDRv4: podCIDRv4(cfg.Index),
		prefix:    prefix,
	}
	if cfg.IPv6 {
		n.PodCIDRv6 = podCIDRv6(cfg.Index)
	}
	if err := addNetns(n.NetnsName); err != nil {
		return nil, err
	}
	if err := n.setup(); err != nil {
		return nil, errors.Join(fmt.Errorf("node %s: %w", n.Name, err), n.Close())
	}
	for _, spec := range cfg.Pods {
		if _, err := n.AddPod(spec); err != nil {
			return nil, errors.Join(err, n.Close())
		}
	}
	return n, nil
}

// nodeSysctls make the namespace route between pods and keep per-connection
// counters and start/stop times in conntrack (the agent exports both).
func nodeSysctls() [][2]string {
	return [][2]string{
		{"net.ipv4.ip_forward", "1"},
		// New namespaces copy rp_filter from the host; strict mode would be
		// harmless with these symmetric routes, but a host setting must not be
		// able to break the tests.
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
		{"net.ipv6.conf.all.forwarding", "1"},
		{"net.netfilter.nf_conntrack_acct", "1"},
		{"net.netfilter.nf_conntrack_timestamp", "1"},
		{"net.netfilter.nf_conntrack_events", "1"},
	}
}

// noDADSysctls skip IPv6 duplicate address detection: addresses are usable
// at once instead of after ~2 s, and a namespace has no duplicates anyway.
func noDADSysctls() [][2]string {
	return [][2]string{
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
	}
}

func writeSysctls(path string, kvs [][2]string) error {
	for _, kv := range kvs {
		if err := netns.WriteSysctl(path, kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) setup() error {
	if err := writeSysctls(n.NetnsPath, append(noDADSysctls(), nodeSysctls()...)); err != nil {
		return err
	}
	err := withHandle(n.NetnsPath, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
		// Pods ARP for their gateway; owning it locally makes the node
		// answer on every veth.
		if err := h.AddrAdd(lo, hostAddr(gatewayV4())); err != nil {
			return fmt.Errorf("add %s to lo: %w", gatewayV4(), err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if _, err := runInNetns(n.NetnsName, baseRuleset, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("install nftables base ruleset: %w", err)
	}
	return nil
}

// AddPod creates a pod namespace wired to the node. Pod number k (in the
// order added) gets 10.244.<Index>.<k+2> and, with IPv6, fd00:10:244:<Index>::<k+2>.
func (n *Node) AddPod(spec PodSpec) (*Pod, error) {
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if err := validName(spec.Name); err != nil {
		return nil, fmt.Errorf("pod: %w", err)
	}
	if err := validName(spec.Namespace); err != nil {
		return nil, fmt.Errorf("pod %s namespace: %w", spec.Name, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("add pod %s: node %s is closed", spec.Name, n.Name)
	}
	for _, p := range n.pods {
		if p.Name == spec.Name && p.Namespace == spec.Namespace {
			return nil, fmt.Errorf("add pod %s/%s: already exists", spec.Namespace, spec.Name)
		}
	}
	k := len(n.pods)
	p := &Pod{
		Name:      spec.Name,
		Namespace: spec.Namespace,
		NetnsName: n.prefix + "-" + spec.Name,
		HostVeth:  hostVethName(spec.Namespace, spec.Name),
		node:      n,
	}
	// Two namespaces may hold pods of the same name; keep netns names apart.
	if spec.Namespace != "default" {
		p.NetnsName = n.prefix + "-" + spec.Namespace + "-" + spec.Name
	}
	p.NetnsPath = NetnsDir + "/" + p.NetnsName
	var err error
	if p.IPv4, err = podIPv4(n.Index, k); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", spec.Name, err)
	}
	if n.IPv6 {
		if p.IPv6, err = podIPv6(n.Index, k); err != nil {
			return nil, fmt.Errorf("add pod %s: %w", spec.Name, err)
		}
	}
	if err := addNetns(p.NetnsName); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", spec.Name, err)
	}
	// Registered before wiring so Close removes a half-built pod too.
	n.pods = append(n.pods, p)
	if err := n.wirePod(p); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", spec.Name, err)
	}
	return p, nil
}

func (n *Node) wirePod(p *Pod) error {
	if err := writeSysctls(p.NetnsPath, noDADSysctls()); err != nil {
		return err
	}
	podNs, err := vnetns.GetFromPath(p.NetnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", p.NetnsPath, err)
	}
	defer podNs.Close()

	// Node side: create the pair with the peer born in the pod namespace.
	err = withHandle(n.NetnsPath, func(h *netlink.Handle) error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth},
			PeerName:      podIfName,
			PeerNamespace: netlink.NsFd(int(podNs)),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s: %w", p.HostVeth, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := netns.WriteSysctl(n.NetnsPath, "net.ipv4.conf."+p.HostVeth+".proxy_arp", "1"); err != nil {
		return err
	}
	err = withHandle(n.NetnsPath, func(h *netlink.Handle) error {
		link, err := h.LinkByName(p.HostVeth)
		if err != nil {
			return fmt.Errorf("find %s: %w", p.HostVeth, err)
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", p.HostVeth, err)
		}
		idx := link.Attrs().Index
		if err := h.RouteAdd(linkRoute(idx, p.IPv4)); err != nil {
			return fmt.Errorf("route %s dev %s: %w", p.IPv4, p.HostVeth, err)
		}
		if !p.IPv6.IsValid() {
			return nil
		}
		gw := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(gatewayV6(), 64)), Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(link, gw); err != nil {
			return fmt.Errorf("add %s to %s: %w", gatewayV6(), p.HostVeth, err)
		}
		if err := h.RouteAdd(linkRoute(idx, p.IPv6)); err != nil {
			return fmt.Errorf("route %s dev %s: %w", p.IPv6, p.HostVeth, err)
		}
		return nil
	})
	if err != nil {
		return err
	}

	// Pod side: /32 (/128) address and a default route via the node.
	err = withHandle(p.NetnsPath, func(h *netlink.Handle) error {
		for _, name := range []string{"lo", podIfName} {
			link, err := h.LinkByName(name)
			if err != nil {
				return fmt.Errorf("find %s in pod: %w", name, err)
			}
			if err := h.LinkSetUp(link); err != nil {
				return fmt.Errorf("set %s up in pod: %w", name, err)
			}
		}
		eth0, err := h.LinkByName(podIfName)
		if err != nil {
			return fmt.Errorf("find %s in pod: %w", podIfName, err)
		}
		idx := eth0.Attrs().Index
		if err := h.AddrAdd(eth0, hostAddr(p.IPv4)); err != nil {
			return fmt.Errorf("add %s to pod: %w", p.IPv4, err)
		}
		if err := h.RouteAdd(linkRoute(idx, gatewayV4())); err != nil {
			return fmt.Errorf("route %s in pod: %w", gatewayV4(), err)
		}
		if err := h.RouteAdd(defaultRoute(idx, gatewayV4())); err != nil {
			return fmt.Errorf("default route in pod: %w", err)
		}
		if !p.IPv6.IsValid() {
			return nil
		}
		if err := h.AddrAdd(eth0, hostAddr(p.IPv6)); err != nil {
			return fmt.Errorf("add %s to pod: %w", p.IPv6, err)
		}
		if err := h.RouteAdd(defaultRoute(idx, gatewayV6())); err != nil {
			return fmt.Errorf("default IPv6 route in pod: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := waitOperUp(n.NetnsPath, p.HostVeth); err != nil {
		return err
	}
	if err := waitOperUp(p.NetnsPath, podIfName); err != nil {
		return err
	}
	if !p.IPv6.IsValid() {
		return nil
	}
	if err := waitNDReady(n.NetnsPath, p.HostVeth, gatewayV6()); err != nil {
		return err
	}
	return waitNDReady(p.NetnsPath, podIfName, p.IPv6)
}

// Pods returns the node's pods in the order they were added.
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Pod(nil), n.pods...)
}

// Pod returns the pod of that name (in any Kubernetes namespace), or nil.
func (n *Node) Pod(name string) *Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.pods {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Run runs fn with the calling goroutine in the node namespace (see
// netns.Do for what fn may and may not do).
func (n *Node) Run(fn func() error) error { return netns.Do(n.NetnsPath, fn) }

// Exec runs a program inside the node namespace and returns its standard
// output.
func (n *Node) Exec(name string, args ...string) ([]byte, error) {
	return runInNetns(n.NetnsName, "", name, args...)
}

// Conntrack runs the conntrack program in the node namespace, e.g.
// Conntrack("-L", "-p", "tcp", "--orig-dst", vip.String()).
func (n *Node) Conntrack(args ...string) ([]byte, error) {
	return n.Exec("conntrack", args...)
}

// Close stops the servers started in pods and removes every namespace of
// the node. It is idempotent and reports every failure.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	closers, pods := n.closers, n.pods
	n.closers, n.pods = nil, nil
	n.mu.Unlock()

	var errs []error
	// Open sockets keep a namespace alive after its file is gone; close
	// them first so the kernel frees everything now.
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i].Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, p := range pods {
		if err := deleteNetns(p.NetnsName); err != nil {
			errs = append(errs, err)
		}
	}
	if err := deleteNetns(n.NetnsName); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close node %s: %w", n.Name, err)
	}
	return nil
}

// track registers a server so that Close stops it.
func (n *Node) track(c io.Closer) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("node %s is closed", n.Name)
	}
	n.closers = append(n.closers, c)
	return nil
}

// withHandle gives fn a netlink handle bound to the namespace at path.
func withHandle(path string, fn func(*netlink.Handle) error) error {
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	defer h.Close()
	return fn(h)
}

// operUpTimeout bounds the wait for a veth to become operational.
const operUpTimeout = 5 * time.Second

// waitOperUp waits until a link is operationally up. Setting a veth up is
// not enough to use it: the kernel attaches its qdisc and sets the
// operational state later, from the link-watch worker (up to a second
// later), and until then every packet sent on it is dropped (QDISC_DROP):
// a test's first SYN would wait out a 1 s retransmission.
func waitOperUp(path, name string) error {
	deadline := time.Now().Add(operUpTimeout)
	return withHandle(path, func(h *netlink.Handle) error {
		for {
			link, err := h.LinkByName(name)
			if err != nil {
				return fmt.Errorf("find %s in %s: %w", name, path, err)
			}
			if state := link.Attrs().OperState; state == netlink.OperUp {
				return nil
			} else if time.Now().After(deadline) {
				return fmt.Errorf("%s in %s still %s after %s", name, path, state, operUpTimeout)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// hostAddr is a single-address prefix (/32 or /128) without DAD.
func hostAddr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, a.BitLen())), Flags: unix.IFA_F_NODAD}
}

// linkRoute sends one address straight out of a link, no gateway.
func linkRoute(linkIndex int, dst netip.Addr) *netlink.Route {
	return &netlink.Route{LinkIndex: linkIndex, Dst: ipNet(netip.PrefixFrom(dst, dst.BitLen())), Scope: netlink.SCOPE_LINK}
}

func defaultRoute(linkIndex int, gw netip.Addr) *netlink.Route {
	family := netlink.FAMILY_V4
	dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if gw.Is6() {
		family = netlink.FAMILY_V6
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return &netlink.Route{LinkIndex: linkIndex, Dst: ipNet(dst), Gw: gw.AsSlice(), Family: family}
}

// waitNDReady waits until the interface has joined the solicited-node
// multicast group of every address in addrs, i.e. until it answers
// neighbour solicitations for them. The kernel joins from a work item that
// only runs once the link-watch worker has seen the carrier, so right
// after set-up the first solicitation can go unanswered, and a test's first
// IPv6 connection would lose its SYN (1 s retransmission).
func waitNDReady(path, ifName string, addrs ...netip.Addr) error {
	want := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		want[hex.EncodeToString(solicitedNode(a).AsSlice())] = true
	}
	deadline := time.Now().Add(operUpTimeout)
	for {
		var joined []byte
		err := netns.Do(path, func() error {
			// thread-self: /proc/self/net would show the namespace of the
			// process's main thread, not of this one.
			var err error
			joined, err = os.ReadFile("/proc/thread-self/net/igmp6")
			return err
		})
		if err != nil {
			return fmt.Errorf("read multicast groups in %s: %w", path, err)
		}
		missing := 0
		for group := range want {
			if !hasGroup(joined, ifName, group) {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in %s: neighbour discovery for %v not ready after %s", ifName, path, addrs, operUpTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// solicitedNode is ff02::1:ffXX:XXXX for the low 24 bits of a.
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

// hasGroup reports whether /proc/net/igmp6 content lists group (32 hex
// digits) on interface ifName. Lines are "index name group users flags timer".
func hasGroup(igmp6 []byte, ifName, group string) bool {
	for _, line := range strings.Split(string(igmp6), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == ifName && f[2] == group {
			return true
		}
	}
	return false
}
