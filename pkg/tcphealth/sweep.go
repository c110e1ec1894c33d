package tcphealth

import (
	"time"

	"k8s.io/klog/v2"
)

// run copies the programs' counters into the metrics and sweeps, until
// Close.
func (t *Tracker) run() {
	defer close(t.done)
	sweep := time.NewTicker(t.cfg.SweepInterval)
	defer sweep.Stop()
	stats := time.NewTicker(statsInterval)
	defer stats.Stop()
	var orphans map[bpfSockKey]struct{}
	for {
		select {
		case <-t.stop:
			return
		case <-stats.C:
			t.refreshStats()
		case <-sweep.C:
			orphans = t.sweep(orphans)
			t.refreshStats()
		}
	}
}

// refreshStats adds what the programs counted since the previous call to
// the metrics.
func (t *Tracker) refreshStats() {
	for slot := range uint32(statMax) {
		v, err := t.sweepTable.stat(slot)
		if err != nil {
			t.metrics.mapErrors.Inc()
			continue
		}
		if v > t.lastStats[slot] {
			t.metrics.kernel[slot].Add(float64(v - t.lastStats[slot]))
			t.lastStats[slot] = v
		}
	}
}

// sweep forgets connections not enriched for StaleAfter, deletes closed
// socket entries no connection took within ClosedGrace, estimates the
// LRU's evictions, and deletes RTT min/max entries whose socket entry was
// missing at this sweep and the previous one (prevOrphans; the ones
// missing now are returned). The tracker's lock is held for at most
// sweepBatch entries at a time.
func (t *Tracker) sweep(prevOrphans map[bpfSockKey]struct{}) map[bpfSockKey]struct{} {
	now := t.now()
	t.forgetStale(now)

	created, err := t.sweepTable.stat(statCreated)
	if err != nil {
		t.metrics.mapErrors.Inc()
	}
	var live uint64
	present := make(map[bpfSockKey]struct{})
	// closed entries as the walk saw them: the kernel may replace one
	// with a new connection's before it is deleted.
	type seen struct {
		key  bpfSockKey
		born uint64
	}
	var closed []seen
	grace := uint64(t.cfg.ClosedGrace.Nanoseconds())
	walkErr := t.sweepTable.each(func(k *bpfSockKey, v *bpfSockStats) {
		live++
		present[*k] = struct{}{}
		if v.ClosedNs != 0 && uint64(now) > v.ClosedNs && uint64(now)-v.ClosedNs > grace {
			closed = append(closed, seen{key: *k, born: v.BornNs})
		}
	})
	if walkErr != nil {
		t.metrics.mapErrors.Inc()
		klog.ErrorS(walkErr, "TCP health sweep could not walk the socket map")
	}
	swept := 0
	for i := 0; i < len(closed); i += sweepBatch {
		t.mu.Lock()
		for _, c := range closed[i:min(i+sweepBatch, len(closed))] {
			if t.owned[c.key] > 0 {
				continue // a connection took it: its end deletes it
			}
			// Only the closed entry the walk saw: one a new
			// connection's socket put on the tuple since is live.
			deleted, err := t.sweepTable.deleteClosed(&c.key, c.born)
			if err != nil {
				t.metrics.mapErrors.Inc()
				klog.V(2).ErrorS(err, "TCP health sweep could not delete a closed socket entry", "tuple", keyTuple(&c.key))
				continue
			}
			if deleted {
				t.deleted++
				swept++
				t.metrics.deleted.WithLabelValues(delSwept).Inc()
			}
		}
		t.mu.Unlock()
	}
	t.mu.Lock()
	deleted := t.deleted
	t.mu.Unlock()
	// created was read before the walk and deleted after it, so entries
	// created or deleted during the walk only lower the estimate.
	if err == nil && walkErr == nil && created > deleted+live {
		if est := created - deleted - live; est > t.lastEvictEst {
			t.metrics.evicted.Add(float64(est - t.lastEvictEst))
			t.lastEvictEst = est
		}
	}

	orphans := make(map[bpfSockKey]struct{})
	if walkErr == nil {
		if err := t.sweepTable.eachMinMax(func(k *bpfSockKey) {
			if _, ok := present[*k]; !ok {
				orphans[*k] = struct{}{}
			}
		}); err != nil {
			t.metrics.mapErrors.Inc()
		}
		for k := range orphans {
			if _, ok := prevOrphans[k]; !ok {
				continue
			}
			if err := t.sweepTable.deleteMinMax(&k); err != nil {
				t.metrics.mapErrors.Inc()
			}
			delete(orphans, k)
		}
	}
	if swept > 0 {
		klog.V(4).InfoS("TCP health sweep", "sweptClosed", swept, "entries", live)
	}
	return orphans
}

// forgetStale forgets the connections not enriched for StaleAfter, with
// their entries, in batches.
func (t *Tracker) forgetStale(now int64) {
	cutoff := now - t.cfg.StaleAfter.Nanoseconds()
	for {
		t.mu.Lock()
		n := 0
		for ; n < sweepBatch; n++ {
			e := t.order.Front()
			if e == nil || e.Value.(*connState).lastUsed > cutoff {
				break
			}
			t.forget(e.Value.(*connState), delForgotten, false)
			t.metrics.forgotten.WithLabelValues(forgetStale).Inc()
		}
		t.mu.Unlock()
		if n < sweepBatch {
			return
		}
	}
}
