package bpfcounters

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
	"unsafe"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
)

// fromRing marks a key of this round that came from the ring (or a full
// walk) rather than only from the previous round's re-read list.
const fromRing = ^uint64(0)

type rereadKey struct {
	key     bpfFlowKey
	packets uint64
}

type changed struct {
	view flow.Tuple
	fin  bool
}

// The ring record is decoded by copying its bytes over a key: the layouts
// must agree.
var _ [keySize - unsafe.Sizeof(bpfFlowKey{})]struct{}
var _ [unsafe.Sizeof(bpfFlowKey{}) - keySize]struct{}

// ReadChanged runs one read round and calls fn once per distinct view
// (5-tuple as it appeared on the wire at one hook) whose counters changed
// since the previous round. fin is true when the view's TCP flags include
// FIN or RST. fn runs after the round, without the round's locks held, so
// it may call Fill. A view may be reported one round late (see the
// package comment), never lost.
//
// A view of a connection whose source was NATed on this node appears as
// the translated tuple; connstore's LookupConn indexes that form too.
//
// Until the next round, Fill and Born answer from the values this round
// and the previous one read (see cachedTable): the caller's Fill of a
// connection whose views just changed, or changed a round ago, costs no
// further lookup.
func (c *Counters) ReadChanged(fn func(view flow.Tuple, fin bool)) error {
	c.readMu.Lock()
	if c.quiet() {
		c.readMu.Unlock()
		return nil
	}
	out, err := c.readRound()
	c.fillMu.Lock()
	c.cache.prev, c.cache.vals = c.cache.vals, c.cache.prev
	clear(c.cache.vals)
	for i := range c.roundVals {
		c.cache.vals[c.roundVals[i].key] = c.roundVals[i].val
	}
	c.fillMu.Unlock()
	c.readMu.Unlock()
	for i := range out {
		fn(out[i].view, out[i].fin)
	}
	return err
}

// fullRoundEvery bounds how long quiet rounds are skipped: the program's
// statistics (parse failures, map full...) reach the metrics at least this
// often.
const fullRoundEvery = time.Second

// quiet reports a round that would find nothing: the ring is empty and no
// view waits to be read again. The program notifies the ring the first
// time a view moves in an epoch, and a view read in this epoch's notified
// state is on the re-read list, so nothing moved since the last round;
// lost-key records the statistics counted and the ring did not deliver
// yet are looked for by a full round.
// The round is skipped (no epoch bump, no statistics read, the cache of
// values stays valid), except once per fullRoundEvery. A full ring is
// never empty: the overflow that it counts is seen by the next full round.
func (c *Counters) quiet() bool {
	if c.ring == nil || c.ring.AvailableBytes() != 0 || len(c.reread) != 0 ||
		c.lostDrained < c.lastSt[statLostRecords] { // the next round checks they came
		return false
	}
	now := time.Now()
	if now.Sub(c.fullRoundAt) >= fullRoundEvery {
		return false
	}
	c.metrics.quietRounds.Inc()
	return true
}

func (c *Counters) readRound() ([]changed, error) {
	if c.ring == nil {
		return nil, errors.New("read flow counters: closed")
	}
	c.fullRoundAt = time.Now()
	c.epoch++
	if err := c.objs.Epoch.Put(uint32(0), c.epoch); err != nil {
		c.metrics.readErrors.Inc()
		return nil, fmt.Errorf("set epoch %d: %w", c.epoch, err)
	}
	c.bumps[2], c.bumps[1], c.bumps[0] = c.bumps[1], c.bumps[0], uint64(monoNow())
	c.setClockOffset()

	clear(c.seen)
	clear(c.ended)
	c.keys = c.keys[:0]
	c.roundVals = c.roundVals[:0]
	c.out = c.out[:0]
	clear(c.outIdx)
	for _, r := range c.reread {
		if _, ok := c.seen[r.key]; !ok {
			c.seen[r.key] = r.packets
			c.keys = append(c.keys, r.key)
		}
	}
	c.reread = c.reread[:0]

	lost, err := c.drain()
	if err != nil {
		c.metrics.readErrors.Inc()
		return nil, err
	}
	c.lostDrained += lost
	// The program counts a lost-key record before writing it, so one
	// counted by the previous round's readStats is in the ring by now
	// unless the ring dropped it; one counted since may be in flight.
	sentBefore := c.lastSt[statLostRecords]
	ringFull, err := c.readStats()
	if err != nil {
		c.metrics.readErrors.Inc()
		return nil, err
	}
	if c.lostDrained < sentBefore {
		// Some lost keys' records were dropped: the loss cannot be pinned
		// on keys, so every connection counted before now is suspect.
		c.metrics.unattributed.Inc()
		c.mu.Lock()
		c.lossAll = time.Now().UnixNano()
		c.mu.Unlock()
		klog.InfoS("eBPF flow map full: losses not attributable to keys, connections counted before now fall back to conntrack counters", "missingRecords", sentBefore-c.lostDrained)
		c.lostDrained = sentBefore
	}
	if ringFull > 0 {
		if err := c.walk(); err != nil {
			c.metrics.readErrors.Inc()
			return nil, err
		}
	}

	// The receiver-side views of the ring are reported as they are; the
	// others are looked up, all at once where the table can.
	c.lookKeys = c.lookKeys[:0]
	for i := range c.keys {
		k := &c.keys[i]
		if k.Hook == hookToPod && c.seen[*k] == fromRing {
			// A receiver-side view is only read when its connection has
			// no sender-side view in that direction (a sender outside
			// this node), and the caller's Fill does that (pick). Between
			// two local pods this saves half the round's lookups. Its
			// ring record says whether a FIN or RST joined it.
			_, fin := c.ended[*k]
			c.report(viewOf(k), fin)
			continue
		}
		c.lookKeys = append(c.lookKeys, *k)
	}
	n := len(c.lookKeys)
	c.lookVals = slices.Grow(c.lookVals[:0], n)[:n]
	c.lookFound = slices.Grow(c.lookFound[:0], n)[:n]
	if err := lookupKeys(c.table, c.lookKeys, c.lookVals, c.lookFound); err != nil {
		c.metrics.readErrors.Inc()
		return nil, err
	}
	for i := range c.lookKeys {
		if !c.lookFound[i] {
			continue // deleted since (Forget, Sweep)
		}
		k, v := &c.lookKeys[i], &c.lookVals[i]
		c.roundVals = append(c.roundVals, keyVal{*k, *v})
		if v.NotifiedEpoch == c.epoch {
			// Notified in this epoch already: a packet after this lookup
			// would not notify again, so look again next round.
			c.reread = append(c.reread, rereadKey{*k, v.Packets})
		}
		if prev := c.seen[*k]; prev != fromRing && prev == v.Packets {
			continue // only re-read, and nothing new
		}
		c.report(viewOf(k), v.TcpFlags&(tcpFIN|tcpRST) != 0)
	}
	c.metrics.readKeys.Add(float64(len(c.out)))
	return c.out, nil
}

