package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

const eveTestdata = "../../testdata/eve/"

func TestEveCheck(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{
			name:       "counts per event type and rejected lines by reason",
			args:       []string{"eve", "check", eveTestdata + "public/nicoaller-suricata-log-analyzer/eve.json.gz"},
			wantStdout: []string{"2325 lines, 2324 parsed, 1 rejected", "  dns              488", "  rejected no_event_type    1"},
		},
		{
			name:       "truncated upstream line is counted, not fatal",
			args:       []string{"eve", "check", eveTestdata + "public/dcso-fever/jsonparse_eve_broken1.json"},
			wantStdout: []string{"3 lines, 2 parsed, 1 rejected", "rejected invalid_json     1"},
		},
		{
			name:       "stdin with -",
			args:       []string{"eve", "check", "-"},
			stdin:      "not json\n\n",
			wantStdout: []string{"-: 2 lines, 0 parsed, 2 rejected", "rejected empty", "rejected invalid_json"},
		},
		{
			name:       "unreadable file exits 1 after checking the others",
			args:       []string{"eve", "check", "/nonexistent/eve.json", eveTestdata + "public/dcso-fever/jsonparse_eve.json"},
			wantCode:   1,
			wantStdout: []string{"jsonparse_eve.json: 3 lines, 3 parsed, 0 rejected"},
			wantStderr: []string{"/nonexistent/eve.json"},
		},
		{
			name:     "no file is a usage error",
			args:     []string{"eve", "check"},
			wantCode: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runWithStdin(t, tt.args, tt.stdin, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr %s", code, tt.wantCode, stderr.String())
			}
			for _, w := range tt.wantStdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			for _, w := range tt.wantStderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
		})
	}
}

// runWithStdin runs the CLI; "eve check -" reads the given stdin.
func runWithStdin(t *testing.T, args []string, stdin string, stdout, stderr *bytes.Buffer) int {
	t.Helper()
	if len(args) > 2 && args[0] == "eve" && args[1] == "check" && stdin != "" {
		err := runEveCheck(context.Background(), args[2:], strings.NewReader(stdin), stdout, stderr)
		if err != nil {
			return 1
		}
		return 0
	}
	return run(context.Background(), args, stdout, stderr)
}

func TestEveCheckJSONPrintsOneRecordPerParsedLineKeyedByIENames(t *testing.T) {
	var stdout, stderr bytes.Buffer
	// Flags may follow the file.
	code := run(context.Background(), []string{"eve", "check", eveTestdata + "public/dcso-fever/alertify_input.json", "--json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d JSON lines, want 3 (one per parsed record):\n%s", len(lines), stdout.String())
	}
	if !strings.Contains(stderr.String(), "3 lines, 3 parsed") {
		t.Errorf("counts not on stderr with --json: %q", stderr.String())
	}
	var recs []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("invalid JSON line %s: %v", l, err)
		}
		recs = append(recs, m)
	}
	http, dns, tls := recs[0], recs[1], recs[2]
	var vals map[string]map[string]any
	if err := json.Unmarshal([]byte(http["httpVals"].(string)), &vals); err != nil {
		t.Fatalf("httpVals: %v", err)
	}
	// The line's URL ends in path parameters (";gzip;gzip"), which the
	// default privacy policy drops.
	want := map[string]any{"hostname": "evader.example.com", "url": "/compressed/eicar.txt/ce%3Agzip,gzip",
		"http_method": "GET", "protocol": "HTTP/1.1", "status": 200.0, "length": 106.0,
		"http_content_type": "application/octet-stream", "http_user_agent": ""}
	for k, v := range want {
		if vals["0"][k] != v {
			t.Errorf("httpVals[0][%s] = %v, want %v", k, vals["0"][k], v)
		}
	}
	checks := []struct {
		rec  map[string]any
		key  string
		want any
	}{
		{http, "appProtocolName", "http"},
		{http, "sourceIPv4Address", "1.1.1.1"},
		{http, "destinationIPv4Address", "8.8.8.8"},
		{http, "sourceTransportPort", 10305.0},
		{http, "destinationTransportPort", 80.0},
		{http, "protocolIdentifier", 6.0},
		{dns, "dnsQueryName", "static.programme-tv.net"},
		{dns, "dnsQueryType", "AAAA"},
		{dns, "dnsResponseCode", "NOERROR"},
		{dns, "dnsAnswers", "programme-tv.net.edgesuite.net,a1859.g.akamai.net"},
		{dns, "protocolIdentifier", 17.0},
		{tls, "sourceIPv6Address", "2a03:b0c0:2:d0::bd3:4001"},
		{tls, "destinationIPv6Address", "2606:2800:220:1:248:1893:25c8:1946"},
		{tls, "tlsServerName", "example.com"},
		{tls, "tlsVersion", "TLS 1.2"},
		{tls, "tlsJA3", "1fe4c7a3544eb27afec2adfb3a3dbf60"},
		{tls, "tlsJA3S", "5d79edf64e03689ff559a54e9d9487bc"},
		{tls, "tlsJA4", ""},
	}
	for _, c := range checks {
		if got := c.rec[c.key]; got != c.want {
			t.Errorf("%s = %v, want %v", c.key, got, c.want)
		}
	}
}
