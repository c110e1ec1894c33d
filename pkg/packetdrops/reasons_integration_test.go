//go:build integration

package packetdrops

import "testing"

// TestDefaultIgnoreReasonsExist: every default ignored reason is a name of
// this kernel's enum (6.18 has them all). keepMask only logs an unknown
// name, so a misspelt default would silently keep its reason.
func TestDefaultIgnoreReasonsExist(t *testing.T) {
	names, err := kernelReasonNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range DefaultIgnoreReasons() {
		if _, ok := names.byName[r]; !ok {
			t.Errorf("default ignored reason %s is not in this kernel's enum skb_drop_reason", r)
		}
	}
	mask, err := keepMask(names, DefaultIgnoreReasons())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"NETFILTER_DROP", "NO_SOCKET", "TAP_FILTER", "TCP_OVERWINDOW", "QDISC_DROP"} {
		if s := names.byName[r]; mask[s/64]>>(s%64)&1 == 0 {
			t.Errorf("%s, a lost packet, is filtered by default", r)
		}
	}
}
