package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/netnstest"
)

func TestAgentConfigIsAcceptedByTheAgentLoader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	// The loader checks that the namespace exists; any netns file will do.
	const netnsPath = "/proc/self/ns/net"
	inv := filepath.Join(t.TempDir(), "inventory.yaml")
	if err := os.WriteFile(inv, []byte("entries: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, eveSock := range []string{"", "/run/demo/eve.sock"} {
		o := agentOptions{netnsPath: netnsPath, collectorPort: 4739, inventory: inv, eveSocket: eveSock}
		if err := os.WriteFile(path, []byte(agentConfig(o)), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := agentconfig.Load(path)
		if err != nil {
			t.Fatalf("agent rejects the demo's config (eve socket %q): %v", eveSock, err)
		}
		if cfg.NodeName != nodeName || cfg.Conntrack.NetNS != netnsPath ||
			cfg.Export.Collector != "127.0.0.1:4739" || cfg.Export.Transport != "tcp" ||
			cfg.Inventory.File != inv || !cfg.Export.L7DetailElements {
			t.Fatalf("config read back as %+v", cfg)
		}
		wantSource := ""
		if eveSock != "" {
			wantSource = "unix_stream"
		}
		if cfg.L7.EVE.Source != wantSource || (eveSock != "" && cfg.L7.EVE.Path != eveSock) {
			t.Fatalf("l7 config read back as %+v, want source %q path %q", cfg.L7.EVE, wantSource, eveSock)
		}
	}
}

func TestL7ColumnSummarisesEachProtocol(t *testing.T) {
	for _, tc := range []struct {
		name, line, want string
	}{
		{"http transactions in id order, query already dropped by the agent",
			`{"appProtocolName":"http","httpVals":"{\"10\":{\"http_method\":\"GET\",\"hostname\":\"10.96.0.0\",\"url\":\"/b\",\"status\":200},\"2\":{\"http_method\":\"GET\",\"hostname\":\"10.96.0.0\",\"url\":\"/status/404\",\"status\":404}}"}`,
			"http GET 10.96.0.0/status/404 404 GET 10.96.0.0/b 200"},
		{"dns question and answer",
			`{"appProtocolName":"dns","dnsQueryName":"web.demo.test","dnsQueryType":"A","dnsResponseCode":"NOERROR","dnsAnswers":"10.96.0.1"}`,
			"dns A web.demo.test NOERROR 10.96.0.1"},
		{"tls server name and version",
			`{"appProtocolName":"tls","tlsServerName":"secure.demo.test","tlsVersion":"TLS 1.3","tlsJA3":""}`,
			"tls secure.demo.test TLS 1.3"},
		{"no L7", `{"protocolIdentifier":6}`, "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newRecordLog()
			l.add([]byte(tc.line))
			_, _, latest := l.snapshot()
			for _, r := range latest {
				if got := l7Summary(r); got != tc.want {
					t.Errorf("l7Summary = %q, want %q", got, tc.want)
				}
			}
		})
	}
}

func TestL7FieldsOfEarlierRecordsStayWithTheConnection(t *testing.T) {
	l := newRecordLog()
	// The active-timeout record carried the transaction; the larger final
	// one does not repeat it, but the table shows the final one.
	l.add([]byte(strings.Replace(activeLine, `"flowEndReason":2`, `"flowEndReason":2,"appProtocolName":"http","httpVals":"{\"0\":{\"http_method\":\"GET\",\"hostname\":\"h\",\"url\":\"/\",\"status\":200}}"`, 1)))
	l.add([]byte(strings.Replace(endLine, `,"appProtocolName":"http"`, "", 1)))
	_, _, latest := l.snapshot()
	r := latest[demoFlow().key()]
	if !r.ended() || l7Summary(r) != "http GET h/ 200" {
		t.Fatalf("final record %v, L7 column %q", r, l7Summary(r))
	}
}

