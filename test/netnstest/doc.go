// Package netnstest builds a simulated Kubernetes node out of network
// namespaces, for integration tests and the demo.
//
// A Node is one "node" namespace with "pod" namespaces routed behind it the
// way Calico wires them: each pod has a /32 (and /128) address on eth0 and a
// default route via 169.254.1.1 (fe80::1 for IPv6); the node side of the
// veth answers with proxy ARP and holds a host route per pod. Services are
// nftables DNAT rules in the node namespace, so connections to a ClusterIP
// show up in the node's conntrack table with real NAT tuples, which is what
// the agent reads.
//
// Address plan (everything stays inside namespaces the harness created, so
// several test packages can use the same ranges at the same time):
//
//	pods      10.244.<Index>.0/24   fd00:10:244:<Index>::/64
//	services  10.96.<Index>.0/24    fd00:10:96:<Index>::/112
//	node IP   172.31.0.<Index+1>    fd00:172:31::<Index+1>  (ConnectNodes)
//
// Every constructor returns an error and every owner has Close; the ...T
// helpers wrap them for tests and register the cleanup. The package needs
// root, iproute2 and nftables (conntrack for Node.Conntrack); CheckPrereqs
// names what is missing.
package netnstest
