package netnstest

import (
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"net/netip"
)

// gatewayV4 is the next hop every pod uses; the node owns it on lo so that
// it answers the pods' ARP requests for it.
func gatewayV4() netip.Addr { return netip.AddrFrom4([4]byte{169, 254, 1, 1}) }

// gatewayV6 is the link-local address of every node-side veth.
func gatewayV6() netip.Addr { return netip.AddrFrom16([16]byte{0xfe, 0x80, 15: 1}) }

const (
	// maxPods keeps pod addresses inside the node's /24 (.2 to .254).
	maxPods = 253
	// maxServices keeps VIPs inside the node's service /24 (.1 to .254).
	maxServices = 254
	// podIfName is the pod side of each veth, as a CNI names it.
	podIfName = "eth0"
)

// podIPv4 is pod number k of node index: 10.244.<index>.<k+2>.
func podIPv4(index uint8, k int) (netip.Addr, error) {
	if k < 0 || k >= maxPods {
		return netip.Addr{}, fmt.Errorf("pod number %d outside 0..%d", k, maxPods-1)
	}
	return netip.AddrFrom4([4]byte{10, 244, index, byte(k + 2)}), nil
}

// podIPv6 is pod number k of node index: fd00:10:244:<index>::<k+2>.
func podIPv6(index uint8, k int) (netip.Addr, error) {
	if k < 0 || k >= maxPods {
		return netip.Addr{}, fmt.Errorf("pod number %d outside 0..%d", k, maxPods-1)
	}
	return netip.AddrFrom16([16]byte{0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, index, 15: byte(k + 2)}), nil
}

// serviceIPv4 is service number n of node index: 10.96.<index>.<n+1>.
func serviceIPv4(index uint8, n int) (netip.Addr, error) {
	if n < 0 || n >= maxServices {
		return netip.Addr{}, fmt.Errorf("service number %d outside 0..%d", n, maxServices-1)
	}
	return netip.AddrFrom4([4]byte{10, 96, index, byte(n + 1)}), nil
}

// serviceIPv6 is service number n of node index: fd00:10:96:<index>::<n+1>.
func serviceIPv6(index uint8, n int) (netip.Addr, error) {
	if n < 0 || n >= maxServices {
		return netip.Addr{}, fmt.Errorf("service number %d outside 0..%d", n, maxServices-1)
	}
	return netip.AddrFrom16([16]byte{0xfd, 0x00, 0x00, 0x10, 0x00, 0x96, 0x00, index, 15: byte(n + 1)}), nil
}

// nodeIPv4 is the address a node uses on links to other nodes.
func nodeIPv4(index uint8) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 31, 0, index + 1})
}

// nodeIPv6 is the IPv6 address a node uses on links to other nodes.
func nodeIPv6(index uint8) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0x00, 0x01, 0x72, 0x00, 0x31, 15: index + 1})
}

func podCIDRv4(index uint8) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, index, 0}), 24)
}

func podCIDRv6(index uint8) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, index}), 64)
}

// hostVethName names the node side of a pod's veth the way Calico does
// ("cali" + 11 hex digits of a hash of namespace and name): unique per pod,
// stable, and within the 15-byte interface name limit whatever the pod name.
func hostVethName(namespace, pod string) string {
	sum := sha1.Sum([]byte(namespace + "." + pod))
	return "cali" + hex.EncodeToString(sum[:])[:11]
}

// runID returns a short random tag that makes namespace names unique per run,
// so parallel test packages never clash.
func runID() (string, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random netns tag: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// validName accepts Kubernetes DNS labels, which are also safe in netns names.
func validName(s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("name %q: want 1..63 characters", s)
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(s)-1
		if !ok {
			return fmt.Errorf("name %q: want lower-case letters, digits and inner '-'", s)
		}
	}
	return nil
}
