package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/shard"
)

// fakeReplica is a replica's exporter: while up, Export "sends" at once;
// while down, records wait in its buffer, which TakeBuffered empties.
type fakeReplica struct {
	id string

	mu      sync.Mutex
	down    time.Time
	sent    []flow.Record
	buf     []flow.Record
	encoded int // records "already in messages": never taken, dropped at stop if down
	runs    int
	stopped bool
	unsent  int
	// refuse makes the next refuse Exports refuse (a full buffer).
	refuse, refused int
}

func (f *fakeReplica) Accepts(*flow.Record) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stopped || f.refuse == 0
}

func (f *fakeReplica) Export(r *flow.Record) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		f.unsent++ // dropped and counted, as the exporter does
		return true
	}
	if f.refuse > 0 {
		f.refuse--
		f.refused++
		return false
	}
	if f.down.IsZero() {
		f.sent = append(f.sent, *r)
	} else {
		f.buf = append(f.buf, *r)
	}
	return true
}

func (f *fakeReplica) Run(ctx context.Context) error {
	f.mu.Lock()
	f.runs++
	f.mu.Unlock()
	<-ctx.Done()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	if f.down.IsZero() {
		f.sent = append(f.sent, f.buf...)
	} else {
		f.unsent = len(f.buf) + f.encoded
	}
	f.buf = nil
	return nil
}

func (f *fakeReplica) DownSince() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down
}

func (f *fakeReplica) TakeBuffered(dst []flow.Record) []flow.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := min(len(f.buf), cap(dst)-len(dst))
	dst = append(dst, f.buf[:n]...)
	f.buf = f.buf[n:]
	return dst
}

func (f *fakeReplica) UnsentAtStop() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.unsent
}

func (f *fakeReplica) setDown(at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = at
}

// connect makes the replica reachable; what it buffered is sent.
func (f *fakeReplica) connect() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = time.Time{}
	f.sent = append(f.sent, f.buf...)
	f.buf = nil
}

// records returns what the replica sent and what it holds.
func (f *fakeReplica) records() (sent, buffered []flow.Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent), slices.Clone(f.buf)
}

func (f *fakeReplica) runCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.runs
}

// fakeReplicas builds the fake exporters of a sink and remembers them by id
// (a replica added again gets a new one, as a real sink builds a new
// exporter).
type fakeReplicas struct {
	mu   sync.Mutex
	byID map[string]*fakeReplica
	all  []*fakeReplica
	fail map[string]bool
}

func newFakeReplicas() *fakeReplicas {
	return &fakeReplicas{byID: map[string]*fakeReplica{}, fail: map[string]bool{}}
}

func (fs *fakeReplicas) new(address string, reg prometheus.Registerer) (ReplicaExporter, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.fail[address] {
		return nil, errors.New("refused by the test")
	}
	if reg != nil {
		// Like an exporter, register something, so that the label and the
		// unregistration on removal show.
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_test_exporter_up", Help: "test"})
		if err := reg.Register(g); err != nil {
			return nil, err
		}
	}
	f := &fakeReplica{id: address, down: t0} // like an exporter: down until it connects
	fs.byID[address] = f
	fs.all = append(fs.all, f)
	return f, nil
}

func (fs *fakeReplicas) get(id string) *fakeReplica {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.byID[id]
}

// sentByID maps every record's sequence number (Fwd.Packets) to the
// replicas that sent it, over every exporter ever built.
func (fs *fakeReplicas) sentByID() map[uint64][]string {
	fs.mu.Lock()
	all := slices.Clone(fs.all)
	fs.mu.Unlock()
	out := map[uint64][]string{}
	for _, f := range all {
		sent, _ := f.records()
		for _, r := range sent {
			out[r.Fwd.Packets] = append(out[r.Fwd.Packets], f.id)
		}
	}
	return out
}

const failAfter = 15 * time.Second

