package agentconfig

import (
	"strings"
	"time"

	"github.com/flowlens/flowlens/pkg/confutil"
)

// Mirror is the traffic mirror: the agent copies both directions of the
// traffic of this node's pods that opted into L7 (the
// visibility.antrea.io/l7-export annotation, any value) to a capture veth
// pair it owns, where Suricata reads it with af-packet (pkg/mirror).
type Mirror struct {
	// Enabled: unset, on when L7 is on (l7.eve.source) and the context
	// comes from Kubernetes (kubernetes.enabled), the only source that
	// knows which pods are this node's. After validation it is never nil.
	Enabled *bool `yaml:"enabled"`
	// Mechanism is auto (TCX with bpf_clone_redirect, else tc clsact +
	// u32 + mirred), tcx or tc.
	Mechanism string `yaml:"mechanism"`
	// CaptureInterface is the end of the capture veth pair the copies are
	// sent through; PeerInterface the end Suricata reads (its
	// --af-packet interface). Both must start with "flc": the eBPF
	// counters skip interfaces so named, and must, or they would count
	// every mirrored byte a second time.
	CaptureInterface string `yaml:"captureInterface"`
	PeerInterface    string `yaml:"peerInterface"`
	// ReconcileInterval is how often the mirrors are reconciled besides
	// every change of the opted-in pods: it picks up a bridged pod whose
	// interface could only be found once it talked, and repairs a capture
	// veth someone deleted.
	ReconcileInterval Duration `yaml:"reconcileInterval"`
}

// Values of Mirror.Mechanism and the capture interfaces' required prefix.
const (
	MirrorAuto = "auto"
	MirrorTCX  = "tcx"
	MirrorTC   = "tc"
	// CapturePrefix starts both capture interface names.
	CapturePrefix = "flc"
	// maxIfName is IFNAMSIZ-1.
	maxIfName = 15
)

func defaultMirror() Mirror {
	return Mirror{
		Mechanism:         MirrorAuto,
		CaptureInterface:  "flc0",
		PeerInterface:     "flc1",
		ReconcileInterval: Duration(10 * time.Second),
	}
}

// validateMirror fills mirror.enabled and checks the section. Called after
// kubernetes and l7 are known.
func (c *Config) validateMirror(p *confutil.Problems) {
	m := &c.Mirror
	if m.Enabled == nil {
		on := c.L7.EVE.Source != "" && c.Kubernetes.Enabled
		m.Enabled = &on
	}
	if *m.Enabled && !c.Kubernetes.Enabled {
		p.Addf("mirror.enabled", "needs kubernetes.enabled: only the API server says which pods are this node's and opted into L7")
	}
	m.Mechanism = strings.ToLower(m.Mechanism)
	switch m.Mechanism {
	case MirrorAuto, MirrorTCX, MirrorTC:
	default:
		p.Addf("mirror.mechanism", "want auto, tcx or tc, got %q", m.Mechanism)
	}
	checkCaptureName(p, "mirror.captureInterface", m.CaptureInterface)
	checkCaptureName(p, "mirror.peerInterface", m.PeerInterface)
	if m.CaptureInterface == m.PeerInterface {
		p.Addf("mirror.peerInterface", "%q is also mirror.captureInterface; the pair needs two names", m.PeerInterface)
	}
	p.PositiveDuration("mirror.reconcileInterval", m.ReconcileInterval)
}

func checkCaptureName(p *confutil.Problems, field, name string) {
	switch {
	case !strings.HasPrefix(name, CapturePrefix):
		p.Addf(field, "%q must start with %q (the eBPF counters skip such interfaces; otherwise they would count the copies)", name, CapturePrefix)
	case len(name) > maxIfName:
		p.Addf(field, "%q is longer than %d characters", name, maxIfName)
	case strings.ContainsAny(name, "/: \t\n") || name == "." || name == "..":
		p.Addf(field, "%q is not a valid interface name", name)
	}
}
