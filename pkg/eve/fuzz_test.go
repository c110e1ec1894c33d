package eve

import (
	"bytes"
	"slices"
	"testing"
)

func FuzzParseLine(f *testing.F) {
	// Seeds: a spread of real lines from every file, plus the edge cases.
	for _, name := range []string{
		"suricata-7.0.10/eve.json.gz", "suricata-8.0.7/eve.json.gz",
		"suricata-7.0.10/eve-http.json.gz", "suricata-8.0.7/eve-http.json.gz",
		"public/nicoaller-suricata-log-analyzer/eve.json.gz",
		"public/dcso-fever/jsonparse_eve.json", "public/dcso-fever/jsonparse_eve_broken1.json",
		"public/dcso-fever/jsonparse_eve_nulls.json", "public/dcso-fever/alertify_input.json",
	} {
		lines := bytes.Split(readTestdata(f, name), []byte{'\n'})
		step := max(1, len(lines)/40)
		for i := 0; i < len(lines); i += step {
			f.Add(lines[i])
		}
		f.Add(lines[len(lines)-1])
	}
	f.Add([]byte(`{"event_type":"http","timestamp":"2024-01-02T03:04:05Z","src_ip":"::1","dest_ip":"::1","src_port":1,"dest_port":2,"proto":"TCP","http":{"version":"2","request_headers":[{"table_size_update":1},{"name":":path","value":"/"}]}}`))
	f.Add([]byte(`{"event_type":"dns","timestamp":"2024-01-02T03:04:05Z","src_ip":"1.2.3.4","dest_ip":"1.2.3.4","src_port":1,"dest_port":2,"proto":"UDP","dns":{"grouped":{"A":[1,null,"x"]},"queries":null}}`))
	f.Add([]byte(`{}{}`))
	valid := AllReasons()
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := ParseLine(line)
		if err != nil {
			if r := ReasonOf(err); !slices.Contains(valid, r) {
				t.Fatalf("rejected with unknown reason %q: %v", r, err)
			}
			return
		}
		if !KnownEventType(ev.Type) {
			t.Fatalf("accepted unknown event type %q", ev.Type)
		}
		if ev.HTTP != nil && (ev.HTTP.Status < 0 || ev.HTTP.Status > 999 || ev.HTTP.Length < 0) {
			t.Fatalf("out-of-range HTTP fields %+v", ev.HTTP)
		}
	})
}
