package aggregatorconfig

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/confutil"
)

func TestExampleConfigIsTheDefault(t *testing.T) {
	got, err := Load(filepath.Join("..", "..", "docs", "examples", "aggregator.yaml"))
	if err != nil {
		t.Fatalf("load example: %v", err)
	}
	want := Default()
	// The example's one change: a sink must be enabled, none is by default.
	want.Sinks.ClickHouse.Enabled = true
	if err := want.Finish(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("docs/examples/aggregator.yaml differs from Default():\n got %+v\nwant %+v", got, want)
	}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "aggregator.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const jsonlOn = "sinks:\n  jsonl:\n    enabled: true\n"

func TestLoadOverridesOnlyWhatTheFileSays(t *testing.T) {
	cfg, err := Load(writeConfig(t, "aggregatorID: agg\ncorrelation:\n  activeTimeout: 2s\n"+jsonlOn+"    maxFiles: 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AggregatorID != "agg" || cfg.Correlation.ActiveTimeout.D() != 2*time.Second || cfg.Sinks.JSONL.MaxFiles != 2 {
		t.Errorf("file values not applied: %+v", cfg)
	}
	def := Default()
	if cfg.Correlation.InactiveTimeout != def.Correlation.InactiveTimeout || cfg.Sinks.JSONL.Queue != def.Sinks.JSONL.Queue ||
		!slices.Equal(cfg.Listen, def.Listen) || cfg.MetricsAddress != def.MetricsAddress {
		t.Errorf("defaults lost: %+v", cfg)
	}
}

func TestHostNameIsTheDefaultAggregatorID(t *testing.T) {
	cfg, err := Parse([]byte(jsonlOn))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := os.Hostname()
	if cfg.AggregatorID != h {
		t.Errorf("aggregatorID = %q, want the host name %q", cfg.AggregatorID, h)
	}
}

func TestInvalidConfigNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, field, text string
	}{
		{"negative active timeout", "correlation:\n  activeTimeout: -1s\n", "correlation.activeTimeout", `must be a positive duration, got "-1s"`},
		{"bare number duration", "correlation:\n  inactiveTimeout: 60\n", "correlation.inactiveTimeout", "bare number 60"},
		{"unparsable duration", "shutdownTimeout: soon\n", "shutdownTimeout", `"soon"`},
		{"misspelt option", "lisen: []\n", "lisen", "unknown option"},
		{"misspelt sink option", "sinks:\n  jsonl:\n    enabled: true\n    pth: x\n", "sinks.jsonl.pth", "unknown option"},
		{"listen without scheme", "listen: [\"127.0.0.1:4739\"]\n", "listen[0]", "scheme"},
		{"listen with unknown scheme", "listen: [\"sctp://127.0.0.1:4739\"]\n", "listen[0]", "scheme"},
		{"listen without port", "listen: [\"tcp://127.0.0.1:\"]\n", "listen[0]", "port"},
		{"listen twice", "listen: [\"tcp://127.0.0.1:1\", \"tcp://127.0.0.1:1\"]\n", "listen[1]", "listen[0]"},
		{"tls listener without certificate", "listen: [\"tls://127.0.0.1:4739\"]\n", "tls.certFile", "must be set"},
		{"missing certificate file", "listen: [\"tls://127.0.0.1:4739\"]\ntls:\n  certFile: /nonexistent/c\n  keyFile: /nonexistent/k\n", "tls.keyFile", "no such file"},
		{"negative input queue", "inputQueue: -5\n", "inputQueue", "1..1048576"},
		{"bad metrics address", "metricsAddress: nope\n", "metricsAddress", "host:port"},
		{"zero sink failure timeout", "health:\n  sinkFailureTimeout: 0s\n", "health.sinkFailureTimeout", "positive"},
		{"clickhouse without addr", "sinks:\n  clickhouse:\n    enabled: true\n    addr: \"\"\n", "sinks.clickhouse.addr", "host:port"},
		{"batch larger than queue", "sinks:\n  clickhouse:\n    enabled: true\n    queueRecords: 10\n    maxBatch: 100\n", "sinks.clickhouse.maxBatch", "exceeds"},
		{"retryMax below retryMin", "sinks:\n  jsonl:\n    enabled: true\n    retryMin: 2s\n    retryMax: 1s\n", "sinks.jsonl.retryMax", "shorter"},
		{"negative rotation size", "sinks:\n  jsonl:\n    enabled: true\n    maxBytes: -1\n", "sinks.jsonl.maxBytes", "4096..1099511627776"},
		{"ipfix bad transport", "sinks:\n  ipfix:\n    enabled: true\n    address: x:1\n    transport: sctp\n", "sinks.ipfix.transport", "sctp"},
		{"ipfix tls options on tcp", "sinks:\n  ipfix:\n    enabled: true\n    address: x:1\n    caFile: /x\n", "sinks.ipfix.transport", "want \"tls\""},
		{"ipfix without address", "sinks:\n  ipfix:\n    enabled: true\n", "sinks.ipfix.address", "host:port"},
		{"no sink enabled", "listen: [\"tcp://127.0.0.1:4739\"]\n", "sinks", "enable at least one"},
		{"number where a list goes", "listen: 5\n", "listen", "list"},
		{"zero idle timeout", "limits:\n  idleTimeout: 0s\n", "limits.idleTimeout", "positive"},
		{"jsonl file mode not octal", "sinks:\n  jsonl:\n    enabled: true\n    fileMode: rw\n", "sinks.jsonl.fileMode", "octal"},
		{"jsonl file mode the owner cannot write", "sinks:\n  jsonl:\n    enabled: true\n    fileMode: \"0400\"\n", "sinks.jsonl.fileMode", "owner"},
		{"zero max block", "sinks:\n  jsonl:\n    enabled: true\n    maxBlock: 0s\n", "sinks.jsonl.maxBlock", "positive"},
		{"zero link series", "metrics:\n  links:\n    maxSeries: 0\n", "metrics.links.maxSeries", "1..1000000"},
		{"too many link series", "metrics:\n  links:\n    maxSeries: 1000001\n", "metrics.links.maxSeries", "1..1000000"},
		{"misspelt link option", "metrics:\n  links:\n    maxSerie: 5\n", "metrics.links.maxSerie", "unknown option"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := tc.yaml
			if !strings.Contains(body, "sinks:") && tc.field != "sinks" {
				body += jsonlOn
			}
			_, err := Load(writeConfig(t, body))
			if err == nil {
				t.Fatalf("config accepted, want an error naming %s", tc.field)
			}
			if !slices.Contains(confutil.Fields(err), tc.field) {
				t.Errorf("error does not name %s (names %v):\n%v", tc.field, confutil.Fields(err), err)
			}
			if !strings.Contains(err.Error(), tc.field+": ") || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error lacks %q after the field name:\n%v", tc.text, err)
			}
		})
	}
}

