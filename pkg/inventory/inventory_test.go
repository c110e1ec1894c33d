package inventory

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/k8smeta"
)

// enricher is what the agent consumes; both sources must provide it.
type enricher interface {
	Enrich(*flow.Record)
	L7Want(*flow.Conn) flow.L7Want
}

var (
	_ enricher = (*Inventory)(nil)
	_ enricher = (*k8smeta.Meta)(nil)
)

func conn(src, dst string, dport uint16) flow.Conn {
	t := flow.NewTuple(netip.MustParseAddr(src), netip.MustParseAddr(dst), 40000, dport, flow.ProtoTCP)
	return flow.Conn{Tuple: t, OrigDstIP: t.DstIP, OrigDstPort: t.DstPort, StartNanos: time.Now().UnixNano()}
}

func newInv(t *testing.T, path string) (*Inventory, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	inv, err := New(Config{Path: path, NodeName: "host-a", Debounce: 20 * time.Millisecond}, reg)
	if err != nil {
		t.Fatal(err)
	}
	return inv, reg
}

func TestLoadedInventoryEnriches(t *testing.T) {
	inv, _ := newInv(t, "testdata/inventory.yaml")
	web := flow.Endpoint{PodName: "web-1", PodNamespace: "lab", NodeName: "host-a", Labels: `{"app":"web","tier":"front"}`,
		WorkloadKind: "Deployment", WorkloadName: "web"}
	client := flow.Endpoint{PodName: "client-1", PodNamespace: "lab", NodeName: "host-a"}
	tests := []struct {
		name string
		conn flow.Conn
		src  flow.Endpoint
		dst  flow.Endpoint
		svc  string
		ft   flow.FlowType
		l7   flow.L7Want
	}{
		{
			name: "entry to entry through a service VIP on the same host",
			conn: func() flow.Conn {
				c := conn("10.10.0.20", "10.10.0.10", 8080)
				c.OrigDstIP, c.OrigDstPort = netip.MustParseAddr("10.96.0.10").As16(), 80
				return c
			}(),
			src: client, dst: web, svc: "lab/web:http", ft: flow.FlowTypeIntraNode,
			// client inherits the group's egress, web has its own ingress
			l7: flow.L7Source | flow.L7Destination,
		},
		{
			name: "entry on another node is inter-node",
			conn: conn("10.10.0.20", "10.20.0.30", 5432),
			src:  client, dst: flow.Endpoint{PodName: "db-1", PodNamespace: "lab", NodeName: "host-b"},
			// db-1 inherits the group's egress only: nothing for its ingress
			ft: flow.FlowTypeInterNode, l7: flow.L7Source,
		},
		{
			name: "IPv6 address of an entry resolves",
			conn: conn("fd00:10::10", "2001:db8::1", 443),
			src:  web, ft: flow.FlowTypeToExternal,
		},
		{
			name: "node address maps to the node",
			conn: conn("192.0.2.2", "10.10.0.10", 8080),
			src:  flow.Endpoint{NodeName: "host-b"}, dst: web, ft: flow.FlowTypeInterNode, l7: flow.L7Destination,
		},
		{
			// A NodePort's masquerade on an overlay picks the tunnel or
			// gateway address (flannel.1's): still the node, so the
			// connection is inter-node and waits for the entry node's half.
			name: "node's second (tunnel) address maps to the node",
			conn: conn("10.20.0.0", "10.10.0.10", 8080),
			src:  flow.Endpoint{NodeName: "host-b"}, dst: web, ft: flow.FlowTypeInterNode, l7: flow.L7Destination,
		},
		{
			name: "unknown address is external",
			conn: conn("203.0.113.1", "10.10.0.10", 8080),
			dst:  web, ft: flow.FlowTypeFromExternal, l7: flow.L7Destination,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := flow.Record{Conn: tt.conn}
			inv.Enrich(&r)
			if r.Source != tt.src || r.Destination != tt.dst {
				t.Errorf("endpoints = %+v -> %+v, want %+v -> %+v", r.Source, r.Destination, tt.src, tt.dst)
			}
			if r.ServicePortName != tt.svc || r.FlowType != tt.ft {
				t.Errorf("service/flow type = %q/%v, want %q/%v", r.ServicePortName, r.FlowType, tt.svc, tt.ft)
			}
			if got := inv.L7Want(&tt.conn); got != tt.l7 {
				t.Errorf("L7Want = %b, want %b", got, tt.l7)
			}
		})
	}
}

