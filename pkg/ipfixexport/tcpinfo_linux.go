package ipfixexport

import (
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpStateClose is the kernel's TCP_CLOSE: the connection is gone (reset or
// fully closed) and nothing more will be acknowledged.
const tcpStateClose = 7

// tcpAcked reports how many bytes the peer's kernel acknowledged on c, and
// whether the connection is fully closed. ok is false when the kernel
// cannot tell.
func tcpAcked(c *net.TCPConn) (acked uint64, closed bool, ok bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false, false
	}
	var info *unix.TCPInfo
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || gerr != nil {
		return 0, false, false
	}
	return info.Bytes_acked, info.State == tcpStateClose, true
}

// userTimeoutControl sets TCP_USER_TIMEOUT on a socket before it connects:
// the kernel fails the connection (ETIMEDOUT) when data it sent stays
// unacknowledged for d.
func userTimeoutControl(d time.Duration) func(network, address string, rc syscall.RawConn) error {
	ms := int(min(d.Milliseconds(), int64(1<<31-1)))
	return func(network, address string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
		}); err != nil {
			return fmt.Errorf("set TCP_USER_TIMEOUT on %s %s: %w", network, address, err)
		}
		if serr != nil {
			return fmt.Errorf("set TCP_USER_TIMEOUT on %s %s: %w", network, address, serr)
		}
		return nil
	}
}

// tcpUserTimeout reads TCP_USER_TIMEOUT back (tests).
func tcpUserTimeout(c *net.TCPConn) (time.Duration, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var ms int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		ms, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	}); err != nil {
		return 0, err
	}
	return time.Duration(ms) * time.Millisecond, gerr
}
