package conntrack

import "github.com/flowlens/flowlens/pkg/flow"

// statusDying is IPS_DYING (include/uapi/linux/netfilter/nf_conntrack_common.h):
// the entry is being torn down and only waits for its DESTROY event.
const statusDying = 1 << 9

// Finished reports whether an entry describes a connection that is over
// although the kernel still holds it. A TCP entry lingers in TIME_WAIT for
// two minutes (nf_conntrack_tcp_timeout_time_wait) after both FINs; waiting
// for its DESTROY would report every closed connection that late, so the
// FIN handshake, seen through an UPDATE event or a dump, ends it.
func Finished(c *flow.Conn) bool {
	if c.Status&statusDying != 0 {
		return true
	}
	if c.Tuple.Proto != flow.ProtoTCP {
		return false
	}
	switch c.TCPState {
	case flow.TCPStateTimeWait, flow.TCPStateClose:
		return true
	}
	return false
}