func TestInvalidFileAtStartNamesEntryAndField(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"bad address", "entries:\n- {name: a, group: g, ips: [10.0.0.300]}\n", []string{"entries[0] (g/a)", "ips[0]", "10.0.0.300"}},
		{"no addresses", "entries:\n- {name: a, group: g}\n", []string{"entries[0] (g/a)", "ips"}},
		{"missing name", "entries:\n- {group: g, ips: [10.0.0.1]}\n", []string{"entries[0]", "name"}},
		{"duplicate entry", "entries:\n- {name: a, ips: [10.0.0.1]}\n- {name: a, ips: [10.0.0.2]}\n", []string{"entries[1] (/a)", "duplicate"}},
		{"address claimed twice", "entries:\n- {name: a, ips: [10.0.0.1]}\n- {name: b, ips: [10.0.0.1]}\n", []string{"entries[1] (/b)", "10.0.0.1", "/a"}},
		{"invalid annotation", "entries:\n- name: a\n  ips: [10.0.0.1]\n  annotations: {visibility.antrea.io/l7-export: sideways}\n", []string{"entries[0] (/a).annotations", "sideways"}},
		{"invalid group annotation", "groups:\n- name: g\n  annotations: {visibility.antrea.io/l7-export: all}\n", []string{"groups[0] (g).annotations", "all"}},
		{"unknown field", "entries:\n- {name: a, ipz: [10.0.0.1]}\n", []string{"ipz"}},
		{"bad protocol", "services:\n- {name: s, ips: [10.96.0.1], ports: [{port: 80, protocol: ICMP}]}\n", []string{"services[0] (/s).ports[0].protocol", "ICMP"}},
		{"workload name without kind", "entries:\n- {name: a, ips: [10.0.0.1], workloadName: w}\n", []string{"entries[0] (/a)", "workloadKind"}},
		{"zero port", "services:\n- {name: s, ips: [10.96.0.1], ports: [{name: x}]}\n", []string{"services[0] (/s).ports[0].port"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "inv.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := New(Config{Path: path, NodeName: "h"}, prometheus.NewRegistry())
			if err == nil {
				t.Fatal("New accepted an invalid file")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestNewNamesTheMissingField(t *testing.T) {
	tests := []struct {
		cfg   Config
		field string
	}{
		{Config{NodeName: "h"}, "Path"},
		{Config{Path: "testdata/inventory.yaml"}, "NodeName"},
		{Config{Path: "testdata/inventory.yaml", NodeName: "h", GracePeriod: -1}, "GracePeriod"},
		{Config{Path: "testdata/missing.yaml", NodeName: "h"}, "missing.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			if _, err := New(tt.cfg, nil); err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("err = %v, want one naming %s", err, tt.field)
			}
		})
	}
}

func counter(t *testing.T, inv *Inventory, result string) float64 {
	t.Helper()
	var m dto.Metric
	if err := inv.reloads.WithLabelValues(result).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 3s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func srcName(inv *Inventory, ip string) string {
	r := flow.Record{Conn: conn(ip, "203.0.113.9", 80)}
	inv.Enrich(&r)
	return r.Source.PodName
}

const (
	v1 = "entries:\n- {name: one, group: g, ips: [10.0.0.1]}\n"
	v2 = "entries:\n- {name: two, group: g, ips: [10.0.0.1]}\n- {name: three, group: g, ips: [10.0.0.3]}\n"
	v3 = "entries:\n- {name: four, group: g, ips: [10.0.0.1]}\n"
)

func TestRunReloadsOnChange(t *testing.T) {
	writeInPlace := func(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }
	renameOver := func(path, s string) error {
		tmp := path + ".swp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, path)
	}
	tests := []struct {
		name  string
		write func(path, s string) error
	}{
		{"file rewritten in place is reloaded", writeInPlace},
		{"file replaced by rename (editors, ConfigMaps) is reloaded", renameOver},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "inventory.yaml")
			if err := os.WriteFile(path, []byte(v1), 0o644); err != nil {
				t.Fatal(err)
			}
			inv, _ := newInv(t, path)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- inv.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			time.Sleep(50 * time.Millisecond) // let Run add its watch
			if got := srcName(inv, "10.0.0.1"); got != "one" {
				t.Fatalf("before change: %q, want one", got)
			}
			if err := tt.write(path, v2); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "reload after change", func() bool { return srcName(inv, "10.0.0.3") == "three" })
			if got := srcName(inv, "10.0.0.1"); got != "two" {
				t.Errorf("reassigned address maps to %q, want two", got)
			}
			// A second change is seen too (the watch survives a rename).
			if err := tt.write(path, v3); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "second reload", func() bool { return srcName(inv, "10.0.0.1") == "four" })
			// The removed entry's address is released: a connection
			// starting now maps to nobody.
			if got := srcName(inv, "10.0.0.3"); got != "" {
				t.Errorf("removed entry's address maps to %q, want nobody", got)
			}
		})
	}
}

func TestInvalidReloadKeepsThePreviousInventory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inventory.yaml")
	if err := os.WriteFile(path, []byte(v1), 0o644); err != nil {
		t.Fatal(err)
	}
	inv, _ := newInv(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond)

	if err := os.WriteFile(path, []byte("entries:\n- {name: broken, ips: [not-an-ip]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "failed reload counted", func() bool { return counter(t, inv, "error") >= 1 })
	if got := srcName(inv, "10.0.0.1"); got != "one" {
		t.Errorf("after invalid reload: %q, want one (previous inventory kept)", got)
	}
	if err := os.WriteFile(path, []byte(v3), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "valid file after a broken one is loaded", func() bool { return srcName(inv, "10.0.0.1") == "four" })
}
