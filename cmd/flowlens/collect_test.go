package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
)

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestCollectPrintsOneJSONObjectPerRecordAndStopsAtCount(t *testing.T) {
	addr := freePort(t)
	var stdout, stderr bytes.Buffer
	code := make(chan int, 1)
	go func() {
		code <- run(context.Background(), []string{"collect", "--listen", "tcp://" + addr, "--count", "2", "--timeout", "20s"}, &stdout, &stderr)
	}()
	// The exporter retries until the collector listens.
	e, err := ipfixexport.New(ipfixexport.Config{Address: addr, Transport: ipfixexport.TCP,
		FlushInterval: 20 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = e.Run(ctx) }()
	for i := range 3 {
		r := flow.Record{Conn: flow.Conn{
			Tuple: flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), uint16(1000+i), 80, flow.ProtoTCP),
			Fwd:   flow.Counters{Packets: uint64(i + 1), Bytes: 100},
		}}
		r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
		e.Export(&r)
	}
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit status %d, stderr: %s", c, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("collect did not exit after --count records")
	}
	sc := bufio.NewScanner(&stdout)
	lines := 0
	for sc.Scan() {
		lines++
		var obj map[string]any
		if err := json.Unmarshal(sc.Bytes(), &obj); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", lines, err, sc.Text())
		}
		if obj["sourceIPv4Address"] != "10.0.0.1" || obj["destinationTransportPort"] != float64(80) || obj["packetTotalCount"] != float64(lines) {
			t.Errorf("line %d = %s", lines, sc.Text())
		}
	}
	if lines != 2 {
		t.Errorf("%d lines printed, want --count 2", lines)
	}
}

func TestCLIArgumentErrors(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no command prints usage", nil, 2, "Usage: flowlens <command>"},
		{"help prints usage", []string{"help"}, 0, "collect"},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"collect help", []string{"collect", "-h"}, 0, "Usage: flowlens collect"},
		{"undefined flag", []string{"collect", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{"bad scheme", []string{"collect", "--listen", "sctp://127.0.0.1:1"}, 2, "scheme must be tcp, udp or tls"},
		{"address without scheme", []string{"collect", "--listen", "127.0.0.1:4739"}, 2, "want scheme://host:port"},
		{"tls without a certificate", []string{"collect", "--listen", "tls://127.0.0.1:0"}, 2, "needs --tls-cert and --tls-key"},
		{"certificate without tls", []string{"collect", "--tls-cert", "c.pem", "--listen", "tcp://127.0.0.1:0"}, 2, "need a tls:// --listen"},
		{"negative count", []string{"collect", "--count", "-1"}, 2, "--count -1"},
		{"stray argument", []string{"collect", "extra"}, 2, `unexpected argument "extra"`},
		{"missing certificate file", []string{"collect", "--listen", "tls://127.0.0.1:0", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"}, 1, "CertFile"},
		{"timeout before the count is an error", []string{"collect", "--listen", "udp://127.0.0.1:0", "--count", "5", "--timeout", "50ms"}, 1, "received 0 of 5 records"},
		{"timeout without a count is a normal end", []string{"collect", "--listen", "udp://127.0.0.1:0", "--timeout", "50ms"}, 0, "listening on udp://127.0.0.1:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr)
			if code != tc.wantCode || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr.String(), tc.wantCode, tc.wantErr)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

func TestCollectPrintsL7DetailsByNameWhenTheExporterSendsThem(t *testing.T) {
	l7 := flow.L7{
		AppProtocolName: "dns", DNSQueryName: "web.shop.svc.cluster.local", DNSQueryType: "A",
		DNSResponseCode: "NOERROR", DNSAnswers: "10.96.0.10", TLSServerName: "api.example.org",
		TLSVersion: "TLS 1.3", TLSJA3: "ja3", TLSJA3S: "ja3s", TLSJA4: "ja4",
	}
	details := map[string]string{
		"dnsQueryName": l7.DNSQueryName, "dnsQueryType": l7.DNSQueryType, "dnsResponseCode": l7.DNSResponseCode,
		"dnsAnswers": l7.DNSAnswers, "tlsServerName": l7.TLSServerName, "tlsVersion": l7.TLSVersion,
		"tlsJA3": l7.TLSJA3, "tlsJA3S": l7.TLSJA3S, "tlsJA4": l7.TLSJA4,
	}
	for _, tc := range []struct {
		name      string
		l7Details bool
	}{
		{"exporter with L7DetailElements: every detail under its name", true},
		{"default exporter: no detail keys", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freePort(t)
			var stdout, stderr bytes.Buffer
			code := make(chan int, 1)
			go func() {
				code <- run(context.Background(), []string{"collect", "--listen", "tcp://" + addr, "--count", "1", "--timeout", "20s"}, &stdout, &stderr)
			}()
			e, err := ipfixexport.New(ipfixexport.Config{Address: addr, Transport: ipfixexport.TCP, L7DetailElements: tc.l7Details,
				FlushInterval: 20 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = e.Run(ctx) }()
			r := flow.Record{Conn: flow.Conn{
				Tuple: flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.96.0.10"), 5353, 53, flow.ProtoUDP),
			}, L7: l7}
			r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
			e.Export(&r)
			select {
			case c := <-code:
				if c != 0 {
					t.Fatalf("exit status %d, stderr: %s", c, stderr.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatal("collect did not exit after --count records")
			}
			var obj map[string]any
			if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &obj); err != nil {
				t.Fatalf("output is not one JSON object: %v: %s", err, stdout.String())
			}
			if obj["appProtocolName"] != "dns" {
				t.Errorf("appProtocolName = %#v", obj["appProtocolName"])
			}
			for name, want := range details {
				got, ok := obj[name]
				switch {
				case ok != tc.l7Details:
					t.Errorf("%s present = %v, want %v", name, ok, tc.l7Details)
				case ok && got != want:
					t.Errorf("%s = %#v, want %q", name, got, want)
				}
			}
			for k := range obj {
				if strings.HasPrefix(k, "ie32473_") {
					t.Errorf("detail printed without its name: %s", k)
				}
			}
		})
	}
}