// demoFlow is the TCP transfer the tests pretend the demo made.
func demoFlow() expected {
	backend := &netnstest.Pod{Name: "echo", Namespace: "default", IPv4: netip.MustParseAddr("10.244.0.4")}
	return expected{
		What: "tcp transfer", Proto: flow.ProtoTCP, Src: netip.MustParseAddrPort("10.244.0.2:40000"),
		Service: netnstest.Service{VIP: netip.MustParseAddr("10.96.0.2"), Port: 9000, TargetPort: 9000, Backend: backend},
		Sent:    1 << 20, Received: 64 << 10,
	}
}

const activeLine = `{"sourceIPv4Address":"10.244.0.2","destinationIPv4Address":"10.244.0.4","sourceTransportPort":40000,"destinationTransportPort":9000,"protocolIdentifier":6,"packetTotalCount":10,"octetTotalCount":5000,"reversePacketTotalCount":5,"reverseOctetTotalCount":300,"destinationClusterIPv4":"10.96.0.2","destinationServicePort":9000,"flowEndReason":2}`
const endLine = `{"sourceIPv4Address":"10.244.0.2","destinationIPv4Address":"10.244.0.4","sourceTransportPort":40000,"destinationTransportPort":9000,"protocolIdentifier":6,"packetTotalCount":40,"octetTotalCount":1050000,"reversePacketTotalCount":30,"reverseOctetTotalCount":67000,"destinationClusterIPv4":"10.96.0.2","destinationServicePort":9000,"flowEndReason":3,"sourcePodName":"client","appProtocolName":"http"}`

func TestRecordLogKeepsTheLatestRecordPerConnection(t *testing.T) {
	l := newRecordLog()
	var raw bytes.Buffer
	// The end record arrives before a stale active one (reconnect replay):
	// the table must still show the final totals.
	l.read(strings.NewReader(endLine+"\nnot json\n"+activeLine+"\n[]\n"), &raw)
	total, bad, latest := l.snapshot()
	if total != 2 || bad != 2 {
		t.Fatalf("total %d bad %d, want 2 and 2", total, bad)
	}
	if raw.Len() == 0 {
		t.Error("raw lines not copied")
	}
	r, ok := latest[demoFlow().key()]
	if !ok {
		t.Fatalf("record not matched to the demo's connection; have %v", latest)
	}
	if n, _ := r.num("octetTotalCount"); n != 1050000 || !r.ended() || r.endReason() != "end-of-flow" {
		t.Fatalf("latest record is %v", r)
	}
	if seen, ended := progress([]expected{demoFlow()}, latest); seen != 1 || ended != 1 {
		t.Fatalf("progress %d/%d", seen, ended)
	}
}

func TestTableShowsServiceCountersAndMissingFlows(t *testing.T) {
	l := newRecordLog()
	l.add([]byte(endLine))
	_, _, latest := l.snapshot()
	other := demoFlow()
	other.Src = netip.MustParseAddrPort("10.244.0.2:40001")
	other.What = "lost one"
	var out bytes.Buffer
	missing := printTable(&out, []expected{demoFlow(), other}, latest, func(a netip.Addr) string {
		if a == netip.MustParseAddr("10.244.0.4") {
			return "echo"
		}
		return ""
	})
	got := out.String()
	if missing != 1 {
		t.Errorf("missing = %d, want 1", missing)
	}
	for _, want := range []string{"client 10.244.0.2:40000", "echo 10.244.0.4:9000", "10.96.0.2:9000", "1.0Mi", "65Ki", "end-of-flow", "http", "NO RECORD"} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}

func TestListensOn(t *testing.T) {
	proc := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
`
	if !listensOn([]byte(proc), "0100007F:1F90") {
		t.Error("listening socket not found")
	}
	if listensOn([]byte(proc), "0100007F:1F91") {
		t.Error("established socket taken for a listener")
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 9999: "9999", 65536: "64Ki", 1 << 20: "1.0Mi", 20 << 20: "20Mi"} {
		if got := size(n); got != want {
			t.Errorf("size(%d) = %q, want %q", n, got, want)
		}
	}
}
