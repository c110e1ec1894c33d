package eve

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

const testdata = "../../testdata/eve"

// readTestdata returns a testdata file's content, decompressing .gz files.
func readTestdata(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		tb.Fatalf("read testdata: %v", err)
	}
	if strings.HasSuffix(name, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			tb.Fatalf("gunzip %s: %v", name, err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			tb.Fatalf("gunzip %s: %v", name, err)
		}
	}
	return b
}

// lineOf returns line n (1-based) of a testdata file.
func lineOf(tb testing.TB, name string, n int) []byte {
	tb.Helper()
	lines := bytes.Split(readTestdata(tb, name), []byte{'\n'})
	if n < 1 || n > len(lines) {
		tb.Fatalf("%s has no line %d", name, n)
	}
	return lines[n-1]
}

// countLines counts newline-terminated lines plus a final unterminated one.
func countLines(b []byte) int {
	n := bytes.Count(b, []byte{'\n'})
	if len(b) > 0 && b[len(b)-1] != '\n' {
		n++
	}
	return n
}

func TestEveryLineOfRealFilesParsesOrIsRejectedWithAReason(t *testing.T) {
	tests := []struct {
		file       string
		lines      int
		rejected   map[Reason]int
		someTypes  map[string]int
		eventTypes int
	}{
		{
			file: "suricata-7.0.10/eve.json.gz", lines: 13191,
			// 21 anomaly + 19 alert records on non-IP packets have no src_ip.
			rejected:   map[Reason]int{ReasonNoTuple: 40},
			someTypes:  map[string]int{"http": 1052, "dns": 369, "tls": 97, "flow": 2176, "alert": 5574, "smb": 353, "mqtt": 122, "pgsql": 61},
			eventTypes: 28,
		},
		{
			file: "suricata-8.0.7/eve.json.gz", lines: 7726,
			rejected:   map[Reason]int{ReasonNoTuple: 72},
			someTypes:  map[string]int{"http": 714, "dns": 289, "tls": 67, "flow": 1521, "mdns": 20, "websocket": 27, "ldap": 12, "pop3": 10},
			eventTypes: 32,
		},
		{file: "suricata-7.0.10/eve-http.json.gz", lines: 1246, rejected: map[Reason]int{}, someTypes: map[string]int{"http": 1246}, eventTypes: 1},
		{file: "suricata-8.0.7/eve-http.json.gz", lines: 815, rejected: map[Reason]int{}, someTypes: map[string]int{"http": 815}, eventTypes: 1},
		{file: "suricata-7.0.10/eve-long-lines.json.gz", lines: 5, rejected: map[Reason]int{}, someTypes: map[string]int{"alert": 1, "mqtt": 4}, eventTypes: 2},
		{file: "suricata-8.0.7/eve-long-lines.json.gz", lines: 1, rejected: map[Reason]int{}, someTypes: map[string]int{"sip": 1}, eventTypes: 1},
		{
			file: "public/nicoaller-suricata-log-analyzer/eve.json.gz", lines: 2325,
			// The stats line with "F" instead of "event_type".
			rejected:   map[Reason]int{ReasonNoEventType: 1},
			someTypes:  map[string]int{"dns": 488, "smb": 294, "krb5": 70, "tls": 161, "flow": 826},
			eventTypes: 12,
		},
		{file: "public/dcso-fever/jsonparse_eve_broken1.json", lines: 3, rejected: map[Reason]int{ReasonInvalidJSON: 1}, someTypes: map[string]int{"dns": 1, "http": 1}, eventTypes: 2},
		{file: "public/dcso-fever/jsonparse_eve_nulls.json", lines: 1, rejected: map[Reason]int{ReasonNoTuple: 1}, someTypes: map[string]int{}, eventTypes: 0},
		{file: "public/dcso-fever/jsonparse_eve_empty.json", lines: 0, rejected: map[Reason]int{}, someTypes: map[string]int{}, eventTypes: 0},
		{file: "public/dcso-fever/jsonparse_eve.json", lines: 3, rejected: map[Reason]int{}, someTypes: map[string]int{"dns": 1, "fileinfo": 1, "http": 1}, eventTypes: 3},
		{file: "public/dcso-fever/alertify_input.json", lines: 3, rejected: map[Reason]int{}, someTypes: map[string]int{"http": 1, "dns": 1, "tls": 1}, eventTypes: 3},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data := readTestdata(t, tt.file)
			if got := countLines(data); got != tt.lines {
				t.Fatalf("file has %d lines, test expects %d", got, tt.lines)
			}
			var tally Tally
			if err := ReadAll(bytes.NewReader(data), DefaultMaxLineBytes, &tally, func(Event) {}); err != nil {
				t.Fatalf("ReadAll: %v", err)
			}
			parsed, rejected := tally.Totals()
			if parsed+rejected != tt.lines {
				t.Errorf("parsed %d + rejected %d = %d, want every one of %d lines accounted for", parsed, rejected, parsed+rejected, tt.lines)
			}
			gotRej := map[Reason]int{}
			for _, c := range tally.RejectedCounts() {
				gotRej[Reason(c.Key)] = c.N
			}
			if !reflect.DeepEqual(gotRej, tt.rejected) {
				t.Errorf("rejected = %v, want %v", gotRej, tt.rejected)
			}
			types := map[string]int{}
			for _, c := range tally.Types() {
				types[c.Key] = c.N
			}
			for typ, want := range tt.someTypes {
				if types[typ] != want {
					t.Errorf("%s records = %d, want %d", typ, types[typ], want)
				}
			}
			if len(types) != tt.eventTypes {
				t.Errorf("%d event types, want %d: %v", len(types), tt.eventTypes, types)
			}
		})
	}
}

