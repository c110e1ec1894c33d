package inventory

import (
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/flowlens/flowlens/pkg/confutil"
	"github.com/flowlens/flowlens/pkg/ipindex"
)

// File is the inventory file's schema. Example (testdata/inventory.yaml):
//
//	groups:                    # namespace-like; optional
//	  - name: lab
//	    annotations: {visibility.antrea.io/l7-export: ingress}
//	nodes:                     # host addresses; map to the node, like node IPs
//	  - name: host-a
//	    ips: [192.0.2.1]
//	entries:                   # workloads (VMs, processes); like pods
//	  - name: web-1
//	    group: lab
//	    ips: [192.0.2.10, "2001:db8::10"]
//	    node: host-a           # default: the agent's node
//	    labels: {app: web}
//	    annotations: {visibility.antrea.io/l7-export: both}
//	    workloadKind: Deployment   # optional, with workloadName
//	    workloadName: web
//	services:                  # virtual IPs DNATed to entries; optional
//	  - name: web
//	    group: lab
//	    ips: [10.96.0.10]
//	    ports: [{name: http, port: 80, protocol: TCP}]
type File struct {
	Groups   []Group   `yaml:"groups"`
	Nodes    []Node    `yaml:"nodes"`
	Entries  []Entry   `yaml:"entries"`
	Services []Service `yaml:"services"`
}

// Group is a namespace-like grouping of entries.
type Group struct {
	Name        string            `yaml:"name"`
	Annotations map[string]string `yaml:"annotations"`
}

// Node is a host whose addresses map to it. List every address the host
// sends from, not only its main one: source NAT picks the address of the
// interface a packet leaves by (an overlay's tunnel or gateway address),
// and a source that maps to no node looks external, which splits a
// NodePort connection's two halves into two rows.
type Node struct {
	Name string   `yaml:"name"`
	IPs  []string `yaml:"ips"`
}

