package agenttest

import (
	"regexp"
	"strconv"
	"strings"
)

// observerFamilies are metric families that count the kernel's packets and
// sockets (pkg/packetdrops, pkg/tcphealth, pkg/dnsnames): their "drops"
// and "evictions" are what the agent observes on the node, not records it
// lost.
var observerFamilies = []string{"flowlens_packetdrops_", "flowlens_tcphealth_", "flowlens_dnsnames_", "flowlens_agent_observer_"}

// NonZeroLosses returns the "name value" lines of metrics, a Prometheus
// text page, whose name matches pattern (e.g. `drop|lost|evict`) and whose
// value is above zero: what a test that wants no record lost checks. The
// observers' families are left out.
func NonZeroLosses(metrics, pattern string) []string {
	re := regexp.MustCompile(`(?m)^(flowlens_\S*(?:` + pattern + `)\S*) (\S+)$`)
	var out []string
	for _, m := range re.FindAllStringSubmatch(metrics, -1) {
		if isObserverMetric(m[1]) {
			continue
		}
		if v, err := strconv.ParseFloat(m[2], 64); err == nil && v > 0 {
			out = append(out, m[1]+" "+m[2])
		}
	}
	return out
}

func isObserverMetric(name string) bool {
	for _, f := range observerFamilies {
		if strings.HasPrefix(name, f) {
			return true
		}
	}
	return false
}
