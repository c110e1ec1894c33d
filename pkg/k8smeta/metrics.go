package k8smeta

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/ipindex"
)

type metrics struct {
	events       *prometheus.CounterVec
	invalidL7    prometheus.Counter
	badAddresses *prometheus.CounterVec
	// clusterUIDErrors: the kube-system namespace could not be read, so
	// records carry no cluster id.
	clusterUIDErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, idx *ipindex.Index) (*metrics, error) {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_k8smeta_informer_events_total",
			Help: "Informer events applied to the enrichment index, by resource and operation.",
		}, []string{"resource", "op"}),
		invalidL7: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_k8smeta_invalid_l7_annotations_total",
			Help: "Distinct invalid visibility.antrea.io/l7-export values seen (each object+value counted and logged once); treated as absent.",
		}),
		badAddresses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_k8smeta_unparsable_addresses_total",
			Help: "IP addresses in API objects that did not parse and were ignored, by resource.",
		}, []string{"resource"}),
		clusterUIDErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_k8smeta_cluster_uid_errors_total",
			Help: "Failed reads of the kube-system namespace's UID, the cluster id records carry when clusterID is not configured; records then carry none.",
		}),
	}
	gauge := func(name, help string, f func(ipindex.Stats) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
			func() float64 { return float64(f(idx.Stats())) })
	}
	cs := []prometheus.Collector{
		m.events, m.invalidL7, m.badAddresses, m.clusterUIDErrors,
		gauge("flowlens_k8smeta_pod_ips", "Pod IPs in the index, including released ones kept for the grace period.",
			func(s ipindex.Stats) int { return s.IPs }),
		gauge("flowlens_k8smeta_host_ips", "Node and host-network IPs in the index.",
			func(s ipindex.Stats) int { return s.HostIPs }),
		gauge("flowlens_k8smeta_cluster_ips", "Service ClusterIPs in the index.",
			func(s ipindex.Stats) int { return s.ClusterIPs }),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("k8smeta: register metrics: %w", err)
		}
	}
	return m, nil
}
