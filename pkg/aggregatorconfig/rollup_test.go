package aggregatorconfig

import (
	"slices"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/confutil"
)

func TestClickHouseRollup(t *testing.T) {
	c, err := Parse([]byte("sinks:\n  clickhouse:\n    enabled: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Sinks.ClickHouse.Rollup; !r.Enabled || r.Retention.D() != DefaultRollupRetention {
		t.Errorf("default rollup %+v", r)
	}
	c, err = Parse([]byte("sinks:\n  clickhouse:\n    enabled: true\n    rollup:\n      enabled: false\n"))
	if err != nil || c.Sinks.ClickHouse.Rollup.Enabled {
		t.Errorf("rollup off: %+v %v", c.Sinks.ClickHouse.Rollup, err)
	}
	c, err = Parse([]byte("sinks:\n  clickhouse:\n    enabled: true\n    rollup:\n      retention: 0s\n"))
	if err != nil || c.Sinks.ClickHouse.Rollup.Retention != 0 || !c.Sinks.ClickHouse.Rollup.Enabled {
		t.Errorf("keep forever: %+v %v", c.Sinks.ClickHouse.Rollup, err)
	}
	c, err = Parse([]byte("sinks:\n  clickhouse:\n    enabled: true\n    rollup:\n      retention: 168h\n"))
	if err != nil || c.Sinks.ClickHouse.Rollup.Retention.D() != 168*time.Hour {
		t.Errorf("a week: %+v %v", c.Sinks.ClickHouse.Rollup, err)
	}
	for _, bad := range []string{"-1h", "30m", "100000h", "30", "30d"} {
		_, err := Parse([]byte("sinks:\n  clickhouse:\n    enabled: true\n    rollup:\n      retention: " + bad + "\n"))
		if err == nil || !slices.Contains(confutil.Fields(err), "sinks.clickhouse.rollup.retention") {
			t.Errorf("retention %s: %v", bad, err)
		}
	}
}
