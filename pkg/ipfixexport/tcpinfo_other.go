//go:build !linux

package ipfixexport

import "net"

// tcpAcked is unavailable here: the exporter falls back to at-most-once
// delivery of what was written before a connection failed.
func tcpAcked(*net.TCPConn) (acked uint64, closed bool, ok bool) { return 0, false, false }