func newTestSink(t *testing.T, fs *fakeReplicas, reg prometheus.Registerer, mod func(*ShardedSinkConfig)) *ShardedSink {
	t.Helper()
	cfg := ShardedSinkConfig{
		Collectors:    []string{"10.0.0.1:4739", "10.0.0.2:4739", "10.0.0.3:4739"},
		FailoverAfter: failAfter,
		HoldRecords:   1000,
		NewExporter:   fs.new,
		Clock:         newFakeClock(t0),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := NewShardedSink(cfg, reg)
	if err != nil {
		t.Fatalf("NewShardedSink: %v", err)
	}
	return s
}

// connectAll makes every replica built so far reachable.
func (fs *fakeReplicas) connectAll() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, f := range fs.byID {
		f.down = time.Time{}
	}
}

// shardRecord is a record of a random connection, IPv4 or IPv6, carrying
// seq in Fwd.Packets so that tests can count each one.
func shardRecord(r *rand.Rand, seq uint64) flow.Record {
	var src, dst netip.Addr
	if r.IntN(2) == 0 {
		src = netip.AddrFrom4([4]byte{10, 244, byte(r.IntN(256)), byte(r.IntN(256))})
		dst = netip.AddrFrom4([4]byte{10, 245, byte(r.IntN(256)), byte(r.IntN(256))})
	} else {
		var a, b [16]byte
		a[0], b[0] = 0xfd, 0xfd
		for i := 8; i < 16; i++ {
			a[i], b[i] = byte(r.IntN(256)), byte(r.IntN(256))
		}
		src, dst = netip.AddrFrom16(a), netip.AddrFrom16(b)
	}
	return flow.Record{Conn: flow.Conn{
		Tuple: flow.NewTuple(src, dst, uint16(1024+r.IntN(60000)), uint16(1+r.IntN(1024)), flow.ProtoTCP),
		Fwd:   flow.Counters{Packets: seq},
	}}
}

// Two agents (the list in different orders) route both halves of every
// connection, as the two nodes record it, to the same replica; every
// replica gets about a third.
func TestShardedSinkRoutesBothHalvesToTheSameReplica(t *testing.T) {
	fsA, fsB := newFakeReplicas(), newFakeReplicas()
	a := newTestSink(t, fsA, nil, nil)
	b := newTestSink(t, fsB, nil, func(c *ShardedSinkConfig) {
		c.Collectors = []string{"10.0.0.3:4739", "10.0.0.1:4739", "10.0.0.2:4739"}
	})
	rnd := rand.New(rand.NewPCG(1, 1))
	const n = 30000
	for i := range uint64(n) {
		r := shardRecord(rnd, i)
		if !a.Export(&r) {
			t.Fatalf("record %d dropped", i)
		}
		r.Tuple = r.Tuple.Reverse() // the other node's view
		if !b.Export(&r) {
			t.Fatalf("record %d dropped", i)
		}
	}
	gotA, gotB := fsA.bufferedByID(), fsB.bufferedByID()
	perReplica := map[string]int{}
	for i := range uint64(n) {
		if len(gotA[i]) != 1 || len(gotB[i]) != 1 {
			t.Fatalf("record %d went to %v on node A and %v on node B, want one replica each", i, gotA[i], gotB[i])
		}
		if gotA[i][0] != gotB[i][0] {
			t.Fatalf("record %d: node A sent it to %s, node B to %s", i, gotA[i][0], gotB[i][0])
		}
		perReplica[gotA[i][0]]++
	}
	for id, c := range perReplica {
		if c < n/3-n/30 || c > n/3+n/30 {
			t.Errorf("%s got %d of %d records, want about a third", id, c, n)
		}
	}
	if len(perReplica) != 3 {
		t.Errorf("records went to %d replicas", len(perReplica))
	}
}

