package ipfixexport

import (
	"net"

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