func TestEveryBadFieldIsReportedAtOnce(t *testing.T) {
	// The old loader stopped at the first problem; a user fixing a file
	// needed one start-up per mistake.
	_, err := Parse([]byte(`inputQueue: 0
correlation:
  startWindow: -1s
  maxConnections: 0
sinks:
  jsonl:
    enabled: true
    maxFiles: 0
    commitInterval: 0s
`))
	want := []string{"inputQueue", "correlation.startWindow", "correlation.maxConnections", "sinks.jsonl.maxFiles", "sinks.jsonl.commitInterval"}
	if got := confutil.Fields(err); !reflect.DeepEqual(got, want) {
		t.Errorf("fields = %v, want %v\n%v", got, want, err)
	}
	// Decoding problems, too, come all at once.
	_, err = Parse([]byte("inputQueue: lots\nshutdownTimeout: 60\ncorelation: {}\ncorrelation:\n  maxConnections: -1\n" + jsonlOn))
	// Values of the wrong type and unknown keys, then what validation
	// finds in the values that could be read.
	want = []string{"inputQueue", "shutdownTimeout", "corelation", "correlation.maxConnections"}
	if got := confutil.Fields(err); !reflect.DeepEqual(got, want) {
		t.Errorf("fields = %v, want %v\n%v", got, want, err)
	}
}

// The aggregator used to read a bare number as nanoseconds: inactiveTimeout:
// 60 was 60 ns, accepted.
func TestBareNumberIsNotADuration(t *testing.T) {
	for _, field := range []string{"shutdownTimeout", "health.sinkFailureTimeout", "correlation.correlationWait",
		"correlation.inactiveTimeout", "sinks.jsonl.commitInterval", "sinks.clickhouse.dialTimeout"} {
		parts := strings.Split(field, ".")
		var b strings.Builder
		for i, p := range parts {
			b.WriteString(strings.Repeat("  ", i) + p + ":")
			if i == len(parts)-1 {
				b.WriteString(" 60")
			}
			b.WriteString("\n")
		}
		body := b.String()
		if !strings.HasPrefix(field, "sinks.jsonl") {
			body = strings.Replace(body, "sinks:\n", "", 1)
			if strings.HasPrefix(field, "sinks.") {
				body = "sinks:\n" + body + "    enabled: true\n"
			}
		} else {
			body = strings.Replace(body, "  jsonl:\n", "  jsonl:\n    enabled: true\n", 1)
		}
		if !strings.HasPrefix(field, "sinks.") {
			body += jsonlOn
		}
		_, err := Parse([]byte(body))
		if !slices.Contains(confutil.Fields(err), field) {
			t.Errorf("%s: 60 accepted or not named (err %v)\n%s", field, err, body)
		}
	}
}