// bufferedByID is sentByID for what waits in the buffers.
func (fs *fakeReplicas) bufferedByID() map[uint64][]string {
	fs.mu.Lock()
	all := slices.Clone(fs.all)
	fs.mu.Unlock()
	out := map[uint64][]string{}
	for _, f := range all {
		_, buf := f.records()
		for _, r := range buf {
			out[r.Fwd.Packets] = append(out[r.Fwd.Packets], f.id)
		}
	}
	return out
}

func TestFailoverMovesOnlyTheDeadReplicasShareAndBack(t *testing.T) {
	fs := newFakeReplicas()
	reg := prometheus.NewRegistry()
	s := newTestSink(t, fs, reg, nil)
	fs.connectAll()
	s.check(t0)
	ids := []string{"10.0.0.1:4739", "10.0.0.2:4739", "10.0.0.3:4739"}
	full, without2 := shard.NewRing(ids...), shard.NewRing(ids[0], ids[2])
	rnd := rand.New(rand.NewPCG(2, 2))
	recs := make([]flow.Record, 6000)
	for i := range recs {
		recs[i] = shardRecord(rnd, uint64(i))
	}
	export := func(from, to int) {
		for i := from; i < to; i++ {
			if !s.Export(&recs[i]) {
				t.Fatalf("record %d dropped", i)
			}
		}
	}
	owner := func(ring *shard.Ring, i int) string { return ring.OwnerID(shard.Key(recs[i].Tuple)) }

	export(0, 1000)
	// Replica 2 goes away: until failoverAfter its share waits in its buffer.
	dead := fs.get(ids[1])
	downAt := t0.Add(time.Minute)
	dead.setDown(downAt)
	export(1000, 2000)
	s.check(downAt.Add(failAfter - time.Millisecond))
	if _, buf := dead.records(); len(buf) == 0 {
		t.Fatal("nothing buffered for the unreachable replica before failoverAfter")
	}
	if v := value(s.m.ringSize); v != 3 {
		t.Fatalf("ring size %v before failoverAfter, want 3", v)
	}
	_, buffered := dead.records()
	s.check(downAt.Add(failAfter))
	if v := value(s.m.ringSize); v != 2 {
		t.Fatalf("ring size %v after failoverAfter, want 2", v)
	}
	if v := value(s.m.failovers); v != 1 {
		t.Errorf("failovers %v, want 1", v)
	}
	if v := value(s.m.moved); v != float64(len(buffered)) {
		t.Errorf("moved %v, want the %d buffered", v, len(buffered))
	}
	if _, buf := dead.records(); len(buf) != 0 {
		t.Errorf("%d records left in the dead replica's buffer", len(buf))
	}
	export(2000, 3000)

	// It comes back: its share returns.
	dead.connect()
	s.check(downAt.Add(failAfter + 5*time.Second))
	if v := value(s.m.ringSize); v != 3 {
		t.Fatalf("ring size %v after the return, want 3", v)
	}
	if v := value(s.m.returns); v != 1 {
		t.Errorf("returns %v, want 1", v)
	}
	export(3000, 4000)

	got := fs.sentByID()
	for i := range 4000 {
		if len(got[uint64(i)]) != 1 {
			t.Fatalf("record %d sent by %v, want exactly one replica", i, got[uint64(i)])
		}
		want := owner(full, i)
		if i >= 2000 && i < 3000 {
			want = owner(without2, i)
		}
		if i >= 1000 && i < 2000 && owner(full, i) == ids[1] {
			// Buffered for the dead replica, then moved to its new owner.
			want = owner(without2, i)
		}
		if got[uint64(i)][0] != want {
			t.Fatalf("record %d (phase %d) sent by %s, want %s", i, i/1000, got[uint64(i)][0], want)
		}
	}
	// Only the dead replica's share moved: everything the others owned
	// stayed with them in every phase (checked above), and the failover
	// phase gave replica 2 nothing.
	moved := 0
	for i := 2000; i < 3000; i++ {
		if owner(full, i) != owner(without2, i) {
			moved++
		}
	}
	if moved < 250 || moved > 420 {
		t.Errorf("%d of 1000 records changed replica during the failover, want about a third", moved)
	}
	// The per-replica counter counts what each replica took.
	var total float64
	for _, id := range ids {
		total += value(s.m.records.WithLabelValues(id))
	}
	if want := 4000 + value(s.m.moved); total != want {
		t.Errorf("flowlens_agent_collector_records_total sums to %v, want %v (every record once, moved ones again)", total, want)
	}
}

