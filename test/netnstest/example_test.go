package netnstest_test

import (
	"fmt"
	"log"

	"github.com/flowlens/flowlens/test/netnstest"
)

// A node with a client and a server pod, a Service in front of the server
// and one transfer through it. In a test, NewNodeT replaces NewNode and
// Close. (Not run by `go test`: it needs root.)
func ExampleNewNode() {
	node, err := netnstest.NewNode(netnstest.Config{
		Name: "node-a",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()

	server := node.Pod("server")
	if _, err := server.ListenTCP(8080); err != nil {
		log.Fatal(err)
	}
	svc, err := node.AddService(netnstest.Service{Name: "web", Port: 80, TargetPort: 8080, Backend: server})
	if err != nil {
		log.Fatal(err)
	}
	tr, err := netnstest.SendExactly(node.Pod("client"), svc.Addr(), 1<<20, 4096)
	if err != nil {
		log.Fatal(err)
	}
	// Point the agent at node.NetnsPath to see this connection.
	fmt.Println(tr.Local, "->", svc.Addr(), "via", svc.Endpoint(), "in", node.NetnsPath)
}