// keysLooker is a table that looks many keys up in one go.
type keysLooker interface {
	lookupKeys(ks []bpfFlowKey, vs []bpfFlowVal, found []bool) error
}

// lookupKeys sets vs[i] and found[i] to ks[i]'s entry in t.
func lookupKeys(t table, ks []bpfFlowKey, vs []bpfFlowVal, found []bool) error {
	if kl, ok := t.(keysLooker); ok {
		return kl.lookupKeys(ks, vs, found)
	}
	return lookupEach(t, ks, vs, found)
}

// lookupEach is lookupKeys one lookup at a time.
func lookupEach(t table, ks []bpfFlowKey, vs []bpfFlowVal, found []bool) error {
	for i := range ks {
		ok, err := t.lookup(&ks[i], &vs[i])
		if err != nil {
			return fmt.Errorf("look up flow %s: %w", viewOf(&ks[i]), err)
		}
		found[i] = ok
	}
	return nil
}

// report adds a changed view to the round's result. The same tuple at
// both hooks (two pods of this node talking without NAT) is one view for
// the caller.
func (c *Counters) report(view flow.Tuple, fin bool) {
	if i, ok := c.outIdx[view]; ok {
		c.out[i].fin = c.out[i].fin || fin
		return
	}
	c.outIdx[view] = len(c.out)
	c.out = append(c.out, changed{view, fin})
}

func (c *Counters) addKey(k *bpfFlowKey) {
	if prev, ok := c.seen[*k]; ok {
		if prev != fromRing {
			c.seen[*k] = fromRing
		}
		return
	}
	c.seen[*k] = fromRing
	c.keys = append(c.keys, *k)
}

// drain reads every record the ring holds now; it returns how many lost
// keys it was told about.
func (c *Counters) drain() (lost uint64, err error) {
	for {
		err := c.ring.ReadInto(&c.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return lost, nil
		}
		if err != nil {
			return lost, fmt.Errorf("read changed-keys ring: %w", err)
		}
		raw := c.rec.RawSample
		if len(raw) < recSize {
			c.metrics.readErrors.Inc()
			continue
		}
		var k bpfFlowKey
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&k)), keySize), raw[:keySize])
		switch binary.NativeEndian.Uint32(raw[keySize:]) {
		case recLost:
			lost++
			c.markLossy(&k)
			continue
		case recFinRst:
			c.ended[k] = struct{}{}
		}
		c.addKey(&k)
	}
}

func (c *Counters) markLossy(k *bpfFlowKey) {
	c.metrics.lostKeys.Inc()
	now := time.Now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.lossy[*k]; !ok && len(c.lossy) >= maxLossyKeys {
		c.lossAll = now
		return
	}
	c.lossy[*k] = now
	c.metrics.lossyKeys.Set(float64(len(c.lossy)))
}

// readStats adds the program's per-CPU counters to the metrics and
// returns the increase of ring-full since the last round.
func (c *Counters) readStats() (ringFull uint64, err error) {
	for slot := uint32(0); slot < statMax; slot++ {
		if err := c.objs.Stats.Lookup(slot, c.percpu); err != nil {
			return 0, fmt.Errorf("read stats slot %d: %w", slot, err)
		}
		var sum uint64
		for _, v := range c.percpu {
			sum += v
		}
		d := sum - c.lastSt[slot]
		c.lastSt[slot] = sum
		c.metrics.kernel[slot].Add(float64(d))
		if slot == statRingFull {
			ringFull = d
		}
	}
	return ringFull, nil
}

// walk adds every entry counted since two epoch bumps ago: the ring
// dropped notifications, so the changed set is rebuilt from the map.
func (c *Counters) walk() error {
	c.metrics.fullWalks.Inc()
	since := c.bumps[2]
	var k bpfFlowKey
	var v bpfFlowVal
	it := c.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		if v.LastNs >= since {
			c.addKey(&k)
			if v.TcpFlags&(tcpFIN|tcpRST) != 0 {
				c.ended[k] = struct{}{}
			}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("walk flow map: %w", err)
	}
	klog.V(2).InfoS("Walked the whole flow map after ring overflow", "changed", len(c.keys))
	return nil
}