// With every replica unreachable there is nowhere better to send to:
// records wait in the buffer of the replica they belong to, for its return.
func TestAllReplicasDownKeepsRecordsWithTheirOwner(t *testing.T) {
	fs := newFakeReplicas()
	s := newTestSink(t, fs, nil, nil)
	s.check(t0.Add(failAfter)) // never connected: all out
	if v := value(s.m.ringSize); v != 0 {
		t.Fatalf("ring size %v, want 0", v)
	}
	rnd := rand.New(rand.NewPCG(3, 3))
	full := shard.NewRing("10.0.0.1:4739", "10.0.0.2:4739", "10.0.0.3:4739")
	for i := range uint64(300) {
		r := shardRecord(rnd, i)
		if !s.Export(&r) {
			t.Fatalf("record %d dropped", i)
		}
		if got, want := fs.bufferedByID()[i], full.OwnerID(shard.Key(r.Tuple)); len(got) != 1 || got[0] != want {
			t.Fatalf("record %d in %v, want %s", i, got, want)
		}
	}
	s.check(t0.Add(2 * failAfter))
	if v := value(s.m.moved); v != 0 {
		t.Errorf("%v records moved with no replica to move them to", v)
	}
	// The first to come back gets the others' buffers.
	back := fs.get("10.0.0.3:4739")
	back.connect()
	s.check(t0.Add(2*failAfter + time.Second))
	sent := fs.sentByID()
	if len(sent) != 300 {
		t.Errorf("%d of 300 records sent once one replica returned", len(sent))
	}
	for seq, by := range sent {
		if len(by) != 1 || by[0] != back.id {
			t.Fatalf("record %d sent by %v", seq, by)
		}
	}
}

// fakeResolver answers LookupHost with what the test set.
type fakeResolver struct {
	mu    sync.Mutex
	addrs []string
	err   error
	calls int
}

func (r *fakeResolver) set(err error, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addrs, r.err = addrs, err
}

func (r *fakeResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if host != "flowlens-aggregator.flowlens.svc" {
		return nil, fmt.Errorf("unexpected name %q", host)
	}
	return slices.Clone(r.addrs), r.err
}

