//go:build !linux

package ipfixexport

import (
	"errors"
	"net"
	"syscall"
	"time"
)

// tcpAcked is unavailable here: the exporter falls back to at-most-once
// delivery of what was written before a connection failed.
func tcpAcked(*net.TCPConn) (acked uint64, closed bool, ok bool) { return 0, false, false }

// userTimeoutControl does nothing here: a collector whose host vanished is
// noticed only once a write stalls for WriteTimeout.
func userTimeoutControl(time.Duration) func(network, address string, rc syscall.RawConn) error {
	return nil
}

func tcpUserTimeout(*net.TCPConn) (time.Duration, error) {
	return 0, errors.New("TCP_USER_TIMEOUT is Linux only")
}
