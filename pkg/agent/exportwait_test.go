package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixexport"
)

// stuckSink refuses every record until release, and tells a bound it
// breaks (a sink with a bug, or one that does not tell).
type stuckSink struct {
	mu       sync.Mutex
	bound    time.Duration
	offers   int
	released bool
	taken    []flow.Record
}

func (s *stuckSink) Export(r *flow.Record) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offers++
	if !s.released {
		return false
	}
	s.taken = append(s.taken, *r)
	return true
}

type boundedStuckSink struct{ *stuckSink }

func (s boundedStuckSink) RefusalBound() time.Duration { return s.bound }

func newWaitLoop(t *testing.T, sink Sink, reg prometheus.Registerer) *Loop {
	t.Helper()
	l, err := NewLoop(LoopConfig{Source: newFakeSource(), Sink: sink, PollInterval: time.Second, TickInterval: time.Second}, reg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// A record the store cannot keep, refused by a sink that breaks its bound:
// the loop gives up after the sink's bound plus exportWaitMargin, counts
// the record as dropped and goes on (it would otherwise stop applying
// events, and never finish a shutdown).
func TestExportWaitingDropsAndCountsAfterTheSinksBound(t *testing.T) {
	for _, tc := range []struct {
		name string
		sink func(*stuckSink) Sink
		want time.Duration
	}{
		{"bound told", func(s *stuckSink) Sink { return boundedStuckSink{s} }, 200*time.Millisecond + exportWaitMargin},
		{"through antrea halves", func(s *stuckSink) Sink {
			h, err := newAntreaHalves("node-a", boundedStuckSink{s}, nil)
			if err != nil {
				t.Fatal(err)
			}
			return h
		}, 200*time.Millisecond + exportWaitMargin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ss := &stuckSink{bound: 200 * time.Millisecond}
			reg := prometheus.NewRegistry()
			l := newWaitLoop(t, tc.sink(ss), reg)
			if got := refusalBound(l.cfg.Sink); got != tc.want {
				t.Fatalf("refusalBound = %v, want %v", got, tc.want)
			}
			r := flow.Record{Conn: flow.Conn{Tuple: waitTuple(1)}, EndReason: flow.EndOfFlow}
			// A pod of this node to a pod of another: antrea halves pass it on.
			r.Source.PodName, r.Source.NodeName = "a", "node-a"
			r.Destination.PodName, r.Destination.NodeName = "b", "node-b"
			start := time.Now()
			l.exportWaiting(&r)
			waited := time.Since(start)
			if waited < tc.want || waited > tc.want+time.Second {
				t.Errorf("exportWaiting returned after %v, want about %v", waited, tc.want)
			}
			if got := value(l.wait.dropped.WithLabelValues(dropSinkRefused)); got != 1 {
				t.Errorf("flowlens_agent_records_dropped_total{reason=sink_refused} = %v, want 1", got)
			}
			if got := gatheredValue(t, reg, "flowlens_agent_records_dropped_total"); got != 1 {
				t.Errorf("registered flowlens_agent_records_dropped_total = %v, want 1", got)
			}
			ss.mu.Lock()
			offers := ss.offers
			ss.mu.Unlock()
			if offers < 10 {
				t.Errorf("the sink was offered the record %d times: the loop did not retry", offers)
			}
		})
	}
}

// A sink that takes the record before the bound: nothing is dropped.
func TestExportWaitingTakesARecordTheSinkTakesLate(t *testing.T) {
	ss := &stuckSink{bound: 2 * time.Second}
	l := newWaitLoop(t, boundedStuckSink{ss}, nil)
	go func() {
		time.Sleep(300 * time.Millisecond)
		ss.mu.Lock()
		ss.released = true
		ss.mu.Unlock()
	}()
	r := flow.Record{Conn: flow.Conn{Tuple: waitTuple(2)}, EndReason: flow.EndOfFlow}
	l.exportWaiting(&r)
	if got := value(l.wait.dropped.WithLabelValues(dropSinkRefused)); got != 0 {
		t.Errorf("dropped = %v, want 0", got)
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.taken) != 1 || ss.taken[0].Tuple != waitTuple(2) {
		t.Errorf("the sink took %v, want the record", ss.taken)
	}
}

// A sink that does not tell gets the default bound; a sharded sink tells
// the largest of its replicas'.
func TestRefusalBoundDefaults(t *testing.T) {
	if got := refusalBound(&stuckSink{}); got != defaultRefusalBound+exportWaitMargin {
		t.Errorf("refusalBound of a sink that does not tell = %v, want %v", got, defaultRefusalBound+exportWaitMargin)
	}
	if got := refusalBound(boundedStuckSink{&stuckSink{}}); got != defaultRefusalBound+exportWaitMargin {
		t.Errorf("refusalBound of a sink telling 0 = %v, want the default", got)
	}
}

func waitTuple(port uint16) flow.Tuple {
	return flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), port, 80, 6)
}

