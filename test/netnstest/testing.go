package netnstest

// TB is the part of testing.TB the helpers use; declared here so the demo
// can use the package without importing testing.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Cleanup(func())
}

// NewNodeT is NewNode for tests: it fails the test on error (a missing
// program or no root included, by design never a skip) and closes the node
// when the test ends, reporting a failed cleanup as a test error.
func NewNodeT(t TB, cfg Config) *Node {
	t.Helper()
	n, err := NewNode(cfg)
	if err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("netnstest cleanup: %v", err)
		}
	})
	return n
}

// ConnectNodesT is ConnectNodes for tests.
func ConnectNodesT(t TB, a, b *Node) {
	t.Helper()
	if err := ConnectNodes(a, b); err != nil {
		t.Fatalf("netnstest: %v", err)
	}
}

// AddServiceT is Node.AddService for tests.
func AddServiceT(t TB, n *Node, svc Service) Service {
	t.Helper()
	svc, err := n.AddService(svc)
	if err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	return svc
}
