//go:build integration && antreafa

package antreafa_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/ipfixie"
	"github.com/flowlens/flowlens/test/kubeapi"
)

// What Antrea's Flow Aggregator does with templates holding IEs outside
// its registry (the enterprise-32473 health, destination-name, DNS/TLS and
// workload elements): its collector decodes leniently
// (LenientKeepUnknown, pkg/flowaggregator/collector/ipfix.go), logs each
// unknown IE of a template once, and its preprocessor, which reads IEs by
// name, ignores them; droppedPacketDeltaCount and its reverse are in its
// registry and ignored the same way. So every record is accepted, its
// known fields intact, and none of these reaches its output. Each template
// variant of ipfixexport sends one intra-node connection (exported by the
// aggregator without waiting for a peer); each must come out once with
// the counters and pods that were sent.
//
// Run against another build with FLOWLENS_ANTREA_FLOW_AGGREGATOR (e.g. the
// main branch's, hack/build-antrea-flow-aggregator.sh main).
func TestAntreaFlowAggregatorAcceptsTemplatesWithUnknownElements(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cluster, err := kubeapi.Start(ctx, kubeapi.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Stop)
	faOut := startFARecords(t)
	fa := startFlowAggregator(t, cluster, faOut.addr, faActive, faInactive)

	variants := []struct {
		l7, health bool
	}{{false, false}, {true, false}, {false, true}, {true, true}}
	src, dst := netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.244.1.3")
	now := time.Now()
	type sentRec struct {
		name string
		r    flow.Record
	}
	var sent []sentRec
	for i, v := range variants {
		name := fmt.Sprintf("L7DetailElements=%v/HealthElements=%v", v.l7, v.health)
		exp, err := ipfixexport.New(ipfixexport.Config{
			Address: fmt.Sprintf("127.0.0.1:%d", faIPFIXPort), Transport: ipfixexport.TCP,
			ObservationDomainID: uint32(100 + i), FlushInterval: 50 * time.Millisecond,
			L7DetailElements: v.l7, HealthElements: v.health,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ectx, ecancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- exp.Run(ectx) }()
		t.Cleanup(func() {
			ecancel()
			if err := <-done; err != nil {
				t.Errorf("exporter %s: %v", name, err)
			}
		})

		var r flow.Record
		r.Tuple = flow.NewTuple(src, dst, uint16(41000+i), 8080, flow.ProtoTCP)
		r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
		r.StartNanos = now.Add(-3 * time.Second).UnixNano()
		r.StopNanos, r.ExportNanos = now.UnixNano(), now.UnixNano()
		r.EndReason, r.TCPState, r.FlowType = flow.EndOfFlow, flow.TCPStateTimeWait, flow.FlowTypeIntraNode
		r.Fwd = flow.Counters{Packets: uint64(10 + i), Bytes: uint64(1000 + i)}
		r.Rev = flow.Counters{Packets: uint64(20 + i), Bytes: uint64(2000 + i)}
		r.FwdDelta, r.RevDelta = r.Fwd, r.Rev
		r.Source = flow.Endpoint{PodName: "client", PodNamespace: "shop", NodeName: nodeA, WorkloadKind: "Deployment", WorkloadName: "client"}
		r.Destination = flow.Endpoint{PodName: "db", PodNamespace: "store", NodeName: nodeA}
		r.L7 = flow.L7{TLSServerName: "db.store.example", TLSVersion: "TLS 1.3"}
		r.Health = flow.Health{RTTMinMicros: 90, RTTAvgMicros: 120, RTTMaxMicros: 400, RTTSamples: 5,
			FwdRetransmits: 1, FwdResets: 1, EstablishMicros: 300, FwdDrops: 2, RevDrops: 1, DropReason: "NETFILTER_DROP"}
		r.DestinationName = "db.store.example"
		if !exp.Export(&r) {
			t.Fatalf("%s: exporter refused the record", name)
		}
		exp.Flush()
		sent = append(sent, sentRec{name, r})
	}

	for _, s := range sent {
		t.Run(s.name, func(t *testing.T) {
			from := netip.AddrPortFrom(src, s.r.Tuple.SrcPort)
			rec := faOut.waitFor(t, fa, from, netip.AddrPortFrom(dst, s.r.Tuple.DstPort), 30*time.Second)
			checkStrings(t, rec, map[string]string{
				"sourcePodName": "client", "sourcePodNamespace": "shop", "destinationPodName": "db", "destinationPodNamespace": "store",
			})
			checkUint(t, rec, "flowType", uint64(flow.FlowTypeIntraNode))
			checkUint(t, rec, "packetTotalCount", s.r.Fwd.Packets)
			checkUint(t, rec, "octetTotalCount", s.r.Fwd.Bytes)
			checkUint(t, rec, "reversePacketTotalCount", s.r.Rev.Packets)
			checkUint(t, rec, "reverseOctetDeltaCount", s.r.RevDelta.Bytes)
			for _, f := range rec.Fields {
				if f.Enterprise == ipfixie.EnterprisePlaceholder || f.Name == "droppedPacketDeltaCount" || f.Name == "reverseDroppedPacketDeltaCount" {
					t.Errorf("the aggregator's output carries %s (%d/%d)", f.Name, f.Enterprise, f.ID)
				}
			}
		})
	}
	// A second record of any connection would count it twice.
	time.Sleep(faActive + faInactive + time.Second)
	for _, s := range sent {
		if n := len(faOut.of(netip.AddrPortFrom(src, s.r.Tuple.SrcPort), netip.AddrPortFrom(dst, s.r.Tuple.DstPort))); n != 1 {
			t.Errorf("%s: the aggregator exported %d records of the connection, want 1", s.name, n)
		}
	}

	// The decoding mode shows in its log: each IE its registry lacks is
	// logged by the lenient collector, and nothing was refused.
	logBytes, err := os.ReadFile(fa.logPath)
	if err != nil {
		t.Fatal(err)
	}
	log := string(logBytes)
	for _, h := range ipfixie.HealthElements() {
		if h.Enterprise != ipfixie.EnterprisePlaceholder {
			continue
		}
		want := fmt.Sprintf("enterpriseID=%d elementID=%d\n", h.Enterprise, h.ID)
		if !strings.Contains(log, "Template includes an information element that is not present in registry") || !strings.Contains(log, want) {
			t.Errorf("the aggregator's log does not show %s (%s) decoded as an unknown IE", h.Name, want)
		}
	}
	for _, bad := range []string{"failed to decode", "Error when decoding", "does not exist in registry"} {
		if strings.Contains(log, bad) {
			t.Errorf("the aggregator's log says %q", bad)
		}
	}
	t.Logf("aggregator's lenient-decoding log lines: %d", strings.Count(log, "not present in registry"))
}
