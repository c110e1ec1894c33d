package ipfixcollect

import (
	"net/netip"
	"testing"
)

// FuzzMessage feeds arbitrary bytes to the decoder: it may reject them but
// must neither panic nor loop, must decode at most one field per byte of
// input (no amplification) and must keep the session within its bounds.
// Seeds cover templates, data, withdrawal and the crafted attacks: zero-
// length fields, template floods and messages past the field bound.
// `make test` runs it for a bounded time (see Makefile).
func FuzzMessage(f *testing.F) {
	f.Add(newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(1), simpleData(2)).bytes())
	f.Add(newMsg(1).set(2, tmplRecord(300, srcV4, podName, unknownIE, flowType)).set(300, []byte{1, 2, 3, 4, 255, 0, 1, 'x', 1, 2, 3, 9}).bytes())
	f.Add(newMsg(1).set(3, []byte{1, 44, 0, 1, 0, 1, 0, 149, 0, 4}).set(2, withdrawal(2)).bytes())
	f.Add([]byte{0, 10, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	// Zero-length fields, alone and after a real one, with data.
	f.Add(newMsg(1).set(2, zeroLengthTemplate(256, 200)).set(256, make([]byte, 300)).bytes())
	f.Add(newMsg(1).set(2, tmplRecord(256, spec{0, 210, 0})).set(256, []byte{1, 2}).bytes())
	// A template flood and a field-heavy template.
	var flood [][]byte
	for id := uint16(256); id < 300; id++ {
		flood = append(flood, simpleTemplate(id))
	}
	f.Add(newMsg(1).set(2, flood...).set(299, simpleData(1)).bytes())
	many := make([]spec, 500)
	for i := range many {
		many[i] = spec{0, 4, 1}
	}
	f.Add(newMsg(1).set(2, tmplRecord(256, many...)).set(256, make([]byte, 1500)).bytes())
	lim := sessionLimits{maxTemplates: 16, maxTemplateFields: 256, maxFields: 1000}
	f.Fuzz(func(t *testing.T, msg []byte) {
		s := newSession(netip.AddrPort{}, lim)
		// Twice: the second pass decodes data with templates from the first.
		for range 2 {
			fields := 0
			_, _ = s.message(msg, func(r *Record) {
				fields += len(r.Fields)
				_ = r.AppendJSON(nil)
				_, _ = r.FlowRecord()
			})
			if fields > len(msg) || fields > lim.maxFields {
				t.Fatalf("decoded %d fields from %d bytes (bound %d)", fields, len(msg), lim.maxFields)
			}
			n := 0
			for _, tm := range s.templates {
				n += len(tm.elems)
			}
			if len(s.templates) > lim.maxTemplates || n != s.templateFields || n > lim.maxTemplateFields {
				t.Fatalf("session holds %d templates of %d fields (accounted %d), bounds %d and %d",
					len(s.templates), n, s.templateFields, lim.maxTemplates, lim.maxTemplateFields)
			}
		}
	})
}
