package l7

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/eve"
)

// exported parses one EVE line and returns the one httpVals entry the
// policy lets leave the node, decoded.
func exported(t *testing.T, line string, p Privacy) map[string]any {
	t.Helper()
	ev, err := eve.ParseLine([]byte(line))
	if err != nil {
		t.Fatalf("ParseLine: %v", err)
	}
	vals := L7Of(ev, p).HTTPVals
	var m map[string]map[string]any
	if err := json.Unmarshal([]byte(vals), &m); err != nil {
		t.Fatalf("httpVals %q: %v", vals, err)
	}
	if len(m) != 1 {
		t.Fatalf("httpVals %s: want one transaction", vals)
	}
	for _, v := range m {
		return v
	}
	return nil
}

func httpLine(hostname, url string) string {
	b, _ := json.Marshal(map[string]any{
		"timestamp": "2024-05-01T10:00:00.000001+0000", "flow_id": 1, "event_type": "http",
		"src_ip": "10.1.0.1", "src_port": 40000, "dest_ip": "10.1.0.2", "dest_port": 80, "proto": "TCP", "tx_id": 0,
		"http": map[string]any{"hostname": hostname, "url": url, "http_method": "GET", "protocol": "HTTP/1.1", "status": 200},
	})
	return string(b)
}

func TestUserinfoAndPathParametersDoNotLeaveTheNodeWithTheDefaultPolicy(t *testing.T) {
	tests := []struct {
		name, hostname, url   string
		def, keepAll, dropAll string // url exported by Privacy{}, {KeepQuery, KeepPathParams}, {DropURL}
	}{
		{"absolute-form with user and password", "h", "http://alice:s3cret@h.example:8080/a/b?q=1",
			"http://h.example:8080/a/b", "http://h.example:8080/a/b?q=1", ""},
		{"absolute-form with user only", "h", "https://alice@h.example/", "https://h.example/", "https://h.example/", ""},
		{"the last @ ends the userinfo", "h", "http://a@b:c@h.example/x", "http://h.example/x", "http://h.example/x", ""},
		{"@ in the path is not userinfo", "h", "http://h.example/u/@me", "http://h.example/u/@me", "http://h.example/u/@me", ""},
		{"@ in the query is not userinfo", "h", "/p?to=a@b", "/p", "/p?to=a@b", ""},
		{"network-path reference", "h", "//alice:pw@h.example/p", "//h.example/p", "//h.example/p", ""},
		{"authority-form (CONNECT)", "h", "alice:pw@h.example:443", "h.example:443", "h.example:443", ""},
		{"jsessionid path parameter", "h", "/shop/cart;jsessionid=0123ABCD?item=1", "/shop/cart", "/shop/cart;jsessionid=0123ABCD?item=1", ""},
		{"parameters on several segments", "h", "/a;x=1/b;y=2/c", "/a/b/c", "/a;x=1/b;y=2/c", ""},
		{"parameters and userinfo in an absolute URL", "h", "http://u:p@h.example/a;sid=9/b?x#f", "http://h.example/a/b", "http://h.example/a;sid=9/b?x#f", ""},
		{"a ; in the query is the query's", "h", "/a?b=1;c=2", "/a", "/a?b=1;c=2", ""},
		{"userinfo in the hostname", "alice:pw@h.example", "/", "/", "/", ""},
		{"plain path is unchanged", "h", "/api/items", "/api/items", "/api/items", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := httpLine(tt.hostname, tt.url)
			for _, pc := range []struct {
				name string
				p    Privacy
				want string
			}{
				{"default", Privacy{}, tt.def},
				{"keep query and path parameters", Privacy{KeepQuery: true, KeepPathParams: true}, tt.keepAll},
				{"drop URL", Privacy{DropURL: true}, tt.dropAll},
			} {
				e := exported(t, line, pc.p)
				if e["url"] != pc.want {
					t.Errorf("%s: url %q, want %q", pc.name, e["url"], pc.want)
				}
				host, _ := e["hostname"].(string)
				for _, secret := range []string{"alice", "s3cret", "pw"} {
					if strings.Contains(host, secret) || strings.Contains(e["url"].(string), secret) {
						t.Errorf("%s: %q leaves the node in %v", pc.name, secret, e)
					}
				}
			}
		})
	}
}

func TestPathParametersAreKeptOnlyWhenThePolicySaysSo(t *testing.T) {
	line := httpLine("h", "/a;v=1?q")
	for _, tt := range []struct {
		p    Privacy
		want string
	}{
		{Privacy{}, "/a"},
		{Privacy{KeepQuery: true}, "/a?q"},
		{Privacy{KeepPathParams: true}, "/a;v=1"},
		{Privacy{KeepQuery: true, KeepPathParams: true}, "/a;v=1?q"},
	} {
		if got := exported(t, line, tt.p)["url"]; got != tt.want {
			t.Errorf("%+v: url %q, want %q", tt.p, got, tt.want)
		}
	}
	// The stricter of two policies drops what either drops.
	if s := (Privacy{KeepPathParams: true}).stricter(Privacy{}); s.KeepPathParams {
		t.Error("stricter policy keeps path parameters one policy drops")
	}
}

// Headers never leave the node, whatever the policy: neither HTTP/1
// request and response headers (Suricata logs them with dump-all-headers)
// nor HTTP/2's, of which only the pseudo-headers and a few named ones fill
// the exported fields.
func TestHeadersNeverLeaveTheNode(t *testing.T) {
	const secrets = `[{"name":"Authorization","value":"Bearer TOKEN-1"},{"name":"Cookie","value":"sid=TOKEN-2"},` +
		`{"name":"X-Api-Key","value":"TOKEN-3"},{"name":":path","value":"/h2path"},{"name":":authority","value":"h2.example"}]`
	const respSecrets = `[{"name":"Set-Cookie","value":"sid=TOKEN-4"},{"name":"WWW-Authenticate","value":"TOKEN-5"},{"name":":status","value":"200"}]`
	for _, version := range []string{"", "2"} {
		line := `{"timestamp":"2024-05-01T10:00:00.000001+0000","flow_id":1,"event_type":"http","src_ip":"10.1.0.1","src_port":40000,` +
			`"dest_ip":"10.1.0.2","dest_port":80,"proto":"TCP","tx_id":0,"http":{"version":"` + version + `","http_method":"GET",` +
			`"request_headers":` + secrets + `,"response_headers":` + respSecrets + `}}`
		for _, p := range []Privacy{{}, {KeepQuery: true, KeepPathParams: true}} {
			ev, err := eve.ParseLine([]byte(line))
			if err != nil {
				t.Fatal(err)
			}
			vals := L7Of(ev, p).HTTPVals
			if vals == "" {
				t.Fatalf("version %q: no httpVals", version)
			}
			for _, s := range []string{"TOKEN", "Authorization", "Cookie", "Api-Key", "Set-Cookie"} {
				if strings.Contains(vals, s) {
					t.Errorf("version %q, policy %+v: %q leaves the node: %s", version, p, s, vals)
				}
			}
			if version == "2" && !strings.Contains(vals, `"url":"/h2path"`) {
				t.Errorf("HTTP/2 :path not used as the URL: %s", vals)
			}
		}
	}
}