func TestDNSReplicasFollowTheName(t *testing.T) {
	fs := newFakeReplicas()
	res := &fakeResolver{}
	reg := prometheus.NewRegistry()
	s := newTestSink(t, fs, reg, func(c *ShardedSinkConfig) {
		c.Collectors = nil
		c.CollectorDNS = "flowlens-aggregator.flowlens.svc:4739"
		c.ResolveInterval = 30 * time.Second
		c.Resolver = res
		c.HoldRecords = 100
	})
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(4, 4))
	var recs []flow.Record
	export := func(n int) {
		for range n {
			r := shardRecord(rnd, uint64(len(recs)))
			recs = append(recs, r)
			s.Export(&r)
		}
	}

	// Not resolvable yet: records are held, up to HoldRecords.
	res.set(errors.New("no such host"))
	s.resolve(ctx)
	export(120)
	if v := value(s.m.resolveErrors); v != 1 {
		t.Errorf("resolve errors %v, want 1", v)
	}
	if v := value(s.m.dropped.WithLabelValues(dropNoCollector)); v != 20 {
		t.Errorf("dropped no_collector %v, want the 20 beyond the hold buffer", v)
	}

	// Two replicas: the held records go to their owners.
	res.set(nil, "10.1.0.2", "10.1.0.1")
	s.resolve(ctx)
	ring2 := shard.NewRing("10.1.0.1:4739", "10.1.0.2:4739")
	got := fs.bufferedByID()
	if len(got) != 100 {
		t.Fatalf("%d held records routed, want 100", len(got))
	}
	for i := range 100 {
		if want := ring2.OwnerID(shard.Key(recs[i].Tuple)); len(got[uint64(i)]) != 1 || got[uint64(i)][0] != want {
			t.Fatalf("held record %d went to %v, want %s", i, got[uint64(i)], want)
		}
	}

	// A failed lookup, or an empty answer, keeps the replicas.
	res.set(errors.New("timeout"))
	s.resolve(ctx)
	res.set(nil)
	s.resolve(ctx)
	if v := value(s.m.resolveErrors); v != 3 {
		t.Errorf("resolve errors %v, want 3", v)
	}
	if v := value(s.m.replicas); v != 2 {
		t.Fatalf("%v replicas after failed lookups, want 2 kept", v)
	}

	// A third replica is added, 10.1.0.1 goes: its buffer moves to the
	// new owners, its metrics go; what 10.1.0.2 holds stays there.
	res.set(nil, "10.1.0.2", "10.1.0.3")
	s.resolve(ctx)
	ring23 := shard.NewRing("10.1.0.2:4739", "10.1.0.3:4739")
	got = fs.bufferedByID()
	movedTo3 := 0
	for i := range 100 {
		want := "10.1.0.2:4739"
		if ring2.OwnerID(shard.Key(recs[i].Tuple)) == "10.1.0.1:4739" {
			want = ring23.OwnerID(shard.Key(recs[i].Tuple))
		}
		if len(got[uint64(i)]) != 1 || got[uint64(i)][0] != want {
			t.Fatalf("record %d is in %v after the change, want %s", i, got[uint64(i)], want)
		}
		if want == "10.1.0.3:4739" {
			movedTo3++
		}
	}
	if movedTo3 == 0 {
		t.Error("no record of the removed replica went to the added one")
	}
	// New records follow the new ring.
	export(50)
	got = fs.bufferedByID()
	for i := 120; i < 170; i++ {
		if want := ring23.OwnerID(shard.Key(recs[i].Tuple)); len(got[uint64(i)]) != 1 || got[uint64(i)][0] != want {
			t.Fatalf("new record %d is in %v, want %s", i, got[uint64(i)], want)
		}
	}
	// The removed replica's exporter (and metrics) stay for the grace
	// period, in case the name names it again; then it is retired.
	if got, want := exporterLabels(t, reg), []string{"collector=10.1.0.1:4739", "collector=10.1.0.2:4739", "collector=10.1.0.3:4739"}; !slices.Equal(got, want) {
		t.Errorf("exporter metrics within the grace period labelled %v, want %v", got, want)
	}
	s.check(t0.Add(s.leaveGrace()))
	if got, want := exporterLabels(t, reg), []string{"collector=10.1.0.2:4739", "collector=10.1.0.3:4739"}; !slices.Equal(got, want) {
		t.Errorf("exporter metrics labelled %v, want %v", got, want)
	}
	if v := value(s.m.replicas); v != 2 {
		t.Errorf("replicas %v, want 2", v)
	}
}

func exporterLabels(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, f := range families {
		if f.GetName() != "flowlens_test_exporter_up" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
		}
	}
	slices.Sort(labels)
	return labels
}

