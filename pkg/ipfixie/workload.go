package ipfixie

import (
	"slices"

	"github.com/flowlens/flowlens/pkg/flow"
)

// WorkloadElement is one of the four workload-identity IEs (enterprise
// EnterprisePlaceholder, variable-length string): the owning workload of
// each end of a flow, which no registry has an element for. The table
// behind WorkloadElements is their only definition, shared by the
// exporter's templates and the collector's decoding.
type WorkloadElement struct {
	Name string
	ID   uint16
	// Field is the flow.Record member the IE carries.
	Field func(*flow.Record) *string
}

// workloadElements continue the placeholder numbering after the DNS/TLS
// details (1 to 9). Names and ids are the wire contract of
// docs/ipfix-elements.md: never renumber, only append.
var workloadElements = [...]WorkloadElement{
	{"sourcePodWorkloadKind", 10, func(r *flow.Record) *string { return &r.Source.WorkloadKind }},
	{"sourcePodWorkloadName", 11, func(r *flow.Record) *string { return &r.Source.WorkloadName }},
	{"destinationPodWorkloadKind", 12, func(r *flow.Record) *string { return &r.Destination.WorkloadKind }},
	{"destinationPodWorkloadName", 13, func(r *flow.Record) *string { return &r.Destination.WorkloadName }},
}

// WorkloadElements returns the workload IEs in template order (a copy).
func WorkloadElements() []WorkloadElement { return slices.Clone(workloadElements[:]) }

// workloadIEs are the flow-table rows of workloadElements. Like the
// DNS/TLS details they are optional (TemplateOptions.L7Details): being in
// no registry, they would make a Strict go-ipfix collector reject the
// default templates.
var workloadIEs = func() []FlowIE {
	ies := make([]FlowIE, 0, len(workloadElements))
	for _, w := range workloadElements {
		ies = append(ies, definedStrIE(w.Name, EnterprisePlaceholder, w.ID, w.Field))
	}
	return ies
}()
