package netns

import (
	"errors"
	"testing"
)

func TestSysctlFile(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr bool
	}{
		{"dotted name maps under /proc/sys", "net.netfilter.nf_conntrack_acct", "/proc/sys/net/netfilter/nf_conntrack_acct", false},
		{"empty name is refused", "", "", true},
		{"path traversal is refused", "net..foo", "", true},
		{"slashes are refused", "net/netfilter/x", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := sysctlFile(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("sysctlFile(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestDoWithEmptyPathRunsInPlaceAndReturnsFnError(t *testing.T) {
	want := errors.New("boom")
	ran := false
	err := Do("", func() error { ran = true; return want })
	if !ran || !errors.Is(err, want) {
		t.Errorf("Do(\"\") ran=%v err=%v, want fn run and its error returned", ran, err)
	}
}

func TestDoWithMissingNamespaceFailsWithoutRunningFn(t *testing.T) {
	ran := false
	err := Do("/nonexistent/netns", func() error { ran = true; return nil })
	if err == nil || ran {
		t.Errorf("Do(missing) ran=%v err=%v, want an error and fn not run", ran, err)
	}
}

func TestPath(t *testing.T) {
	if got := Path("fl-x"); got != "/run/netns/fl-x" {
		t.Errorf("Path = %q", got)
	}
}
