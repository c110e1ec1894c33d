//go:build integration

package agent

import (
	"context"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
	"github.com/flowlens/flowlens/pkg/shard"
)

const blackholeNetnsEnv = "FLOWLENS_TEST_IN_BLACKHOLE_NETNS"

// A replica whose host vanishes (every packet dropped both ways, no RST, as
// when a node loses power) leaves the ring within failoverAfter +
// WriteTimeout: the exporter's socket carries TCP_USER_TIMEOUT, so data
// unacknowledged for WriteTimeout fails the connection instead of sitting
// in the send buffer for minutes. Its share then reaches the other
// replica. Records already written to the dead socket are kept, encoded,
// by the dead replica's exporter (counted in
// flowlens_ipfix_exporter_records_resent_total) and reach it when it is
// reachable again; with the others, every record arrives exactly once.
//
// The test runs itself again in a new network namespace (unshare -n), so
// its iptables rules cannot touch the host's; it needs root, unshare, ip
// and iptables, and fails without them.
func TestBlackholedReplicaFailsOverWithinWriteTimeout(t *testing.T) {
	if os.Getenv(blackholeNetnsEnv) == "" {
		cmd := exec.Command("unshare", "-n", os.Args[0], "-test.run", "^TestBlackholedReplicaFailsOverWithinWriteTimeout$",
			"-test.v", "-test.count=1", "-test.timeout=3m")
		cmd.Env = append(os.Environ(), blackholeNetnsEnv+"=1")
		out, err := cmd.CombinedOutput()
		t.Logf("in a new network namespace:\n%s", out)
		if err != nil {
			t.Fatalf("unshare -n %s: %v", os.Args[0], err)
		}
		return
	}
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v: %s", name, args, err, out)
		}
	}
	run("ip", "link", "set", "lo", "up")

	const (
		failoverAfter = 2 * time.Second
		writeTimeout  = 2 * time.Second
		// The sink samples reachability every failoverAfter/4, and the
		// kernel notices the user timeout at a retransmission.
		slack = 2 * time.Second
	)
	a, b := newTestCollector(t), newTestCollector(t)
	reg := prometheus.NewRegistry()
	s, err := NewShardedSink(ShardedSinkConfig{
		Collectors:    []string{a.addr, b.addr},
		FailoverAfter: failoverAfter,
		HoldRecords:   1000,
		NewExporter: func(address string, reg prometheus.Registerer) (ReplicaExporter, error) {
			return ipfixexport.New(ipfixexport.Config{
				Address: address, Transport: ipfixexport.TCP, BufferRecords: 100000,
				FlushInterval: 50 * time.Millisecond, WriteTimeout: writeTimeout, DialTimeout: time.Second,
				ReconnectMin: 100 * time.Millisecond, ReconnectMax: 500 * time.Millisecond,
			}, reg)
		},
	}, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	ring := shard.NewRing(a.addr, b.addr)
	rnd := rand.New(rand.NewPCG(9, 9))
	var recs []flow.Record
	export := func(n int) {
		for range n {
			r := shardRecord(rnd, uint64(len(recs)))
			recs = append(recs, r)
			if !s.Export(&r) {
				t.Fatalf("record %d dropped", r.Fwd.Packets)
			}
		}
	}
	// waitArrived waits until every record in [from, to) arrived at the
	// collector want names (at a or b when want is nil).
	waitArrived := func(what string, from, to int, want func(i int) *testCollector) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			ra, rb := a.received(), b.received()
			missing := 0
			for i := from; i < to; i++ {
				seq := uint64(i)
				switch {
				case want == nil && ra[seq]+rb[seq] == 0:
					missing++
				case want != nil && want(i).received()[seq] == 0:
					missing++
				}
			}
			if missing == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of records %d-%d did not arrive", what, missing, from, to-1)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	owner := func(i int) *testCollector {
		if ring.OwnerID(shard.RecordKey(&recs[i])) == a.addr {
			return a
		}
		return b
	}

	export(400)
	waitArrived("before the blackhole, at its owner", 0, 400, owner)

	_, port, _ := net.SplitHostPort(a.addr)
	rules := [][]string{{"INPUT", "-p", "tcp", "--dport", port, "-j", "DROP"}, {"INPUT", "-p", "tcp", "--sport", port, "-j", "DROP"}}
	for _, r := range rules {
		run("iptables", append([]string{"-A"}, r...)...)
	}
	blackholed := time.Now()
	beforeBlackhole := len(recs)
	// 200 records/s over both replicas while the host is gone.
	for value(s.m.failovers) == 0 {
		if time.Since(blackholed) > failoverAfter+writeTimeout+slack {
			t.Fatalf("no failover %s after the blackhole (failoverAfter %s, WriteTimeout %s); ring size %v",
				time.Since(blackholed).Round(100*time.Millisecond), failoverAfter, writeTimeout, value(s.m.ringSize))
		}
		export(10)
		time.Sleep(50 * time.Millisecond)
	}
	failoverAt := time.Since(blackholed)
	beforeFailover := len(recs)
	t.Logf("failover %s after the blackhole (bound failoverAfter %s + WriteTimeout %s + slack %s)",
		failoverAt.Round(10*time.Millisecond), failoverAfter, writeTimeout, slack)
	if v := value(s.m.ringSize); v != 1 {
		t.Fatalf("ring size %v after the failover, want 1", v)
	}

	// The dead replica's share now reaches the other one.
	export(400)
	waitArrived("after the failover, every record at the live replica", beforeFailover, len(recs), func(int) *testCollector { return b })

	moved := value(s.m.moved)
	resent := counterWithLabel(t, reg, "flowlens_ipfix_exporter_records_resent_total", "collector", a.addr)
	toA := 0
	for i := beforeBlackhole; i < beforeFailover; i++ {
		if owner(i) == a {
			toA++
		}
	}
	t.Logf("between the blackhole and the failover %d records were A's: %v moved from its buffer to B, %v kept by A's exporter "+
		"as written to the dead connection and not acknowledged (records_resent_total)", toA, moved, resent)

	// The host comes back: what A's exporter kept reaches it, once.
	for _, r := range rules {
		run("iptables", append([]string{"-D"}, r...)...)
	}
	deadline := time.Now().Add(20 * time.Second)
	for value(s.m.returns) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not return after the blackhole was lifted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	export(200)
	waitArrived("after the return, every record of the run", 0, len(recs), nil)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the deferred wait

	ra, rb := a.received(), b.received()
	late := 0
	for i := range recs {
		seq := uint64(i)
		if n := ra[seq] + rb[seq]; n != 1 {
			t.Errorf("record %d arrived %d times (A %d, B %d)", i, n, ra[seq], rb[seq])
		}
		if i >= beforeBlackhole && i < beforeFailover && ra[seq] == 1 {
			late++
		}
	}
	if float64(late) < resent {
		t.Errorf("%d records exported during the blackhole reached A after its return, fewer than the %v its exporter kept", late, resent)
	}
	if late+int(moved) != toA {
		t.Errorf("of the %d records A owned during the blackhole, %d reached A late and %v were moved to B", toA, late, moved)
	}
	t.Logf("%d records, each arrived once; %d of those handed to A during the blackhole reached A after it returned", len(recs), late)
}

func counterWithLabel(t *testing.T, reg *prometheus.Registry, name, label, val string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabel(m, label, val) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, name, val string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == val {
			return true
		}
	}
	return false
}