// Entry is one workload.
type Entry struct {
	Name        string            `yaml:"name"`
	Group       string            `yaml:"group"`
	IPs         []string          `yaml:"ips"`
	Node        string            `yaml:"node"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
	// WorkloadKind/WorkloadName name the workload the entry is an
	// instance of, exported as the flow's workload (what a pod's
	// Deployment, StatefulSet, ... is). Both or neither; neither makes the
	// entry its own, like a bare pod.
	WorkloadKind string `yaml:"workloadKind"`
	WorkloadName string `yaml:"workloadName"`
}

// Service is a virtual IP with named ports.
type Service struct {
	Name  string        `yaml:"name"`
	Group string        `yaml:"group"`
	IPs   []string      `yaml:"ips"`
	Ports []ServicePort `yaml:"ports"`
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name     string `yaml:"name"`
	Port     uint16 `yaml:"port"`
	Protocol string `yaml:"protocol"` // TCP (default), UDP, SCTP
}

// parsed is a validated File ready to apply to an index.
type parsed struct {
	groups   map[string]ipindex.L7Mode
	nodes    map[string][]netip.Addr
	entries  map[string]parsedEntry // key "group/name"
	services map[string]parsedService
}

type parsedEntry struct {
	ips []netip.Addr
	pod *ipindex.Pod
}

type parsedService struct {
	ips   []netip.Addr
	ports []ipindex.ServicePort
}

func load(path, localNode string) (*parsed, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read inventory: %w", err)
	}
	// Strings keep their literal text: a label `version: 1.10` stays
	// "1.10" and a name `no` stays "no" (YAML 1.1 made them 1.1 and false).
	var f File
	if _, err := confutil.Decode(b, &f); err != nil {
		return nil, fmt.Errorf("parse inventory %s: %w", path, err)
	}
	p, err := validate(&f, localNode)
	if err != nil {
		return nil, fmt.Errorf("inventory %s: %w", path, err)
	}
	return p, nil
}

func parseIPs(field string, ss []string) ([]netip.Addr, error) {
	if len(ss) == 0 {
		return nil, fmt.Errorf("%s: at least one address is required", field)
	}
	out := make([]netip.Addr, 0, len(ss))
	for i, s := range ss {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %q is not an IP address", field, i, s)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

func parseL7(field string, ann map[string]string) (ipindex.L7Mode, error) {
	v, ok := ann[ipindex.L7Annotation]
	if !ok {
		return ipindex.L7Unset, nil
	}
	m, err := ipindex.ParseL7Mode(v)
	if err != nil {
		return ipindex.L7Unset, fmt.Errorf("%s: %w", field, err)
	}
	return m, nil
}

// validate checks everything an entry must get right and names the entry
// and field of the first problem. Unlike Kubernetes objects, whose invalid
// annotations are ignored, a file an operator just wrote is rejected whole:
// at start-up that is an error, on reload the previous file stays in force.
func validate(f *File, localNode string) (*parsed, error) {
	p := &parsed{
		groups:   map[string]ipindex.L7Mode{},
		nodes:    map[string][]netip.Addr{},
		entries:  map[string]parsedEntry{},
		services: map[string]parsedService{},
	}
	for i, g := range f.Groups {
		where := fmt.Sprintf("groups[%d] (%s)", i, g.Name)
		if g.Name == "" {
			return nil, fmt.Errorf("groups[%d]: name is required", i)
		}
		if _, dup := p.groups[g.Name]; dup {
			return nil, fmt.Errorf("%s: duplicate group name", where)
		}
		m, err := parseL7(where+".annotations", g.Annotations)
		if err != nil {
			return nil, err
		}
		p.groups[g.Name] = m
	}
	hostOwner := map[netip.Addr]string{}
	for i, n := range f.Nodes {
		where := fmt.Sprintf("nodes[%d] (%s)", i, n.Name)
		if n.Name == "" {
			return nil, fmt.Errorf("nodes[%d]: name is required", i)
		}
		if _, dup := p.nodes[n.Name]; dup {
			return nil, fmt.Errorf("%s: duplicate node name", where)
		}
		ips, err := parseIPs(where+".ips", n.IPs)
		if err != nil {
			return nil, err
		}
		for _, a := range ips {
			if o, dup := hostOwner[a]; dup {
				return nil, fmt.Errorf("%s.ips: %s is also node %s's", where, a, o)
			}
			hostOwner[a] = n.Name
		}
		p.nodes[n.Name] = ips
	}
	owner := map[netip.Addr]string{}
	for i, e := range f.Entries {
		key := e.Group + "/" + e.Name
		where := fmt.Sprintf("entries[%d] (%s)", i, key)
		if e.Name == "" {
			return nil, fmt.Errorf("entries[%d]: name is required", i)
		}
		if _, dup := p.entries[key]; dup {
			return nil, fmt.Errorf("%s: duplicate entry (group and name)", where)
		}
		ips, err := parseIPs(where+".ips", e.IPs)
		if err != nil {
			return nil, err
		}
		for _, a := range ips {
			if o, dup := owner[a]; dup {
				return nil, fmt.Errorf("%s.ips: %s is also entry %s's", where, a, o)
			}
			owner[a] = key
		}
		m, err := parseL7(where+".annotations", e.Annotations)
		if err != nil {
			return nil, err
		}
		if (e.WorkloadKind == "") != (e.WorkloadName == "") {
			return nil, fmt.Errorf("%s: workloadKind and workloadName go together (got %q and %q)", where, e.WorkloadKind, e.WorkloadName)
		}
		node := e.Node
		if node == "" {
			node = localNode
		}
		// The workload is the entry's owner: with no owner chain in a
		// file, the index reports it as it is.
		p.entries[key] = parsedEntry{ips: ips, pod: &ipindex.Pod{
			Name: e.Name, Namespace: e.Group, Node: node, Labels: labelsJSON(e.Labels), L7: m,
			OwnerKind: e.WorkloadKind, OwnerName: e.WorkloadName,
		}}
	}
	for i, s := range f.Services {
		key := s.Group + "/" + s.Name
		where := fmt.Sprintf("services[%d] (%s)", i, key)
		if s.Name == "" {
			return nil, fmt.Errorf("services[%d]: name is required", i)
		}
		if _, dup := p.services[key]; dup {
			return nil, fmt.Errorf("%s: duplicate service (group and name)", where)
		}
		ips, err := parseIPs(where+".ips", s.IPs)
		if err != nil {
			return nil, err
		}
		var ports []ipindex.ServicePort
		for j, sp := range s.Ports {
			if sp.Port == 0 {
				return nil, fmt.Errorf("%s.ports[%d].port: required, 1-65535", where, j)
			}
			proto, err := protoNumber(sp.Protocol)
			if err != nil {
				return nil, fmt.Errorf("%s.ports[%d].protocol: %w", where, j, err)
			}
			ports = append(ports, ipindex.ServicePort{Port: sp.Port, Proto: proto, Name: s.Group + "/" + s.Name + ":" + sp.Name})
		}
		p.services[key] = parsedService{ips: ips, ports: ports}
	}
	return p, nil
}
