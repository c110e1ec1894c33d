package ipfixcollect

import (
	"testing"
	"unicode/utf8"

	"github.com/flowlens/flowlens/pkg/ipfixie"
)

// A string IE with bytes that are not UTF-8 decodes to valid UTF-8 (the
// bad bytes replaced), so no consumer downstream sees invalid text; a
// valid one is kept byte for byte.
func TestStringValuesAreValidUTF8(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"web\xff\xfe", "web\uFFFD"},
		{"caf\xc3", "caf\uFFFD"},
		{"ünïcode ok", "ünïcode ok"},
		{"", ""},
	} {
		v := decodeValue(ipfixie.String, []byte(tc.in))
		if v.Str != tc.want || !utf8.ValidString(v.Str) {
			t.Errorf("decode %q = %q, want %q", tc.in, v.Str, tc.want)
		}
	}
}
