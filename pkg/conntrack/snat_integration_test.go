//go:build integration

package conntrack

import (
	"net/netip"
	"testing"

	ct "github.com/ti-mo/conntrack"

	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
)

// Source-NATed entries as the kernel holds and dumps them: the proxy SNAT
// address and port come out of our dump as inserted, and as ti-mo's
// independent decoder of the same dump sees the reply tuple.
func TestDumpReportsProxySnat(t *testing.T) {
	need(t, "ip")
	_, path := conntracktest.NetNS(t, "snat")
	entries := []struct {
		e    conntracktest.Entry
		want netip.AddrPort // zero: not SNATed
	}{
		// NodePort from outside: DNAT to the pod, masquerade to the node.
		{conntracktest.Entry{Proto: 6, OrigSrc: cli4, OrigDst: node4, OrigSrcPort: 41000, OrigDstPort: 30080,
			ReplySrc: ep4, ReplyDst: node4, ReplySrcPort: 8080, ReplyDstPort: 61000,
			TCPState: 3, Timeout: 3600, Status: 0x3a},
			netip.AddrPortFrom(node4, 61000)},
		{conntracktest.Entry{Proto: 6, OrigSrc: cli6, OrigDst: vip6, OrigSrcPort: 41001, OrigDstPort: 443,
			ReplySrc: ep6, ReplyDst: node6, ReplySrcPort: 8443, ReplyDstPort: 41001,
			TCPState: 3, Timeout: 3600, Status: 0x3a},
			netip.AddrPortFrom(node6, 41001)},
		// A port-only rewrite.
		{conntracktest.Entry{Proto: 17, OrigSrc: cli4, OrigDst: ep4, OrigSrcPort: 5000, OrigDstPort: 53,
			ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 53, ReplyDstPort: 5001, Timeout: 3600, Status: 0x1a},
			netip.AddrPortFrom(cli4, 5001)},
		// ICMP: an address, no port.
		{conntracktest.Entry{Proto: 1, OrigSrc: cli4, OrigDst: ep4, OrigSrcPort: 0x79, OrigDstPort: 8 << 8,
			ReplySrc: ep4, ReplyDst: node4, ReplySrcPort: 0x79, ReplyDstPort: 0, Timeout: 3600, Status: 0x1a},
			netip.AddrPortFrom(node4, 0)},
		// Not translated.
		{conntracktest.Entry{Proto: 6, OrigSrc: cli4, OrigDst: ep4, OrigSrcPort: 41002, OrigDstPort: 8080,
			ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 8080, ReplyDstPort: 41002, TCPState: 3, Timeout: 3600},
			netip.AddrPort{}},
	}
	for _, e := range entries {
		if err := conntracktest.Insert(path, e.e); err != nil {
			t.Fatalf("insert %+v: %v", e.e, err)
		}
	}
	ours := dumpAll(t, newSource(t, Config{NetNSPath: path}))
	var theirs []ct.Flow
	err := netns.Do(path, func() error {
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		theirs, err = c.Dump(nil)
		return err
	})
	if err != nil {
		t.Fatalf("ti-mo dump: %v", err)
	}
	if len(ours) != len(entries) || len(theirs) != len(entries) {
		t.Fatalf("dumped %d entries, ti-mo %d; inserted %d", len(ours), len(theirs), len(entries))
	}
	byID := map[uint32]flow.Conn{}
	for _, c := range ours {
		byID[c.ID] = c
	}
	for _, f := range theirs {
		got, want := byID[f.ID], tiMoConn(f)
		if got.ProxySnatIP != want.ProxySnatIP || got.ProxySnatPort != want.ProxySnatPort {
			t.Errorf("%s: proxy SNAT %v, ti-mo's reply tuple gives %v", got.Tuple, addrPort(got), addrPort(want))
		}
	}
	for _, e := range entries {
		found := false
		for _, c := range ours {
			if c.Tuple.SrcPort != e.e.OrigSrcPort || c.Tuple.Proto != e.e.Proto {
				continue
			}
			found = true
			got, ok := c.ProxySnat()
			if ok != e.want.IsValid() || (ok && got != e.want) {
				t.Errorf("%s: ProxySnat() = %v, %v; inserted %v", c.Tuple, got, ok, e.want)
			}
		}
		if !found {
			t.Errorf("entry from port %d (proto %d) not dumped", e.e.OrigSrcPort, e.e.Proto)
		}
	}
}

func addrPort(c flow.Conn) string {
	if a, ok := c.ProxySnat(); ok {
		return a.String()
	}
	return "none"
}