// A replica the name stops naming while the sink runs is stopped once the
// grace period passed; what it could not send is counted; if it comes back
// later it gets a new exporter.
func TestRemovedReplicaIsStoppedAndCanComeBack(t *testing.T) {
	fs := newFakeReplicas()
	res := &fakeResolver{}
	res.set(nil, "10.1.0.1", "10.1.0.2")
	reg := prometheus.NewRegistry()
	s := newTestSink(t, fs, reg, func(c *ShardedSinkConfig) {
		c.Collectors = nil
		c.CollectorDNS = "flowlens-aggregator.flowlens.svc:4739"
		c.ResolveInterval = 200 * time.Millisecond
		c.FailoverAfter = 100 * time.Millisecond
		c.Resolver = res
		c.Clock = SystemClock{}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitUntil(t, "both replicas running", func() bool {
		a, b := fs.get("10.1.0.1:4739"), fs.get("10.1.0.2:4739")
		return a != nil && b != nil && a.runCount() == 1 && b.runCount() == 1
	})
	gone := fs.get("10.1.0.1:4739")
	gone.mu.Lock()
	gone.encoded = 7 // in messages: neither movable nor sendable
	gone.mu.Unlock()

	res.set(nil, "10.1.0.2")
	removed := time.Now()
	s.resolve(ctx)
	waitUntil(t, "the removed replica stopped and counted", func() bool {
		return value(s.m.dropped.WithLabelValues(dropRemoved)) == 7
	})
	if d := time.Since(removed); d < s.leaveGrace() {
		t.Errorf("retired %s after the name stopped naming it, before the %s grace period", d, s.leaveGrace())
	}
	res.set(nil, "10.1.0.1", "10.1.0.2")
	s.resolve(ctx)
	if again := fs.get("10.1.0.1:4739"); again == gone {
		t.Fatal("the returning replica reuses its stopped exporter")
	}
	waitUntil(t, "the new exporter running", func() bool { return fs.get("10.1.0.1:4739").runCount() == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// At shutdown what waits for an unreachable replica goes to a connected
// one rather than being dropped with its exporter.
func TestShutdownMovesRecordsOffUnreachableReplicas(t *testing.T) {
	fs := newFakeReplicas()
	s := newTestSink(t, fs, nil, func(c *ShardedSinkConfig) { c.Clock = SystemClock{} })
	fs.connectAll()
	dead := fs.get("10.0.0.1:4739")
	dead.setDown(time.Now()) // not for failoverAfter yet: still in the ring
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	rnd := rand.New(rand.NewPCG(5, 5))
	for i := range uint64(900) {
		r := shardRecord(rnd, i)
		s.Export(&r)
	}
	if _, buf := dead.records(); len(buf) == 0 {
		t.Fatal("nothing buffered for the unreachable replica")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	sent := fs.sentByID()
	if len(sent) != 900 {
		t.Errorf("%d of 900 records sent at shutdown", len(sent))
	}
	for seq, by := range sent {
		if len(by) != 1 || by[0] == dead.id {
			t.Fatalf("record %d sent by %v", seq, by)
		}
	}
	if dead.UnsentAtStop() != 0 {
		t.Errorf("the unreachable replica dropped %d", dead.UnsentAtStop())
	}
}

func TestShardedSinkConfigErrors(t *testing.T) {
	fs := newFakeReplicas()
	fs.fail["10.0.0.2:4739"] = true
	for _, tc := range []struct {
		name string
		mod  func(*ShardedSinkConfig)
		want string
	}{
		{"both", func(c *ShardedSinkConfig) { c.CollectorDNS = "x:1"; c.ResolveInterval = time.Second }, "exactly one"},
		{"neither", func(c *ShardedSinkConfig) { c.Collectors = nil }, "exactly one"},
		{"no failover", func(c *ShardedSinkConfig) { c.FailoverAfter = 0 }, "FailoverAfter"},
		{"twice", func(c *ShardedSinkConfig) { c.Collectors = []string{"a:1", "a:1"} }, "twice"},
		{"exporter fails", func(c *ShardedSinkConfig) {}, "10.0.0.2:4739"},
		{"dns without port", func(c *ShardedSinkConfig) {
			c.Collectors, c.CollectorDNS, c.ResolveInterval = nil, "name", time.Second
		}, "name:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ShardedSinkConfig{
				Collectors:    []string{"10.0.0.1:4739", "10.0.0.2:4739"},
				FailoverAfter: time.Second, NewExporter: fs.new,
			}
			tc.mod(&cfg)
			_, err := NewShardedSink(cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.GetCounter().GetValue()
	}
	return d.GetGauge().GetValue()
}

// Run resolves the name at start and again on every resolveInterval tick,
// and retries at the check's pace while the name has never resolved.
func TestRunResolvesEveryInterval(t *testing.T) {
	fs := newFakeReplicas()
	res := &fakeResolver{}
	res.set(errors.New("not yet"))
	clock := newFakeClock(t0)
	s := newTestSink(t, fs, nil, func(c *ShardedSinkConfig) {
		c.Collectors = nil
		c.CollectorDNS = "flowlens-aggregator.flowlens.svc:4739"
		c.ResolveInterval = 30 * time.Second
		c.Resolver = res
		c.Clock = clock
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var checkT, resolveT *fakeTicker
	for range 2 {
		select {
		case tk := <-clock.tickers:
			switch tk.d {
			case time.Second:
				checkT = tk
			case 30 * time.Second:
				resolveT = tk
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run made no tickers")
		}
	}
	if checkT == nil || resolveT == nil {
		t.Fatal("want a 1s check ticker and a 30s resolve ticker")
	}
	calls := func() int {
		res.mu.Lock()
		defer res.mu.Unlock()
		return res.calls
	}
	waitUntil(t, "the first lookup", func() bool { return calls() == 1 })
	// Never resolved: the check tick retries.
	res.set(nil, "10.1.0.1")
	checkT.c <- t0.Add(time.Second)
	waitUntil(t, "the retry to find the replica", func() bool { return s.known() == 1 })
	// Resolved: check ticks no longer look the name up, interval ticks do.
	n := calls()
	res.set(nil, "10.1.0.1", "10.1.0.2")
	checkT.c <- t0.Add(2 * time.Second)
	checkT.c <- t0.Add(3 * time.Second) // the previous tick was handled
	if calls() != n {
		t.Errorf("check ticks looked the name up %d times once it resolved", calls()-n)
	}
	resolveT.c <- t0.Add(30 * time.Second)
	waitUntil(t, "the interval's lookup", func() bool { return s.known() == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"10.1.0.1:4739", "10.1.0.2:4739"} {
		if f := fs.get(id); f == nil || f.runCount() != 1 {
			t.Errorf("exporter of %s not run once", id)
		}
	}
}

// A DNS name that resolves to more addresses than MaxReplicas gets the
// lowest ones, in sorted order, whatever order the answer came in, so every
// agent picks the same replicas; the others are ignored and counted.
func TestDNSUsesAtMostMaxReplicasTheSameOnEveryAgent(t *testing.T) {
	addrs := []string{"10.1.0.5", "10.1.0.3", "10.1.0.1", "10.1.0.4", "10.1.0.2", "10.1.0.3"}
	var members [][]string
	for _, answer := range [][]string{addrs, {"10.1.0.2", "10.1.0.4", "10.1.0.1", "10.1.0.5", "10.1.0.3"}} {
		fs := newFakeReplicas()
		res := &fakeResolver{}
		res.set(nil, answer...)
		s := newTestSink(t, fs, nil, func(c *ShardedSinkConfig) {
			c.Collectors = nil
			c.CollectorDNS = "flowlens-aggregator.flowlens.svc:4739"
			c.ResolveInterval = time.Hour
			c.Resolver = res
			c.MaxReplicas = 3
		})
		s.resolve(context.Background())
		if v := value(s.m.replicas); v != 3 {
			t.Errorf("answer %v: %v replicas, want 3", answer, v)
		}
		if v := value(s.m.ignored); v != 2 {
			t.Errorf("answer %v: %v addresses ignored, want 2", answer, v)
		}
		members = append(members, s.ring.Members())
		res.set(nil, "10.1.0.9")
		s.resolve(context.Background())
		if v := value(s.m.ignored); v != 0 {
			t.Errorf("%v addresses ignored after an answer within the limit", v)
		}
	}
	want := []string{"10.1.0.1:4739", "10.1.0.2:4739", "10.1.0.3:4739"}
	for _, m := range members {
		if !slices.Equal(m, want) {
			t.Errorf("replicas %v, want %v", m, want)
		}
	}

	fs := newFakeReplicas()
	_, err := NewShardedSink(ShardedSinkConfig{
		Collectors: []string{"a:1", "b:1", "c:1", "d:1"}, FailoverAfter: time.Second, NewExporter: fs.new, MaxReplicas: 3,
	}, nil)
	if err == nil || !strings.Contains(err.Error(), "at most 3") {
		t.Errorf("4 collectors, MaxReplicas 3: %v", err)
	}
}

// A replica the name stops naming and names again within the grace period
// (a restarted aggregator pod back under its address) keeps its exporter,
// so the messages it had already encoded for it are neither dropped nor
// counted as collector_removed; its share returns to it.
func TestReplicaNamedAgainWithinTheGracePeriodKeepsItsExporter(t *testing.T) {
	fs := newFakeReplicas()
	res := &fakeResolver{}
	res.set(nil, "10.1.0.1", "10.1.0.2")
	clock := newFakeClock(t0)
	s := newTestSink(t, fs, nil, func(c *ShardedSinkConfig) {
		c.Collectors = nil
		c.CollectorDNS = "flowlens-aggregator.flowlens.svc:4739"
		c.ResolveInterval = 30 * time.Second
		c.Resolver = res
		c.Clock = clock
	})
	ctx := context.Background()
	s.resolve(ctx)
	fs.connectAll()
	first := fs.get("10.1.0.1:4739")

	res.set(nil, "10.1.0.2")
	s.resolve(ctx)
	if m := s.ring.Members(); !slices.Equal(m, []string{"10.1.0.2:4739"}) {
		t.Fatalf("ring %v after the removal, want only 10.1.0.2:4739", m)
	}
	clock.set(t0.Add(s.leaveGrace() - time.Second))
	s.check(clock.Now())
	res.set(nil, "10.1.0.1", "10.1.0.2")
	s.resolve(ctx)
	if again := fs.get("10.1.0.1:4739"); again != first {
		t.Fatal("the replica named again within the grace period got a new exporter: what the old one encoded is lost")
	}
	s.check(clock.Now().Add(time.Hour))
	if m := s.ring.Members(); !slices.Equal(m, []string{"10.1.0.1:4739", "10.1.0.2:4739"}) {
		t.Errorf("ring %v, want both replicas back", m)
	}
	if v := value(s.m.dropped.WithLabelValues(dropRemoved)); v != 0 {
		t.Errorf("%v records counted as collector_removed", v)
	}
	if v := value(s.m.replicas); v != 2 {
		t.Errorf("%v replicas, want 2", v)
	}

	// Not named again within the grace period: retired.
	res.set(nil, "10.1.0.2")
	clock.set(t0.Add(2 * time.Hour))
	s.resolve(ctx)
	s.check(clock.Now().Add(s.leaveGrace() - time.Millisecond))
	if len(s.leaving) != 1 {
		t.Fatalf("%d replicas leaving before the grace period ended, want 1", len(s.leaving))
	}
	s.check(clock.Now().Add(s.leaveGrace()))
	if len(s.leaving) != 0 {
		t.Fatalf("%d replicas leaving after the grace period, want 0", len(s.leaving))
	}
	res.set(nil, "10.1.0.1", "10.1.0.2")
	s.resolve(ctx)
	if again := fs.get("10.1.0.1:4739"); again == first {
		t.Error("a replica named again after the grace period reuses its retired exporter")
	}
}
