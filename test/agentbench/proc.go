// Package agentbench benchmarks the real flowlens-agent binary the way it
// runs on a node: a conntrack table that is large and idle, or that churns
// short connections through a DNAT Service, and a real IPFIX collector at
// the other end. It reports what the process as a whole costs (CPU time of
// every thread, resident memory including the Go runtime and the export
// buffer) and whether every connection came out exactly once; the
// benchmarks are in bench_integration_test.go (`make bench`).
//
// This file reads a process's CPU time and memory from /proc.
package agentbench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat. The kernel
// fixes it at 100 for user space whatever CONFIG_HZ is.
const userHZ = 100

// Usage is one reading of a process's resource use.
type Usage struct {
	// CPU is user plus system time of all its threads, dead ones included.
	CPU time.Duration
	// RSS is resident memory now (VmRSS), HWM its peak so far (VmHWM).
	RSS, HWM int64
	// Anon and File split RSS (RssAnon, RssFile; RssShmem is the rest):
	// the heap and stacks against the mapped binary, which does not grow
	// with the table.
	Anon, File int64
}

// ReadUsage reads pid's CPU time from /proc/<pid>/stat and its memory from
// /proc/<pid>/status.
func ReadUsage(pid int) (Usage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Usage{}, fmt.Errorf("read cpu time of pid %d: %w", pid, err)
	}
	cpu, err := parseStatCPU(stat)
	if err != nil {
		return Usage{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Usage{}, fmt.Errorf("read memory of pid %d: %w", pid, err)
	}
	u, err := parseStatusMemory(status)
	if err != nil {
		return Usage{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	u.CPU = cpu
	return u, nil
}

// parseStatCPU returns utime+stime of a /proc/<pid>/stat line. The command
// name (field 2) may hold spaces and parentheses, so fields are counted
// from the last ')'.
func parseStatCPU(stat []byte) (time.Duration, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("stat %q: no command name", stat)
	}
	// After ") " come field 3 (state) onwards; utime and stime are fields
	// 14 and 15, i.e. indexes 11 and 12 here.
	f := strings.Fields(string(stat[end+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("stat %q: %d fields after the command name, want at least 13", stat, len(f))
	}
	var ticks uint64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat: cpu time %q: %w", s, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// parseStatusMemory returns VmRSS, VmHWM, RssAnon and RssFile of
// /proc/<pid>/status in bytes.
func parseStatusMemory(status []byte) (Usage, error) {
	var u Usage
	fields := map[string]*int64{"VmRSS": &u.RSS, "VmHWM": &u.HWM, "RssAnon": &u.Anon, "RssFile": &u.File}
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		dst := fields[name]
		if !ok || dst == nil {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return Usage{}, fmt.Errorf("status: %s %q: want \"<n> kB\"", name, rest)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("status: %s: %w", name, err)
		}
		*dst = kb << 10
		found++
	}
	if found != len(fields) {
		return Usage{}, fmt.Errorf("status: VmRSS, VmHWM, RssAnon or RssFile missing (a kernel thread or a zombie?)")
	}
	return u, nil
}

// Quantile returns the q-quantile (0..1) of ds by the nearest-rank method;
// ds is sorted in place. Zero for no values.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	rank := int(q*float64(len(ds)) + 0.999999999)
	return ds[min(max(rank, 1), len(ds))-1]
}
