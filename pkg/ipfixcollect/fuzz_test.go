package ipfixcollect

import (
	"net/netip"
	"testing"
)

// FuzzMessage feeds arbitrary bytes to the decoder: it may reject them but
// must neither panic nor loop. Seeds cover templates, data and withdrawal.
func FuzzMessage(f *testing.F) {
	f.Add(newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(1), simpleData(2)).bytes())
	f.Add(newMsg(1).set(2, tmplRecord(300, srcV4, podName, unknownIE, flowType)).set(300, []byte{1, 2, 3, 4, 255, 0, 1, 'x', 1, 2, 3, 9}).bytes())
	f.Add(newMsg(1).set(3, []byte{1, 44, 0, 1, 0, 1, 0, 149, 0, 4}).set(2, withdrawal(2)).bytes())
	f.Add([]byte{0, 10, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		s := newSession(netip.AddrPort{})
		emitted := 0
		// Twice: the second pass decodes data with templates from the first.
		for range 2 {
			st, _ := s.message(msg, func(r *Record) {
				emitted++
				_ = r.AppendJSON(nil)
				_, _ = r.FlowRecord()
			})
			if st.records < 0 || emitted > len(msg)*2 {
				t.Fatalf("decoded %d records from %d bytes", emitted, len(msg))
			}
		}
	})
}
