package clickhouse

import (
	"strings"
	"testing"
	"time"
)

func TestRollupDDLGatesTTLOnVersion(t *testing.T) {
	old := CreateRollupSQL("db", "flows_rollup", Version{Major: 18, Minor: 16}, 30*24*time.Hour)
	if strings.Contains(old, "TTL") {
		t.Errorf("18.16 DDL has a TTL:\n%s", old)
	}
	cur := CreateRollupSQL("db", "flows_rollup", Version{Major: 24, Minor: 3}, 30*24*time.Hour)
	if !strings.Contains(cur, "TTL minute + toIntervalSecond(2592000)") {
		t.Errorf("current DDL lacks the TTL:\n%s", cur)
	}
	if forever := CreateRollupSQL("db", "flows_rollup", Version{Major: 24, Minor: 3}, 0); strings.Contains(forever, "TTL") {
		t.Errorf("retention 0 has a TTL:\n%s", forever)
	}
	for _, want := range []string{"ENGINE = AggregatingMergeTree", "bytes AggregateFunction(sum, UInt64)", "connections AggregateFunction(uniq, UInt64, DateTime)",
		"PARTITION BY toYYYYMMDD(minute)", "ORDER BY (minute, sourceNode, destinationNode, port, protocol, appProtocol, sourceNamespace, destinationNamespace)",
		"minute DateTime", "port UInt16", "protocol UInt8", "`db`.`flows_rollup`"} {
		if !strings.Contains(old, want) {
			t.Errorf("DDL lacks %q:\n%s", want, old)
		}
	}
}

func TestRollupViewReadsTheFlowsTable(t *testing.T) {
	v := CreateRollupViewSQL("db", "flows_rollup_mv", "flows_local", "flows_local_rollup")
	for _, want := range []string{"CREATE MATERIALIZED VIEW IF NOT EXISTS `db`.`flows_rollup_mv` TO `db`.`flows_local_rollup`",
		"FROM `db`.`flows_local` GROUP BY minute, sourceNode", "toStartOfMinute(flowEndSeconds) AS minute",
		"uniqState(connectionKey, flowStartSeconds) AS connections", "sumState(toUInt64(octetDeltaCount)) AS bytes"} {
		if !strings.Contains(v, want) {
			t.Errorf("view lacks %q:\n%s", want, v)
		}
	}
	d := CreateRollupDistributedSQL("db", "flows_rollup", "c1", "flows_local_rollup")
	if !strings.Contains(d, "ENGINE = Distributed('c1', 'db', 'flows_local_rollup')") {
		t.Errorf("distributed rollup:\n%s", d)
	}
}

func TestRollupRetentionMustNotBeNegative(t *testing.T) {
	if _, err := New(Config{Addr: "127.0.0.1:9000", Aggregator: "a", Rollup: &RollupConfig{Retention: -time.Hour}}); err == nil {
		t.Error("negative retention accepted")
	}
}

// The rollup's partitions are days of the server's time zone: on a server
// in UTC+9 the day 20261127 ends at 2026-11-27T15:00Z, so a cutoff of
// 16:00Z expires it while UTC parsing (ending 2026-11-28T00:00Z) would
// keep it, and a cutoff of 14:00Z keeps it.
func TestExpiredPartitionsUseTheServerTimeZone(t *testing.T) {
	tokyo, err := time.LoadLocation("Asia/Tokyo")
	if err != nil {
		t.Fatal(err)
	}
	parts := []string{"20261126", "20261127", "20261128", "tuple()", "2026112"}
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if got := strings.Join(expiredPartitions(parts, tokyo, at("2026-11-27T16:00:00Z")), ","); got != "20261126,20261127" {
		t.Errorf("Tokyo, cutoff 16:00Z: expired %q, want 20261126,20261127", got)
	}
	if got := strings.Join(expiredPartitions(parts, tokyo, at("2026-11-27T14:59:59Z")), ","); got != "20261126" {
		t.Errorf("Tokyo, cutoff 14:59:59Z: expired %q, want 20261126", got)
	}
	if got := strings.Join(expiredPartitions(parts, time.UTC, at("2026-11-27T16:00:00Z")), ","); got != "20261126" {
		t.Errorf("UTC, cutoff 16:00Z: expired %q, want 20261126", got)
	}
}
