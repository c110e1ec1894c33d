package agentconfig

import (
	"strings"
	"time"

	"github.com/flowlens/flowlens/pkg/confutil"
)

// Observe is what eBPF programs outside the counters add to a record:
// TCP health from the sock/tcp tracepoints, drops with the kernel's
// reason, and destination names from DNS responses seen on pod traffic.
// Each is auto (on where its program loads; where it cannot, the agent
// logs which program and why and runs without), on (failing to load is
// fatal) or off.
type Observe struct {
	TCPHealth   ObserveTCPHealth `yaml:"tcpHealth"`
	PacketDrops ObserveDrops     `yaml:"packetDrops"`
	DNSNames    ObserveDNSNames  `yaml:"dnsNames"`
}

// ObserveTCPHealth is observe.tcpHealth (pkg/tcphealth).
type ObserveTCPHealth struct {
	Mode string `yaml:"mode"`
	// MapEntries bounds the kernel's per-socket table (LRU: a full table
	// forgets the least recently active socket, counted).
	MapEntries int `yaml:"mapEntries"`
}

// ObserveDrops is observe.packetDrops (pkg/packetdrops).
type ObserveDrops struct {
	Mode string `yaml:"mode"`
	// RatePerCPU bounds the drop events passed up per second and CPU;
	// the rest are counted per reason, not attributed to flows.
	RatePerCPU int `yaml:"ratePerCPU"`
	// MaxFlows bounds the drops table (flows with drops not yet exported).
	MaxFlows int `yaml:"maxFlows"`
	// UnattributedAfter: drops no record took within this long are
	// counted as unattributed (flowlens_packetdrops_unattributed_total).
	UnattributedAfter Duration `yaml:"unattributedAfter"`
}

// ObserveDNSNames is observe.dnsNames (pkg/dnsnames).
type ObserveDNSNames struct {
	Mode string `yaml:"mode"`
	// CacheEntries bounds the name cache; MinTTL and MaxTTL clamp the
	// answers' TTLs (a floor keeps a name for the connection a pod opens
	// right after a 0-TTL answer).
	CacheEntries int      `yaml:"cacheEntries"`
	MinTTL       Duration `yaml:"minTTL"`
	MaxTTL       Duration `yaml:"maxTTL"`
	// RatePerCPU bounds the DNS responses passed up per second and CPU.
	RatePerCPU int `yaml:"ratePerCPU"`
}

// Values of the observe modes.
const (
	ObserveAuto = "auto"
	ObserveOn   = "on"
	ObserveOff  = "off"
	// Bounds that keep a typo from asking for gigabytes.
	MaxObserveEntries = 1 << 24
	MaxObserveRate    = 1 << 24
)

func defaultObserve() Observe {
	return Observe{
		TCPHealth: ObserveTCPHealth{Mode: ObserveAuto, MapEntries: 65536},
		PacketDrops: ObserveDrops{Mode: ObserveAuto, RatePerCPU: 10000, MaxFlows: 65536,
			UnattributedAfter: Duration(2 * time.Minute)},
		DNSNames: ObserveDNSNames{Mode: ObserveAuto, CacheEntries: 65536,
			MinTTL: Duration(30 * time.Second), MaxTTL: Duration(time.Hour), RatePerCPU: 10000},
	}
}

// validateObserve checks the observe section.
func (c *Config) validateObserve(p *confutil.Problems) {
	o := &c.Observe
	for _, m := range []struct {
		field string
		mode  *string
	}{
		{"observe.tcpHealth.mode", &o.TCPHealth.Mode},
		{"observe.packetDrops.mode", &o.PacketDrops.Mode},
		{"observe.dnsNames.mode", &o.DNSNames.Mode},
	} {
		*m.mode = strings.ToLower(*m.mode)
		switch *m.mode {
		case ObserveAuto, ObserveOn, ObserveOff:
		default:
			p.Addf(m.field, "want auto, on or off, got %q", *m.mode)
		}
	}
	confutil.Range(p, "observe.tcpHealth.mapEntries", o.TCPHealth.MapEntries, 1024, MaxObserveEntries)
	confutil.Range(p, "observe.packetDrops.ratePerCPU", o.PacketDrops.RatePerCPU, 1, MaxObserveRate)
	confutil.Range(p, "observe.packetDrops.maxFlows", o.PacketDrops.MaxFlows, 1, MaxObserveEntries)
	p.PositiveDuration("observe.packetDrops.unattributedAfter", o.PacketDrops.UnattributedAfter)
	confutil.Range(p, "observe.dnsNames.cacheEntries", o.DNSNames.CacheEntries, 1, MaxObserveEntries)
	confutil.Range(p, "observe.dnsNames.ratePerCPU", o.DNSNames.RatePerCPU, 1, MaxObserveRate)
	p.PositiveDuration("observe.dnsNames.minTTL", o.DNSNames.MinTTL)
	p.PositiveDuration("observe.dnsNames.maxTTL", o.DNSNames.MaxTTL)
	if o.DNSNames.MaxTTL < o.DNSNames.MinTTL {
		p.Addf("observe.dnsNames.maxTTL", "%s is below observe.dnsNames.minTTL %s", o.DNSNames.MaxTTL.D(), o.DNSNames.MinTTL.D())
	}
}
