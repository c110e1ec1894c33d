package ipfixexport

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmware/go-ipfix/pkg/collector"
	"github.com/vmware/go-ipfix/pkg/registry"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixcollect"
	"github.com/flowlens/flowlens/pkg/ipfixie"
)

// setHealth gives every health field a distinct value.
func setHealth(r *flow.Record) {
	r.Health = flow.Health{
		RTTMinMicros: 180, RTTAvgMicros: 240, RTTMaxMicros: 3100, RTTSamples: 12,
		FwdRetransmits: 3, RevRetransmits: 1, FwdResets: 1, RevResets: 2,
		EstablishMicros: 512, ZeroWindows: 4, FwdDrops: 7, RevDrops: 70000,
		DropReason: "TCP_ZEROWINDOW",
	}
	r.DestinationName = "db.internal.example"
}

func withoutHealth(r flow.Record) flow.Record {
	r.Health, r.DestinationName = flow.Health{}, ""
	return r
}

func TestHealthRoundTripsThroughIPFIXCollectOnlyWhenEnabled(t *testing.T) {
	for _, health := range []bool{true, false} {
		for _, l7 := range []bool{true, false} {
			for _, transport := range []Transport{TCP, UDP} {
				for _, tc := range recordCases {
					t.Run(fmt.Sprintf("HealthElements=%v/L7DetailElements=%v/%s/%s", health, l7, transport, tc.name), func(t *testing.T) {
						t.Parallel()
						var got collected
						addr, _ := startCollector(t, ipfixcollect.Config{Network: string(transport), Address: "127.0.0.1:0"}, &got)
						e, _ := startExporter(t, Config{Address: addr, Transport: transport, FlushInterval: 20 * time.Millisecond,
							L7DetailElements: l7, HealthElements: health}, nil)
						r := testRecord(9, tc.v6)
						setL7Details(&r)
						setHealth(&r)
						tc.mutate(&r)
						want := wireView(r)
						if !l7 {
							want = withoutL7Details(want)
						}
						if !health {
							want = withoutHealth(want)
						}
						e.Export(&r)
						waitFor(t, 5*time.Second, "the record", func() bool { return len(got.snapshot()) == 1 })
						if diff := cmp.Diff(want, got.snapshot()[0]); diff != "" {
							t.Errorf("record after the round trip differs (-want +got):\n%s", diff)
						}
						raw := got.raw[0]
						for _, h := range ipfixie.HealthElements() {
							f, ok := raw.Get(h.Name)
							if ok != health {
								t.Errorf("field %s present = %v, want %v", h.Name, ok, health)
								continue
							}
							if ok && (f.Enterprise != h.Enterprise || f.ID != h.ID) {
								t.Errorf("field %s is %d/%d, want %d/%d", h.Name, f.Enterprise, f.ID, h.Enterprise, h.ID)
							}
						}
					})
				}
			}
		}
	}
}

// What Antrea's Flow Aggregator's collector (go-ipfix, LenientKeepUnknown)
// makes of the health IEs: the two IANA drop counters by name, the
// placeholder ones kept as unnamed octet arrays, every other IE as
// without them. LenientDropUnknown leaves the placeholder ones out.
func TestHealthElementsDecodeWithLenientGoIPFIXCollector(t *testing.T) {
	registry.LoadRegistry()
	for _, mode := range []collector.DecodingMode{collector.DecodingModeLenientKeepUnknown, collector.DecodingModeLenientDropUnknown} {
		t.Run(string(mode), func(t *testing.T) {
			addr, got := startGoIPFIXCollector(t, mode)
			e, stop := startExporter(t, Config{Address: addr, Transport: TCP, FlushInterval: 20 * time.Millisecond, HealthElements: true}, nil)
			r := testRecord(43, false)
			setHealth(&r)
			want := wantIEs(&r)
			want["droppedPacketDeltaCount"] = strconv.FormatUint(uint64(r.Health.FwdDrops), 10)
			want["reverseDroppedPacketDeltaCount"] = strconv.FormatUint(uint64(r.Health.RevDrops), 10)
			if mode == collector.DecodingModeLenientKeepUnknown {
				for _, h := range ipfixie.HealthElements() {
					if h.Enterprise != ipfixie.EnterprisePlaceholder {
						continue
					}
					key := fmt.Sprintf("%d/%d", h.Enterprise, h.ID)
					if h.Str != nil {
						want[key] = *h.Str(&r)
					} else {
						want[key] = string(binary.BigEndian.AppendUint32(nil, *h.U32(&r)))
					}
				}
			}
			e.Export(&r)
			select {
			case m := <-got:
				if diff := cmp.Diff(want, m); diff != "" {
					t.Errorf("IEs decoded by go-ipfix differ (-want +got):\n%s", diff)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("go-ipfix collector received no data record")
			}
			stop()
		})
	}
}

// A Strict go-ipfix collector rejects the templates with the health
// elements, as it does with the L7 details: why the option is off for
// collectors that are not flowlens's.
func TestStrictGoIPFIXCollectorRejectsTemplatesWithHealthElements(t *testing.T) {
	registry.LoadRegistry()
	addr, got := startGoIPFIXCollector(t, collector.DecodingModeStrict)
	reg := prometheus.NewRegistry()
	e, _ := startExporter(t, Config{Address: addr, Transport: TCP, FlushInterval: 20 * time.Millisecond, HealthElements: true}, reg)
	r := testRecord(1, false)
	e.Export(&r)
	waitFor(t, 5*time.Second, "the record with health elements written", func() bool {
		return metricValue(t, reg, "flowlens_ipfix_exporter_records_sent_total") >= 1
	})
	plain, _ := startExporter(t, Config{Address: addr, Transport: TCP, FlushInterval: 20 * time.Millisecond}, nil)
	r = testRecord(2, false)
	plain.Export(&r)
	select {
	case m := <-got:
		if m["packetTotalCount"] != "2" {
			t.Fatalf("Strict collector decoded a record whose template has unknown IEs: %v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Strict collector decoded nothing, not even the default exporter's record")
	}
}
