package eve

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// stdDecode is the reference: encoding/json into the same struct, with
// wrongly typed fields tolerated as ParseLine tolerates them.
func stdDecode(line []byte, raw *rawRecord) error {
	line = bytes.Trim(line, " \t\r\n")
	if len(line) == 0 || line[0] != '{' {
		return errSyntax
	}
	err := json.Unmarshal(line, raw)
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return nil
	}
	return err
}

func TestScannerDecodesEveryTestdataLineLikeEncodingJSON(t *testing.T) {
	for _, name := range []string{
		"suricata-7.0.10/eve.json.gz", "suricata-8.0.7/eve.json.gz",
		"suricata-7.0.10/eve-http.json.gz", "suricata-8.0.7/eve-http.json.gz",
		"suricata-7.0.10/eve-long-lines.json.gz", "suricata-8.0.7/eve-long-lines.json.gz",
		"public/nicoaller-suricata-log-analyzer/eve.json.gz",
		"public/dcso-fever/jsonparse_eve.json", "public/dcso-fever/jsonparse_eve_broken1.json",
		"public/dcso-fever/jsonparse_eve_nulls.json", "public/dcso-fever/alertify_input.json",
	} {
		t.Run(name, func(t *testing.T) {
			lines := bytes.Split(readTestdata(t, name), []byte{'\n'})
			for i, l := range lines {
				if len(bytes.TrimSpace(l)) == 0 {
					continue
				}
				if msg := compareDecoders(l); msg != "" {
					t.Fatalf("line %d: %s", i+1, msg)
				}
			}
		})
	}
}

func compareDecoders(line []byte) string {
	var got, want rawRecord
	gotErr := decodeRecord(bytes.Trim(line, " \t\r\n"), &got)
	wantErr := stdDecode(line, &want)
	if (gotErr == nil) != (wantErr == nil) {
		return "validity differs: scanner " + errString(gotErr) + ", encoding/json " + errString(wantErr)
	}
	if gotErr != nil {
		return ""
	}
	// Spans are positions in the line; compare their bytes.
	if !reflect.DeepEqual(normalise(got), normalise(want)) {
		return "decoded records differ"
	}
	return ""
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// normalise makes spans comparable by content and treats a pointer to a
// zero struct as nil: for "http":"str" encoding/json allocates the struct
// before it sees the type mismatch, the scanner leaves the pointer nil.
func normalise(r rawRecord) rawRecord {
	if r.HTTP != nil && reflect.ValueOf(*r.HTTP).IsZero() {
		r.HTTP = nil
	}
	if r.DNS != nil && reflect.ValueOf(*r.DNS).IsZero() {
		r.DNS = nil
	}
	if r.TLS != nil && *r.TLS == (rawTLS{}) {
		r.TLS = nil
	}
	if r.HTTP != nil {
		h := *r.HTTP
		h.RequestHeaders = append(span{}, h.RequestHeaders...)
		h.ResponseHeaders = append(span{}, h.ResponseHeaders...)
		r.HTTP = &h
	}
	if r.DNS != nil && r.DNS.Grouped != nil {
		d := *r.DNS
		g := map[string]span{}
		for k, v := range d.Grouped {
			g[k] = append(span{}, v...)
		}
		d.Grouped = g
		r.DNS = &d
	}
	return r
}

func TestScannerEdgeCases(t *testing.T) {
	tests := []struct {
		name string
		line string
	}{
		{"escapes in keys and values", `{"event\u005ftype":"h\u0074tp","http":{"url":"\/a\"b\\c\n\u00e9\ud83d\ude42"}}`},
		{"lone surrogate becomes U+FFFD", `{"http":{"url":"\ud800x\udc00"}}`},
		{"invalid UTF-8 becomes U+FFFD", "{\"http\":{\"url\":\"a\xff\xfeb\"}}"},
		{"duplicate keys: last wins, objects merge", `{"http":{"url":"/a"},"http":{"hostname":"h"},"src_port":1,"src_port":"x"}`},
		{"null clears pointers and slices", `{"http":{"url":"/a"},"http":null,"dns":{"queries":[{"rrname":"a"}],"answers":null}}`},
		{"wrong types leave fields", `{"timestamp":5,"src_ip":["x"],"http":"str","dns":{"queries":[1,{"rrname":"b"},null],"grouped":[]}}`},
		{"numbers of every form", `{"flow_id":-0.5e+10,"src_port":1E2,"dest_port":0,"tx_id":18446744073709551615}`},
		{"deep nesting in skipped values", `{"x":[[[[{"a":[{"b":{}}]}]]]],"y":true,"z":false}`},
		{"invalid: leading zero", `{"a":01}`},
		{"invalid: bad escape", `{"a":"\x"}`},
		{"invalid: control char in string", "{\"a\":\"\t\"}"},
		{"invalid: trailing comma", `{"a":1,}`},
		{"invalid: missing colon", `{"a" 1}`},
		{"invalid: unterminated", `{"a":"b`},
		{"invalid: bare word", `{"a":nul}`},
		{"invalid: trailing record", `{"a":1}{"a":2}`},
		{"invalid: short unicode escape", `{"a":"\u12"}`},
		{"whitespace everywhere", " {\r\n \"http\" :\t{ \"url\" : \"/\" } , \"proto\":\"TCP\" } \n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if msg := compareDecoders([]byte(tt.line)); msg != "" {
				t.Error(msg)
			}
		})
	}
}

func FuzzScannerMatchesEncodingJSON(f *testing.F) {
	for _, l := range []string{
		`{"event_type":"http","http":{"url":"/a","status":200,"request_headers":[{"name":":path","value":"/"}]}}`,
		`{"dns":{"queries":[{"rrname":"a","rrtype":"A"}],"grouped":{"A":["1.2.3.4"]}},"tls":{"ja3":{"hash":"x"}}}`,
		`{"a":[1,2.5e3,-0,true,false,null,"\u00e9"],"b":{}}`,
	} {
		f.Add([]byte(l))
	}
	for _, l := range bytes.Split(readTestdata(f, "public/dcso-fever/jsonparse_eve.json"), []byte{'\n'}) {
		f.Add(l)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		// Keys in other cases match in encoding/json only; by design.
		if bytes.ContainsFunc(line, func(r rune) bool { return 'A' <= r && r <= 'Z' || r == 'ſ' || r == 'K' }) {
			return
		}
		if msg := compareDecoders(line); msg != "" {
			t.Fatalf("%s for %q", msg, line)
		}
	})
}