func mustTuple(src, dst string, sp, dp uint16, proto uint8) flow.Tuple {
	return flow.NewTuple(netip.MustParseAddr(src), netip.MustParseAddr(dst), sp, dp, proto)
}

func mustTime(s string) time.Time {
	t, err := time.Parse(eveTimeLayout, s)
	if err != nil {
		panic(err)
	}
	return t
}

// Golden records: exact field values read from the files.
func TestGoldenRecordsFromEachSuricataVersion(t *testing.T) {
	v6client, v6server := "2a01:e35:2fb6:1160:f022:11:465e:d69b", "2001:41d0:a:f78a::1"
	tests := []struct {
		name string
		file string
		line int
		want Event
	}{
		{
			name: "7.0.10 HTTP/1.1 over IPv6 with query string",
			file: "suricata-7.0.10/eve-http.json.gz", line: 20,
			want: Event{
				Time: mustTime("2019-10-13T09:40:18.173235+0000"), FlowID: 349545050497041,
				Tuple: mustTuple(v6client, v6server, 42356, 80, flow.ProtoTCP),
				Type:  "http", AppProto: "http", TxID: 0, HasTxID: true,
				HTTP: &HTTP{Hostname: "home.regit.org", URL: "/?arg=dGhpc2lzYXRlc3QK", UserAgent: "curl/7.66.0",
					ContentType: "text/html", Method: "GET", Protocol: "HTTP/1.1", Status: 200, Length: 8202},
			},
		},
		{
			name: "8.0.7 logs the same HTTP/1.1 transaction identically but for flow_id",
			file: "suricata-8.0.7/eve-http.json.gz", line: 11,
			want: Event{
				Time: mustTime("2019-10-13T09:40:18.173235+0000"), FlowID: 349543340082951,
				Tuple: mustTuple(v6client, v6server, 42356, 80, flow.ProtoTCP),
				Type:  "http", AppProto: "http", TxID: 0, HasTxID: true,
				HTTP: &HTTP{Hostname: "home.regit.org", URL: "/?arg=dGhpc2lzYXRlc3QK", UserAgent: "curl/7.66.0",
					ContentType: "text/html", Method: "GET", Protocol: "HTTP/1.1", Status: 200, Length: 8202},
			},
		},
		{
			name: "8.0.7 malformed status line: no status, status_string ignored",
			file: "suricata-8.0.7/eve-http.json.gz", line: 462,
			want: Event{
				Time: mustTime("2016-01-02T19:08:01.386583+0000"), FlowID: 533974750022626,
				Tuple: mustTuple("1.1.1.1", "8.8.8.8", 21659, 80, flow.ProtoTCP),
				Type:  "http", AppProto: "http", HasTxID: true,
				HTTP: &HTTP{Hostname: "evader.example.com", URL: "/broken/eicar.txt/status%3AHTTP/1.1%28space%292%5C00000%28space%29ok;chunked",
					ContentType: "application/octet-stream", Method: "GET", Protocol: "HTTP/1.1", Length: 156},
			},
		},
		{
			name: "7.0.10 HTTP/2 request taken from pseudo-headers",
			file: "suricata-7.0.10/eve-http.json.gz", line: 4,
			want: Event{
				Time: mustTime("2022-12-27T21:26:18.214414+0000"), FlowID: 564141757594174,
				Tuple: mustTuple("10.200.30.140", "8.8.4.4", 49792, 80, flow.ProtoTCP),
				Type:  "http", AppProto: "http2", TxID: 2, HasTxID: true,
				HTTP: &HTTP{Hostname: "dns.google", URL: "/dns-query?dns=AAABAAABAAAAAAABA3d3dwdnc3RhdGljA2NvbQAAAQABAAApEAAAAAAAAFQADABQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
					UserAgent: "Chrome", ContentType: "application/dns-message", Method: "GET", Protocol: "HTTP/2",
					Status: 200, Length: 468, TxID: 2, Version: "2"},
			},
		},
		{
			name: "7.0.10 DNS v2 query",
			file: "suricata-7.0.10/eve.json.gz", line: 72,
			want: Event{
				Time: mustTime("2026-06-04T19:53:10.477571+0000"), FlowID: 1769677183497384,
				Tuple: mustTuple("192.0.2.10", "198.51.100.5", 55000, 53, flow.ProtoUDP),
				Type:  "dns", AppProto: "dns", TxID: 0, HasTxID: true,
				DNS: &DNS{Version: 2, ID: 43981, Queries: []DNSQuery{{Name: "test.example.com", Type: "A"}}},
			},
		},
		{
			name: "7.0.10 DNS v2 answer",
			file: "suricata-7.0.10/eve.json.gz", line: 73,
			want: Event{
				Time: mustTime("2026-06-04T19:53:10.477571+0000"), FlowID: 1769677183497384,
				Tuple: mustTuple("192.0.2.10", "198.51.100.5", 55000, 53, flow.ProtoUDP),
				Type:  "dns", AppProto: "dns",
				DNS: &DNS{Version: 2, Response: true, ID: 43981, RCode: "NOERROR",
					Queries: []DNSQuery{{Name: "test.example.com", Type: "A"}},
					Answers: []DNSAnswer{{Name: "test.example.com", Type: "A", Data: "203.0.113.42"}}},
			},
		},
		{
			name: "7.0.10 DNS v2 NXDOMAIN answer logged client to server",
			file: "suricata-7.0.10/eve.json.gz", line: 215,
			want: Event{
				Time: mustTime("2015-03-22T13:36:09.362580+0000"), FlowID: 331697549901576,
				Tuple: mustTuple("192.168.35.10", "10.55.99.1", 1030, 53, flow.ProtoUDP),
				Type:  "dns", AppProto: "dns",
				DNS: &DNS{Version: 2, Response: true, ID: 52300, RCode: "NXDOMAIN",
					Queries: []DNSQuery{{Name: "softupdates.info", Type: "A"}}},
			},
		},
		{
			name: "8.0.7 DNS v3 NXDOMAIN response logged server to client",
			file: "suricata-8.0.7/eve.json.gz", line: 132,
			want: Event{
				Time: mustTime("2015-03-22T13:36:09.362580+0000"), FlowID: 331697009604468,
				Tuple: mustTuple("10.55.99.1", "192.168.35.10", 53, 1030, flow.ProtoUDP),
				Type:  "dns", AppProto: "dns", TxID: 3, HasTxID: true,
				DNS: &DNS{Version: 3, Response: true, ID: 52300, RCode: "NXDOMAIN",
					Queries: []DNSQuery{{Name: "softupdates.info", Type: "A"}}},
			},
		},
		{
			name: "8.0.7 DNS v3 request",
			file: "suricata-8.0.7/eve.json.gz", line: 40,
			want: Event{
				Time: mustTime("2026-06-04T19:53:10.477571+0000"), FlowID: 1769677015902798,
				Tuple: mustTuple("192.0.2.10", "198.51.100.5", 55000, 53, flow.ProtoUDP),
				Type:  "dns", AppProto: "dns", TxID: 0, HasTxID: true,
				DNS: &DNS{Version: 3, ID: 43981, RCode: "NOERROR", Queries: []DNSQuery{{Name: "test.example.com", Type: "A"}}},
			},
		},
		{
			name: "DNS v1 answer (Suricata 4, one line per answer)",
			file: "public/dcso-fever/jsonparse_eve.json", line: 1,
			want: Event{
				Time: mustTime("2017-03-06T06:54:06.047429+0000"), FlowID: 4711,
				Tuple: mustTuple("10.0.0.10", "10.0.0.11", 53, 51323, flow.ProtoUDP),
				Type:  "dns", AppProto: "dns",
				DNS: &DNS{Response: true, ID: 1, RCode: "NOERROR",
					Queries: []DNSQuery{{Name: "test.test.local", Type: "A"}},
					Answers: []DNSAnswer{{Name: "test.test.local", Type: "A", Data: "10.0.0.12"}}},
			},
		},
		{
			name: "7.0.10 TLS 1.3 over IPv6 with JA3, JA3S, JA4",
			file: "suricata-7.0.10/eve.json.gz", line: 1089,
			want: Event{
				Time: mustTime("2023-08-23T21:19:39.521127+0000"), FlowID: 1008546344924248,
				Tuple: mustTuple("2600:1f13:f8:d400:3a6:303c:e011:18eb", "2001:4860:4860::8888", 33892, 443, flow.ProtoTCP),
				Type:  "tls", AppProto: "tls",
				TLS: &TLS{SNI: "dns.google", Version: "TLS 1.3", JA3: "7a15285d4efc355608b304698cd7f9ab",
					JA3S: "eb1d94daa7e0344597e756a1fb6e7054", JA4: "t13d1911h2_9dc949149365_e7c285222651"},
			},
		},
		{
			name: "8.0.7 TLS 1.2 with JA4",
			file: "suricata-8.0.7/eve.json.gz", line: 57,
			want: Event{
				Time: mustTime("2023-02-19T23:57:56.647372+0000"), FlowID: 1369239505843035,
				Tuple: mustTuple("192.168.100.67", "34.246.146.48", 57508, 443, flow.ProtoTCP),
				Type:  "tls", AppProto: "tls",
				TLS: &TLS{SNI: "redirect.viglink.com", Version: "TLS 1.2", JA3: "b32309a26951912be7dba376398abc3b",
					JA3S: "303951d4c50efb2e991652225a6f02b1", JA4: "t13d1515h2_8daaf6152771_de4a06bb82e3"},
			},
		},
		{
			name: "ICMPv6 anomaly has no ports and no app proto",
			file: "suricata-7.0.10/eve.json.gz", line: 93,
			want: Event{
				Time: mustTime("2023-02-19T23:57:59.906854+0000"), FlowID: 2206059101849606,
				Tuple: mustTuple("fe80::b9a3:aa8f:3e8e:fe86", "ff02::16", 0, 0, flow.ProtoICMPv6),
				Type:  "anomaly",
			},
		},
		{
			name: "new flow record without app_proto names none",
			file: "suricata-8.0.7/eve.json.gz", line: 1,
			want: Event{
				Time: mustTime("2011-01-25T18:52:22.484409+0000"), FlowID: 1799048939834338,
				Tuple: mustTuple("192.168.3.131", "72.14.213.138", 57011, 80, flow.ProtoTCP),
				Type:  "flow",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLine(lineOf(t, tt.file, tt.line))
			if err != nil {
				t.Fatalf("ParseLine: %v", err)
			}
			if !got.Time.Equal(tt.want.Time) {
				t.Errorf("Time = %v, want %v", got.Time, tt.want.Time)
			}
			got.Time = tt.want.Time
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseLine =\n%+v\nwant\n%+v", describe(got), describe(tt.want))
			}
		})
	}
}