func TestEverySizeOptionHasAnUpperBound(t *testing.T) {
	for _, tc := range []struct{ field, yaml, bound string }{
		{"inputQueue", "inputQueue: 2000000000\n" + jsonlOn, "1048576"},
		{"correlation.maxConnections", "correlation:\n  maxConnections: 2000000000\n" + jsonlOn, "16777216"},
		{"sinks.jsonl.queueRecords", jsonlOn + "    queueRecords: 2000000000\n", "10000000"},
		{"sinks.jsonl.maxBatch", jsonlOn + "    queueRecords: 10000000\n    maxBatch: 2000000\n", "1000000"},
		{"sinks.jsonl.maxBytes", jsonlOn + "    maxBytes: 2000000000000000\n", "1099511627776"},
		{"sinks.jsonl.maxFiles", jsonlOn + "    maxFiles: 2000000000\n", "1000"},
		{"sinks.jsonl.spool.maxBytes", jsonlOn + "    spool:\n      maxBytes: 2000000000000000\n", "1099511627776"},
		{"limits.maxConnections", "limits:\n  maxConnections: 2000000000\n" + jsonlOn, "65536"},
		{"limits.maxUDPSessions", "limits:\n  maxUDPSessions: 2000000000\n" + jsonlOn, "65536"},
		{"limits.maxTemplatesPerSession", "limits:\n  maxTemplatesPerSession: 2000000000\n" + jsonlOn, "65536"},
		{"limits.maxTemplateFieldsPerSession", "limits:\n  maxTemplateFieldsPerSession: 2000000000\n" + jsonlOn, "1048576"},
		{"limits.maxFieldsPerMessage", "limits:\n  maxFieldsPerMessage: 2000000000\n" + jsonlOn, "65535"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if !slices.Contains(confutil.Fields(err), tc.field) || !strings.Contains(err.Error(), ".."+tc.bound+", got") {
			t.Errorf("%s: want an error stating the bound %s, got %v", tc.field, tc.bound, err)
		}
	}
}

// Issue 9 item 11: each of these was accepted silently.
func TestIssue9TLSBlockWithoutTLSListenerIsRejected(t *testing.T) {
	_, err := Parse([]byte("listen: [tcp://127.0.0.1:4739]\ntls:\n  certFile: /etc/cert.pem\n" + jsonlOn))
	if !slices.Contains(confutil.Fields(err), "tls") || !strings.Contains(err.Error(), "no listen endpoint is tls://") {
		t.Errorf("tls block without a tls listener: %v", err)
	}
}

func TestIssue9SinkBlockWithoutEnabledIsRejected(t *testing.T) {
	_, err := Parse([]byte("sinks:\n  jsonl:\n    enabled: true\n  clickhouse:\n    addr: db:9000\n"))
	if got := confutil.Fields(err); !reflect.DeepEqual(got, []string{"sinks.clickhouse.enabled"}) {
		t.Errorf("clickhouse block without enabled: fields %v, err %v", got, err)
	}
	// enabled: false is an explicit choice and stays accepted.
	if _, err := Parse([]byte("sinks:\n  jsonl:\n    enabled: true\n  clickhouse:\n    enabled: false\n    addr: db:9000\n")); err != nil {
		t.Errorf("disabled clickhouse block rejected: %v", err)
	}
}

func TestIssue9ClickHouseAddrWithoutPortIsRejected(t *testing.T) {
	_, err := Parse([]byte("sinks:\n  clickhouse:\n    enabled: true\n    addr: clickhouse.example\n"))
	if !slices.Contains(confutil.Fields(err), "sinks.clickhouse.addr") || !strings.Contains(err.Error(), `want host:port, got "clickhouse.example"`) {
		t.Errorf("clickhouse addr without port: %v", err)
	}
}

// Issue 9 item 13: a YAML 1.1 reader turned `no` into "false".
func TestIssue9StringsKeepTheirLiteralText(t *testing.T) {
	cfg, err := Parse([]byte("aggregatorID: no\n" + jsonlOn + "    path: 1.10\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AggregatorID != "no" || cfg.Sinks.JSONL.Path != "1.10" {
		t.Errorf("aggregatorID %q, jsonl.path %q; want \"no\" and \"1.10\"", cfg.AggregatorID, cfg.Sinks.JSONL.Path)
	}
}

func TestMissingFileIsAnError(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "absent.yaml")); err == nil {
		t.Fatal("missing config file accepted")
	}
}

