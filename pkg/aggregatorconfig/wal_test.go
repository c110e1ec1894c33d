package aggregatorconfig

import (
	"slices"
	"testing"

	"github.com/flowlens/flowlens/pkg/confutil"
)

func TestWALBlockErrorsNameEveryBadField(t *testing.T) {
	_, err := Parse([]byte(`
wal:
  enabled: true
  dir: ""
  segmentBytes: 100
  maxBytes: 100
  sync: sometimes
  syncInterval: -1s
sinks:
  jsonl:
    enabled: true
`))
	if err == nil {
		t.Fatal("bad wal block accepted")
	}
	fields := confutil.Fields(err)
	for _, f := range []string{"wal.dir", "wal.segmentBytes", "wal.maxBytes", "wal.sync", "wal.syncInterval"} {
		if !slices.Contains(fields, f) {
			t.Errorf("errors name %v, not %s:\n%v", fields, f, err)
		}
	}
	// Disabled, the same values are not checked: they are not used.
	if _, err := Parse([]byte("wal:\n  enabled: false\n  sync: sometimes\nsinks:\n  jsonl:\n    enabled: true\n")); err != nil {
		t.Errorf("disabled wal block rejected: %v", err)
	}
	c, err := Parse([]byte("wal:\n  enabled: true\n  dir: /tmp/x\nsinks:\n  jsonl:\n    enabled: true\n"))
	if err != nil || !c.WAL.Enabled || c.WAL.Sync != "interval" || c.WAL.MaxBytes < 2*c.WAL.SegmentBytes {
		t.Errorf("enabled wal with defaults: %+v, %v", c.WAL, err)
	}
}
