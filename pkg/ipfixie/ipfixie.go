// Package ipfixie holds what the IPFIX exporter and collector must agree on:
// the information-element (IE) registry, the table of IEs a flow record is
// exported with, and the conversions between flow.Record and wire values.
//
// Keeping the table here, used by both sides, means adding an IE is one entry
// in FlowIEs (or, for an IE outside go-ipfix's registry, in an optional table
// such as the DNS/TLS details of l7details.go) and nothing else.
package ipfixie

import (
	"fmt"
	"slices"

	"github.com/vmware/go-ipfix/pkg/entities"
	"github.com/vmware/go-ipfix/pkg/registry"
)

// Enterprise numbers of the registries flowlens uses.
const (
	EnterpriseIANA    uint32 = 0
	EnterpriseReverse uint32 = 29305 // RFC 5103 reverse IEs
	EnterpriseAntrea  uint32 = 56506
)

// VariableLength is the template length that announces a variable-length
// field (RFC 7011 section 7).
const VariableLength uint16 = 65535

// DataType is the IPFIX abstract data type (RFC 7012 section 3.1). The values
// follow go-ipfix's numbering so its registry converts without a table.
type DataType uint8

// IPFIX abstract data types.
const (
	OctetArray DataType = iota
	Unsigned8
	Unsigned16
	Unsigned32
	Unsigned64
	Signed8
	Signed16
	Signed32
	Signed64
	Float32
	Float64
	Boolean
	MacAddress
	String
	DateTimeSeconds
	DateTimeMilliseconds
	DateTimeMicroseconds
	DateTimeNanoseconds
	IPv4Address
	IPv6Address
	BasicList
	SubTemplateList
	SubTemplateMultiList
)

// Element is an information element definition.
type Element struct {
	Name       string
	Enterprise uint32
	ID         uint16
	Type       DataType
	// Length is the default encoded length, VariableLength for strings and
	// octet arrays.
	Length uint16
}

type idKey struct {
	ent uint32
	id  uint16
}

type nameKey struct {
	ent  uint32
	name string
}

// The registry is copied out of go-ipfix once, at init, when nothing else
// can be running: go-ipfix's LoadRegistry replaces its global maps, so
// reading them later could race with another package reloading them. After
// init these maps are only read.
var (
	byID   = map[idKey]Element{}
	byName = map[nameKey]Element{}
)

func init() {
	registry.LoadRegistry()
	for _, ent := range []uint32{EnterpriseIANA, EnterpriseReverse, EnterpriseAntrea} {
		// IANA ids stay well below 1024 today; Antrea's start at 100.
		for id := 0; id < 1024; id++ {
			ie, err := registry.GetInfoElementFromID(uint16(id), ent)
			if err != nil || ie == nil {
				continue
			}
			e := fromGoIPFIX(ie)
			byID[idKey{ent, e.ID}] = e
			byName[nameKey{ent, e.Name}] = e
		}
	}
	for _, fie := range slices.Concat(FlowIEs, l7DetailIEs, workloadIEs, healthIEs) {
		if d := fie.Define; d != nil {
			byID[idKey{d.Enterprise, d.ID}] = *d
			byName[nameKey{d.Enterprise, d.Name}] = *d
		}
	}
}

func fromGoIPFIX(ie *entities.InfoElement) Element {
	return Element{Name: ie.Name, Enterprise: ie.EnterpriseId, ID: ie.ElementId, Type: DataType(ie.DataType), Length: ie.Len}
}

// Lookup returns the element registered for (enterprise, id).
func Lookup(enterprise uint32, id uint16) (Element, bool) {
	e, ok := byID[idKey{enterprise, id}]
	return e, ok
}

// LookupName returns the element registered under name in enterprise.
func LookupName(name string, enterprise uint32) (Element, bool) {
	e, ok := byName[nameKey{enterprise, name}]
	return e, ok
}

// Unknown describes an IE missing from the registry: it is kept as an octet
// array under a synthetic name, so a collector can still show it.
func Unknown(enterprise uint32, id uint16, length uint16) Element {
	return Element{
		Name:       fmt.Sprintf("ie%d_%d", enterprise, id),
		Enterprise: enterprise,
		ID:         id,
		Type:       OctetArray,
		Length:     length,
	}
}