// A sharded sink with one replica whose process hangs (its kernel accepts
// every reconnect, nothing is read) and one healthy: the hung replica's
// exporter refuses each record for at most its BackpressureTimeout, then
// drops and counts, so no record waits longer through the sharded sink
// either, and the healthy replica loses nothing. The sink tells the bound
// the loop waits for.
func TestShardedSinkRefusalIsBoundedWithAHungReplica(t *testing.T) {
	healthy := newTestCollector(t)
	hung := hungListener(t)
	const backpressure, writeTimeout = 400 * time.Millisecond, 300 * time.Millisecond
	reg := prometheus.NewRegistry()
	s, err := NewShardedSink(ShardedSinkConfig{
		Collectors:    []string{healthy.addr, hung},
		FailoverAfter: time.Hour, // a hung collector is never seen down: the bound must not rely on failover
		NewExporter: func(address string, reg prometheus.Registerer) (ReplicaExporter, error) {
			return ipfixexport.New(ipfixexport.Config{
				Address: address, Transport: ipfixexport.TCP, BufferRecords: 50,
				FlushInterval: 5 * time.Millisecond, WriteTimeout: writeTimeout, DrainTimeout: 50 * time.Millisecond,
				BackpressureTimeout: backpressure, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
			}, reg)
		},
	}, reg)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.RefusalBound(); got != backpressure+writeTimeout {
		t.Fatalf("RefusalBound = %v, want %v", got, backpressure+writeTimeout)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	rnd := rand.New(rand.NewPCG(11, 11))
	deadline := time.Now().Add(4 * time.Second)
	longest := time.Duration(0)
	n := 0
	for ; time.Now().Before(deadline); n++ {
		r := shardRecord(rnd, uint64(n))
		start := time.Now()
		for !s.Export(&r) {
			if d := time.Since(start); d > backpressure+writeTimeout+time.Second {
				t.Fatalf("record %d refused for %v through the sharded sink", n, d)
			}
			time.Sleep(time.Millisecond)
		}
		longest = max(longest, time.Since(start))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	hungDrops := labelledCounter(t, reg, "flowlens_ipfix_exporter_records_dropped_total", hung, "buffer_full")
	if hungDrops == 0 {
		t.Error("the hung replica dropped nothing: the test never filled its buffer")
	}
	if v := labelledCounter(t, reg, "flowlens_ipfix_exporter_records_dropped_total", healthy.addr, "buffer_full"); v != 0 {
		t.Errorf("the healthy replica dropped %v records", v)
	}
	t.Logf("%d records offered in 4s; longest wait for one %v; hung replica dropped %v (buffer_full)", n, longest.Round(time.Millisecond), hungDrops)
}

// hungListener completes every connection and reads nothing.
func hungListener(t *testing.T) string {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	return l.Addr().String()
}

// labelledCounter reads name{collector=collector, reason=reason} from reg.
func labelledCounter(t *testing.T, reg *prometheus.Registry, name, collector, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["collector"] == collector && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("%s{collector=%q,reason=%q} not registered", name, collector, reason)
	return 0
}
