package ipfixexport

import (
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// What an agent that shards its records over several collectors (one
// Exporter each) needs to fail over from one that went away.

// DownSince returns when the exporter lost its connection, or, if it never
// had one, when it was created; the zero time while it is connected. Over
// UDP a connection is "up" from the first dial on (nothing is acknowledged),
// so only TCP and TLS collectors are ever seen down for long.
func (e *Exporter) DownSince() time.Time {
	ns := e.downSince.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// TakeBuffered removes records waiting in the buffer, oldest first, and
// appends them to dst, up to cap(dst)-len(dst) of them (call it again for
// more: fewer than asked for means the buffer is empty). Records taken are
// no longer this exporter's: they are neither sent nor counted by it, so
// exporting them elsewhere cannot duplicate them. Records already encoded
// into messages (written to a connection that failed before the collector
// acknowledged them, or a partly filled message) stay: they go out when
// the collector is back.
func (e *Exporter) TakeBuffered(dst []flow.Record) []flow.Record {
	e.mu.Lock()
	defer e.mu.Unlock()
	for e.buf.n > 0 && len(dst) < cap(dst) {
		var r flow.Record
		e.buf.peek(&r, true)
		dst = append(dst, r)
		e.buf.pop()
		e.stalledSince = 0
	}
	return dst
}

// UnsentAtStop is how many records Run dropped (and counted as shutdown)
// when it returned; 0 before. It lets an owner that retires the exporter,
// and its metrics, keep that count.
func (e *Exporter) UnsentAtStop() int { return int(e.unsentAtStop.Load()) }
