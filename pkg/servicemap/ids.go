package servicemap

import (
	"fmt"
	"strconv"
	"strings"
)

// Node kinds.
const (
	KindWorkload = "workload"
	KindPod      = "pod"
	KindService  = "service"
	KindExternal = "external"
)

// Node is one end of edges on the map.
type Node struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// WorkloadKind is the owner's kind (Deployment, StatefulSet, ...)
	// for a workload node.
	WorkloadKind string `json:"workloadKind,omitempty"`
	Label        string `json:"label"`
}

// MaxNodeIDLen bounds a node id given by a client; the longest real one
// is a workload: namespace (63) + kind + name (253) or an external name.
const MaxNodeIDLen = 600

// ParseNodeID splits a node id (see SourceNodeExpr) into its parts. It
// accepts what the map produces and refuses anything else, so a filter
// by node never reaches the server with a value no row can have.
func ParseNodeID(id string) (Node, error) {
	if len(id) > MaxNodeIDLen {
		return Node{}, fmt.Errorf("longer than %d bytes", MaxNodeIDLen)
	}
	prefix, rest, ok := strings.Cut(id, ":")
	if !ok || rest == "" {
		return Node{}, fmt.Errorf("want w:, p:, s: or x: followed by a name, got %q", trunc(id))
	}
	n := Node{ID: id}
	switch prefix {
	case "w":
		parts := strings.SplitN(rest, "/", 3)
		if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
			return Node{}, fmt.Errorf("a workload id is w:<namespace>/<kind>/<name>, got %q", trunc(id))
		}
		n.Kind, n.Namespace, n.WorkloadKind, n.Name = KindWorkload, parts[0], parts[1], parts[2]
		n.Label = n.Namespace + "/" + n.Name
	case "p", "s":
		ns, name, ok := strings.Cut(rest, "/")
		if !ok || ns == "" || name == "" {
			return Node{}, fmt.Errorf("a pod or Service id is %s:<namespace>/<name>, got %q", prefix, trunc(id))
		}
		n.Kind = KindPod
		if prefix == "s" {
			n.Kind = KindService
		}
		n.Namespace, n.Name, n.Label = ns, name, ns+"/"+name
	case "x":
		n.Kind, n.Name, n.Label = KindExternal, rest, rest
	default:
		return Node{}, fmt.Errorf("want w:, p:, s: or x: followed by a name, got %q", trunc(id))
	}
	return n, nil
}

// EdgeKey identifies an edge: source and destination node, destination
// port and IP protocol. Its string form is the API's edge id.
type EdgeKey struct {
	Source, Destination string
	Port                uint16
	Protocol            uint8
}

func (k EdgeKey) String() string {
	return k.Source + "|" + k.Destination + "|" + strconv.Itoa(int(k.Port)) + "|" + strconv.Itoa(int(k.Protocol))
}

// ParseEdgeID reads an edge id. A source id never holds '|' (pods,
// workloads and IPs cannot), an external destination's name might (a
// TLS server name is the client's choice), so the source ends at the
// first '|' and the port and protocol are the last two fields.
func ParseEdgeID(id string) (EdgeKey, error) {
	if len(id) > 2*MaxNodeIDLen+16 {
		return EdgeKey{}, fmt.Errorf("longer than %d bytes", 2*MaxNodeIDLen+16)
	}
	src, rest, ok := strings.Cut(id, "|")
	last := strings.LastIndexByte(rest, '|')
	if !ok || last < 0 {
		return EdgeKey{}, fmt.Errorf("want <source>|<destination>|<port>|<protocol>, got %q", trunc(id))
	}
	proto := rest[last+1:]
	rest = rest[:last]
	last = strings.LastIndexByte(rest, '|')
	if last < 0 {
		return EdgeKey{}, fmt.Errorf("want <source>|<destination>|<port>|<protocol>, got %q", trunc(id))
	}
	dst, port := rest[:last], rest[last+1:]
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return EdgeKey{}, fmt.Errorf("port %q: want 0..65535", trunc(port))
	}
	pr, err := strconv.ParseUint(proto, 10, 8)
	if err != nil {
		return EdgeKey{}, fmt.Errorf("protocol %q: want 0..255", trunc(proto))
	}
	if _, err := ParseNodeID(src); err != nil {
		return EdgeKey{}, fmt.Errorf("source: %w", err)
	}
	if _, err := ParseNodeID(dst); err != nil {
		return EdgeKey{}, fmt.Errorf("destination: %w", err)
	}
	return EdgeKey{Source: src, Destination: dst, Port: uint16(p), Protocol: uint8(pr)}, nil
}

// FlowKey identifies one connection's rows: its connectionKey and start
// time (a later connection reusing the 5-tuple starts later).
type FlowKey struct {
	ConnectionKey uint64
	StartSeconds  uint32
}

func (k FlowKey) String() string {
	return strconv.FormatUint(k.ConnectionKey, 10) + "-" + strconv.FormatUint(uint64(k.StartSeconds), 10)
}

// ParseFlowKey reads FlowKey.String's form.
func ParseFlowKey(s string) (FlowKey, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok || len(s) > 32 {
		return FlowKey{}, fmt.Errorf("want <connectionKey>-<startSeconds>, got %q", trunc(s))
	}
	ck, err := strconv.ParseUint(a, 10, 64)
	if err != nil {
		return FlowKey{}, fmt.Errorf("connection key %q: not a number", trunc(a))
	}
	st, err := strconv.ParseUint(b, 10, 32)
	if err != nil {
		return FlowKey{}, fmt.Errorf("start %q: not a number of seconds", trunc(b))
	}
	return FlowKey{ConnectionKey: ck, StartSeconds: uint32(st)}, nil
}

// trunc keeps error messages short whatever a client sent.
func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
