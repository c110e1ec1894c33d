package ipfixexport

import "time"

// outageLogInterval is the least time between two outages logged at the
// default level: a collector that accepts and at once drops the exporter
// would otherwise flap between the two states in the log.
const outageLogInterval = time.Minute

// reachability follows whether the collector can be reached, so that an
// unreachable collector or a failed TLS verification is logged at the
// default level when it starts and when it ends, not at every retry (each
// attempt is counted in flowlens_ipfix_exporter_connection_errors_total).
// It is owned by the Run goroutine.
type reachability struct {
	downSince time.Time // zero while reachable
	failures  int
	logged    bool // this outage's start was logged at the default level
	lastLog   time.Time
}

// failed records a failed connection attempt and reports whether to log
// it at the default level.
func (r *reachability) failed(now time.Time) bool {
	if r.downSince.IsZero() {
		r.downSince, r.failures, r.logged = now, 0, false
	}
	r.failures++
	if r.failures == 1 && (r.lastLog.IsZero() || now.Sub(r.lastLog) >= outageLogInterval) {
		r.logged, r.lastLog = true, now
		return true
	}
	return false
}

// connected records a connection; when it ends an outage whose start was
// logged, it returns the failed attempts and the outage's length, and
// logIt.
func (r *reachability) connected(now time.Time) (failures int, downFor time.Duration, logIt bool) {
	if r.downSince.IsZero() {
		return 0, 0, false
	}
	failures, downFor, logIt = r.failures, now.Sub(r.downSince), r.logged
	r.downSince, r.failures, r.logged = time.Time{}, 0, false
	return failures, downFor, logIt
}
