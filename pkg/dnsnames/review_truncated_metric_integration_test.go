//go:build integration

package dnsnames

import (
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowlens/flowlens/test/netnstest"
)

// TestReviewTruncatedCountsOnlyCopied: truncated_total says "DNS responses
// longer than the copy bound: only the answers that fit are used". The
// program counts it before the copy and the ring write, so a long
// response the full ring refused is counted as truncated (its answers
// partly used) and as lost (none used). With a one-page ring and no
// reader, 5 long responses: 3 written, 2 lost, 5 "truncated".
func TestReviewTruncatedCountsOnlyCopied(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "dnstr", Pods: []netnstest.PodSpec{{Name: "dns"}, {Name: "client"}}})
	var big []zoneRR
	for i := 1; i <= 100; i++ {
		big = append(big, zoneRR{typ: dnsmessage.TypeA, ttl: 60, data: netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String()})
	}
	startDNSServer(t, node.Pod("dns"), zone{"big.example.test.": big})
	n, err := New(Config{RingBytes: 4096}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	attachAll(t, n, node) // no Run: nothing drains the ring
	for i := 0; i < 5; i++ {
		if _, err := resolve(node.Pod("client"), node.Pod("dns").Addr(53), "big.example.test.", dnsmessage.TypeA); err != nil {
			t.Fatal(err)
		}
	}
	n.syncStats()
	events, lost, truncated := value(n.metrics.kernel[statEvents]), value(n.metrics.kernel[statRingFull]), value(n.metrics.kernel[statTruncated])
	t.Logf("ring events %v, ring losses %v, truncated %v", events, lost, truncated)
	if lost == 0 {
		t.Fatal("the ring did not fill: the check below would prove nothing")
	}
	if truncated > events {
		t.Errorf("truncated_total %v > ring_events_total %v: responses lost to the full ring are also counted as truncated (their answers \"used\")", truncated, events)
	}
}