func describe(e Event) string {
	s := e.Tuple.String() + " " + e.Type + "/" + e.AppProto
	if e.HTTP != nil {
		s += " " + sprint(*e.HTTP)
	}
	if e.DNS != nil {
		s += " " + sprint(*e.DNS)
	}
	if e.TLS != nil {
		s += " " + sprint(*e.TLS)
	}
	return s + " tx=" + sprint(e.TxID) + "/" + sprint(e.HasTxID) + " flow=" + sprint(e.FlowID)
}

func sprint(v any) string { return fmt.Sprintf("%+v", v) }

func TestParseLineEdgeCases(t *testing.T) {
	const base = `"timestamp":"2024-01-02T03:04:05.000006+0100","flow_id":7,"src_ip":"10.0.0.1","src_port":1234,"dest_ip":"10.0.0.2","dest_port":80,"proto":"TCP"`
	tests := []struct {
		name       string
		line       string
		wantReason Reason
		check      func(t *testing.T, ev Event)
	}{
		{name: "empty line is rejected as empty", line: "", wantReason: ReasonEmpty},
		{name: "whitespace-only line is rejected as empty", line: " \t\r", wantReason: ReasonEmpty},
		{name: "truncated record is invalid JSON", line: `{"timestamp":"2017-03-06T06:54:10`, wantReason: ReasonInvalidJSON},
		{name: "two records on one line are invalid JSON", line: `{` + base + `,"event_type":"http"}{` + base + `,"event_type":"http"}`, wantReason: ReasonInvalidJSON},
		{name: "a JSON array is not a record", line: `[1,2]`, wantReason: ReasonInvalidJSON},
		{name: "key F instead of event_type", line: `{` + base + `,"F":"stats"}`, wantReason: ReasonNoEventType},
		{name: "null event_type", line: `{` + base + `,"event_type":null}`, wantReason: ReasonNoEventType},
		{name: "unknown event type", line: `{` + base + `,"event_type":"gopher"}`, wantReason: ReasonUnknownEventType},
		{name: "stats has no 5-tuple", line: `{"timestamp":"2024-01-02T03:04:05.000006+0100","event_type":"stats","stats":{"uptime":1}}`, wantReason: ReasonNoTuple},
		{name: "null addresses", line: `{"timestamp":"2024-01-02T03:04:05.000006+0100","event_type":"http","src_ip":null,"dest_ip":null,"proto":"TCP"}`, wantReason: ReasonNoTuple},
		{name: "TCP without ports", line: `{"timestamp":"2024-01-02T03:04:05.000006+0100","event_type":"flow","src_ip":"10.0.0.1","dest_ip":"10.0.0.2","proto":"TCP"}`, wantReason: ReasonNoTuple},
		{name: "port out of range", line: `{"timestamp":"2024-01-02T03:04:05.000006+0100","event_type":"flow","src_ip":"10.0.0.1","src_port":70000,"dest_ip":"10.0.0.2","dest_port":1,"proto":"TCP"}`, wantReason: ReasonNoTuple},
		{name: "garbage address", line: `{"timestamp":"2024-01-02T03:04:05.000006+0100","event_type":"flow","src_ip":"10.0.0.300","src_port":1,"dest_ip":"10.0.0.2","dest_port":1,"proto":"TCP"}`, wantReason: ReasonNoTuple},
		{name: "bad timestamp", line: `{"timestamp":"yesterday","event_type":"flow","src_ip":"10.0.0.1","src_port":1,"dest_ip":"10.0.0.2","dest_port":1,"proto":"TCP"}`, wantReason: ReasonBadTimestamp},
		{
			name: "numeric proto and string ports are accepted",
			line: `{"timestamp":"2024-01-02T03:04:05.000006+0100","event_type":"flow","src_ip":"10.0.0.1","src_port":"5","dest_ip":"10.0.0.2","dest_port":"6","proto":"17"}`,
			check: func(t *testing.T, ev Event) {
				if want := mustTuple("10.0.0.1", "10.0.0.2", 5, 6, flow.ProtoUDP); ev.Tuple != want {
					t.Errorf("tuple %v, want %v", ev.Tuple, want)
				}
			},
		},
		{
			name: "integer vlan and a wrongly typed field do not cost the record",
			line: `{` + base + `,"event_type":"http","vlan":61,"tx_id":3,"http":{"hostname":{"x":1},"url":"/a","status":"404"}}`,
			check: func(t *testing.T, ev Event) {
				if ev.HTTP == nil || ev.HTTP.URL != "/a" || ev.HTTP.Status != 404 || ev.HTTP.Hostname != "" || ev.TxID != 3 {
					t.Errorf("HTTP = %+v tx %d", ev.HTTP, ev.TxID)
				}
			},
		},
		{
			name: "timestamp offset is honoured",
			line: `{` + base + `,"event_type":"flow"}`,
			check: func(t *testing.T, ev Event) {
				if want := time.Date(2024, 1, 2, 2, 4, 5, 6000, time.UTC); !ev.Time.Equal(want) {
					t.Errorf("time %v, want %v", ev.Time.UTC(), want)
				}
			},
		},
		{
			name: "fully expanded IPv6 equals its compressed form",
			line: `{"timestamp":"2024-01-02T03:04:05Z","event_type":"ssh","src_ip":"2001:0db8:0000:0000:0000:0000:0000:0001","src_port":1,"dest_ip":"0000:0000:0000:0000:0000:ffff:0a00:0001","dest_port":22,"proto":"TCP"}`,
			check: func(t *testing.T, ev Event) {
				if ev.Tuple.Src() != netip.MustParseAddr("2001:db8::1") || ev.AppProto != "ssh" {
					t.Errorf("src %v app %q", ev.Tuple.Src(), ev.AppProto)
				}
			},
		},
		{
			name: "flow record with failed detection has no app proto",
			line: `{` + base + `,"event_type":"flow","app_proto":"failed"}`,
			check: func(t *testing.T, ev Event) {
				if ev.AppProto != "" {
					t.Errorf("AppProto %q, want none", ev.AppProto)
				}
			},
		},
		{
			name: "flow record app_proto is taken",
			line: `{` + base + `,"event_type":"flow","app_proto":"pgsql"}`,
			check: func(t *testing.T, ev Event) {
				if ev.AppProto != "pgsql" {
					t.Errorf("AppProto %q, want pgsql", ev.AppProto)
				}
			},
		},
		{
			name: "alert app_proto is not taken",
			line: `{` + base + `,"event_type":"alert","app_proto":"http","http":{"url":"/x"}}`,
			check: func(t *testing.T, ev Event) {
				if ev.AppProto != "" || ev.HTTP != nil {
					t.Errorf("alert gave AppProto %q HTTP %v", ev.AppProto, ev.HTTP)
				}
			},
		},
		{
			name: "ftp_data uses Suricata's app_proto spelling",
			line: `{` + base + `,"event_type":"ftp_data"}`,
			check: func(t *testing.T, ev Event) {
				if ev.AppProto != "ftp-data" {
					t.Errorf("AppProto %q", ev.AppProto)
				}
			},
		},
		{
			name: "DNS v2 grouped answers without answers[]",
			line: `{` + base + `,"event_type":"dns","dns":{"version":2,"type":"answer","rrname":"a.example","rrtype":"A","rcode":"NOERROR","grouped":{"CNAME":["b.example"],"A":["192.0.2.1","192.0.2.2"],"SOA":[{"mname":"x"}]}}}`,
			check: func(t *testing.T, ev Event) {
				want := []DNSAnswer{{"a.example", "A", "192.0.2.1"}, {"a.example", "A", "192.0.2.2"}, {"a.example", "CNAME", "b.example"}}
				if !reflect.DeepEqual(ev.DNS.Answers, want) {
					t.Errorf("answers %v, want %v", ev.DNS.Answers, want)
				}
			},
		},
		{
			name: "escaped non-printable bytes survive",
			line: `{` + base + `,"event_type":"http","http":{"url":"/\u0000a\\xff"}}`,
			check: func(t *testing.T, ev Event) {
				if ev.HTTP.URL != "/\x00a\\xff" {
					t.Errorf("url %q", ev.HTTP.URL)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := ParseLine([]byte(tt.line))
			if got := ReasonOf(err); got != tt.wantReason {
				t.Fatalf("reason %q (err %v), want %q", got, err, tt.wantReason)
			}
			if tt.check != nil {
				tt.check(t, ev)
			}
		})
	}
}

func TestLongLinesBeyond64KiBAreParsed(t *testing.T) {
	data := readTestdata(t, "suricata-7.0.10/eve-long-lines.json.gz")
	longest := 0
	for _, l := range bytes.Split(bytes.TrimSuffix(data, []byte{'\n'}), []byte{'\n'}) {
		if len(l) <= 64<<10 {
			t.Fatalf("fixture line of %d bytes is not longer than 64 KiB", len(l))
		}
		longest = max(longest, len(l))
	}
	var tally Tally
	n := 0
	if err := ReadAll(bytes.NewReader(data), DefaultMaxLineBytes, &tally, func(Event) { n++ }); err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Errorf("parsed %d long records, want 5", n)
	}
	if longest < 2<<20 {
		t.Errorf("longest line %d bytes, want the 2.4 MB one", longest)
	}
	// With a bound below the longest line, that line is rejected and the
	// others still parse.
	tally = Tally{}
	n = 0
	if err := ReadAll(bytes.NewReader(data), 1<<20, &tally, func(Event) { n++ }); err != nil {
		t.Fatal(err)
	}
	if _, rej := tally.Totals(); rej == 0 || n+rej != 5 {
		t.Errorf("with a 1 MiB bound: parsed %d rejected %d, want some oversize and 5 in all", n, rej)
	}
	for _, c := range tally.RejectedCounts() {
		if c.Key != string(ReasonOversize) {
			t.Errorf("rejected as %s, want oversize", c.Key)
		}
	}
}
