package ipindex

import (
	"fmt"
	"strings"

	"github.com/flowlens/flowlens/pkg/flow"
)

// L7Annotation is the opt-in annotation read from pods and namespaces (and
// from inventory entries), named as Antrea names it so existing manifests work.
const L7Annotation = "visibility.antrea.io/l7-export"

// L7Mode is a parsed L7Annotation value.
type L7Mode uint8

// L7Mode values. L7Unset means "no opinion": a pod with L7Unset inherits its
// namespace's mode.
const (
	L7Unset L7Mode = iota
	L7Ingress
	L7Egress
	L7Both
)

func (m L7Mode) String() string {
	switch m {
	case L7Ingress:
		return "ingress"
	case L7Egress:
		return "egress"
	case L7Both:
		return "both"
	}
	return ""
}

// ParseL7Mode parses an annotation value, ignoring case and surrounding
// space. An unknown value is an error; callers treat it as absent.
func ParseL7Mode(v string) (L7Mode, error) {
	switch s := strings.TrimSpace(v); {
	case strings.EqualFold(s, "ingress"):
		return L7Ingress, nil
	case strings.EqualFold(s, "egress"):
		return L7Egress, nil
	case strings.EqualFold(s, "both"):
		return L7Both, nil
	}
	return L7Unset, fmt.Errorf("invalid %s value %q: want ingress, egress or both", L7Annotation, v)
}

func (m L7Mode) wantsEgress() bool  { return m == L7Egress || m == L7Both }
func (m L7Mode) wantsIngress() bool { return m == L7Ingress || m == L7Both }

// want combines the effective modes of both ends of a connection.
func want(src, dst L7Mode) flow.L7Want {
	w := flow.L7None
	if src.wantsEgress() {
		w |= flow.L7Source
	}
	if dst.wantsIngress() {
		w |= flow.L7Destination
	}
	return w
}