func TestClickHouseCluster(t *testing.T) {
	const head = "sinks:\n  clickhouse:\n    enabled: true\n"
	cfg, err := Parse([]byte(head + "    table: t\n    cluster:\n      name: flowlens\n      shards: [\"ch-0:9000\", \"ch-1:9000\"]\n"))
	if err != nil {
		t.Fatalf("cluster config: %v", err)
	}
	ch := cfg.Sinks.ClickHouse
	if ch.Addr != "" || ch.Cluster == nil || ch.Cluster.Name != "flowlens" || ch.Cluster.LocalTable != "t_local" ||
		!reflect.DeepEqual(ch.Cluster.Shards, []string{"ch-0:9000", "ch-1:9000"}) {
		t.Errorf("parsed: addr %q, cluster %+v; want no addr, local table t_local", ch.Addr, ch.Cluster)
	}
	if !ch.Cluster.CheckAddresses() {
		t.Errorf("checkShardAddresses: want true by default")
	}
	for _, tc := range []struct {
		yaml string
		want bool
	}{{"false", false}, {"true", true}} {
		cfg, err := Parse([]byte(head + "    cluster:\n      name: c\n      shards: [\"ch-0:9000\"]\n      checkShardAddresses: " + tc.yaml + "\n"))
		if err != nil {
			t.Fatalf("checkShardAddresses: %s: %v", tc.yaml, err)
		}
		if got := cfg.Sinks.ClickHouse.Cluster.CheckAddresses(); got != tc.want {
			t.Errorf("checkShardAddresses: %s: CheckAddresses() = %v", tc.yaml, got)
		}
	}
	if cfg, err := Parse([]byte(head)); err != nil || cfg.Sinks.ClickHouse.Cluster != nil || cfg.Sinks.ClickHouse.Addr == "" {
		t.Errorf("without a cluster: %v, cluster %+v, addr %q", err, cfg.Sinks.ClickHouse.Cluster, cfg.Sinks.ClickHouse.Addr)
	}
	for _, tc := range []struct {
		name, yaml, field, text string
	}{
		{"addr and cluster", "    addr: ch-0:9000\n    cluster:\n      name: c\n      shards: [\"ch-0:9000\"]\n", "sinks.clickhouse.addr", "must be empty when sinks.clickhouse.cluster is set"},
		{"no name", "    cluster:\n      shards: [\"ch-0:9000\"]\n", "sinks.clickhouse.cluster.name", "must be set"},
		{"name with a quote", "    cluster:\n      name: \"a'b\"\n      shards: [\"ch-0:9000\"]\n", "sinks.clickhouse.cluster.name", "no spaces or quotes"},
		{"no shards", "    cluster:\n      name: c\n", "sinks.clickhouse.cluster.shards", "at least one"},
		{"shard without port", "    cluster:\n      name: c\n      shards: [\"ch-0:9000\", \"ch-1\"]\n", "sinks.clickhouse.cluster.shards[1]", "host:port"},
		{"shard twice", "    cluster:\n      name: c\n      shards: [\"ch-0:9000\", \"ch-0:9000\"]\n", "sinks.clickhouse.cluster.shards[1]", "shards[0] already"},
		{"local table is the table", "    cluster:\n      name: c\n      shards: [\"ch-0:9000\"]\n      localTable: flows\n", "sinks.clickhouse.cluster.localTable", "must differ"},
		{"misspelt cluster option", "    cluster:\n      name: c\n      shard: [\"ch-0:9000\"]\n", "sinks.clickhouse.cluster.shard", "unknown option"},
		{"checkShardAddresses not a bool", "    cluster:\n      name: c\n      shards: [\"ch-0:9000\"]\n      checkShardAddresses: sometimes\n", "sinks.clickhouse.cluster.checkShardAddresses", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(head + tc.yaml))
			if !slices.Contains(confutil.Fields(err), tc.field) || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %v: want field %s saying %q", err, tc.field, tc.text)
			}
		})
	}
}
