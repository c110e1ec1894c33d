package ipfixcollect

import (
	"net/netip"
	"testing"
)

// BenchmarkDecodeMessage decodes a full 64 KiB message of the most
// field-dense kind the decoder accepts (1-byte fields: one field per byte,
// since zero-length fields are rejected) next to the baseline of the same
// size made of ordinary records, so the cost of a hostile message is seen
// relative to a normal one.
func BenchmarkDecodeMessage(b *testing.B) {
	ones := make([]spec, 1000)
	for i := range ones {
		ones[i] = spec{0, 4, 1}
	}
	dense := newMsg(1).set(2, tmplRecord(256, ones...))
	dense.set(256, make([]byte, 65535-len(dense.b)-4))
	var recs [][]byte
	for i := range (65535 - 16 - 4 - 4 - len(simpleTemplate(256))) / 12 {
		recs = append(recs, simpleData(uint32(i)))
	}
	normal := newMsg(1).set(2, simpleTemplate(256)).set(256, recs...)
	for _, bc := range []struct {
		name string
		msg  []byte
	}{{"dense-1-byte-fields", dense.bytes()}, {"baseline-simple-records", normal.bytes()}} {
		b.Run(bc.name, func(b *testing.B) {
			s := newSession(netip.AddrPort{}, sessionLimits{maxTemplates: 10, maxTemplateFields: 1 << 20, maxFields: DefaultMaxFieldsPerMessage})
			fields := 0
			b.SetBytes(int64(len(bc.msg)))
			for b.Loop() {
				if _, err := s.message(bc.msg, func(r *Record) { fields += len(r.Fields) }); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(fields)/float64(b.N), "fields/msg")
		})
	}
}
