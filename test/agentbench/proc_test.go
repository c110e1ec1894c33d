package agentbench

import (
	"os"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis, as a process may set.
	stat := []byte("4242 (flow (lens) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 12 0 100 1000 200 18446744073709551615")
	got, err := parseStatCPU(stat)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3250 * time.Millisecond; got != want {
		t.Fatalf("cpu = %v, want %v (250+75 ticks of 10 ms)", got, want)
	}
	if _, err := parseStatCPU([]byte("4242 (x) S 1 2")); err == nil {
		t.Fatal("truncated stat parsed without error")
	}
}

func TestParseStatusMemory(t *testing.T) {
	status := []byte("Name:\tflowlens-agent\nVmPeak:\t  900 kB\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\nRssAnon:\t    700 kB\nRssFile:\t    300 kB\nRssShmem:\t   24 kB\nThreads:\t9\n")
	u, err := parseStatusMemory(status)
	if err != nil {
		t.Fatal(err)
	}
	if u.RSS != 1024<<10 || u.HWM != 2048<<10 || u.Anon != 700<<10 || u.File != 300<<10 {
		t.Fatalf("rss %d hwm %d anon %d file %d, want %d %d %d %d", u.RSS, u.HWM, u.Anon, u.File, 1024<<10, 2048<<10, 700<<10, 300<<10)
	}
	if _, err := parseStatusMemory([]byte("Name:\tkthreadd\n")); err == nil {
		t.Fatal("status without VmRSS parsed without error")
	}
}

func TestReadUsageOfThisProcess(t *testing.T) {
	u, err := ReadUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.RSS <= 0 || u.HWM < u.RSS || u.Anon <= 0 || u.File <= 0 || u.Anon+u.File > u.RSS {
		t.Fatalf("rss %d hwm %d anon %d file %d: want 0 < rss <= hwm, anon and file > 0 and within rss", u.RSS, u.HWM, u.Anon, u.File)
	}
}

func TestQuantile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := Quantile(ds, c.q); got != c.want {
			t.Errorf("q%.2f = %v, want %v", c.q, got, c.want)
		}
	}
	if Quantile(nil, 0.99) != 0 {
		t.Error("quantile of nothing is not 0")
	}
}
