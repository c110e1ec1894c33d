package eve

import (
	"bytes"
	"encoding/json"
	"runtime"
	"testing"
	"time"
)

// BenchmarkParseLineHTTP parses every Suricata 7.0.10 http line per
// iteration (so -benchtime 1x still measures something) and reports lines/s
// and allocations per line next to the baseline measured in the same run:
// encoding/json into map[string]any over the same lines. It runs on one
// core (GOMAXPROCS=1), as the agent's EVE reader does: a second proc would
// run the garbage collector beside the parser and flatter it.
func BenchmarkParseLineHTTP(b *testing.B) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	lines := bytes.Split(bytes.TrimSuffix(readTestdata(b, "suricata-7.0.10/eve-http.json.gz"), []byte{'\n'}), []byte{'\n'})
	var size int
	for _, l := range lines {
		size += len(l) + 1
	}
	measure := func(iters int, fn func(l []byte)) (linesPerSec, allocsPerLine float64) {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		start := time.Now()
		for i := 0; i < iters; i++ {
			for _, l := range lines {
				fn(l)
			}
		}
		el := time.Since(start)
		runtime.ReadMemStats(&m1)
		n := float64(iters * len(lines))
		return n / el.Seconds(), float64(m1.Mallocs-m0.Mallocs) / n
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	lps, apl := measure(b.N, func(l []byte) {
		if _, err := ParseLine(l); err != nil {
			b.Fatal(err)
		}
	})
	b.StopTimer()
	b.ReportMetric(lps, "lines/s")
	b.ReportMetric(apl, "allocs/line")
	lps, apl = measure(max(b.N, 1), func(l []byte) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			b.Fatal(err)
		}
	})
	b.ReportMetric(lps, "baseline-map-lines/s")
	b.ReportMetric(apl, "baseline-map-allocs/line")
}
