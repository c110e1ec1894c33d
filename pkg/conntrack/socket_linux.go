package conntrack

import (
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/netns"
)

// nlConn is a NETLINK_NETFILTER socket created inside a network namespace.
// It goes through the runtime poller (a non-blocking fd in an *os.File) so
// that reads honour deadlines, which is how Listen stops on context
// cancellation and Dump bounds a stuck kernel.
type nlConn struct {
	f  *os.File
	rc syscall.RawConn

	// The read callback and its results live in the struct so that a
	// receive does not allocate a closure.
	buf    []byte
	n      int
	errno  error
	empty  bool // tryRecv found nothing queued
	readFn func(fd uintptr) bool
	tryFn  func(fd uintptr) bool
}

// openNL opens a ctnetlink socket in the namespace at path, subscribed to the
// multicast groups in the groups bitmask (0 for a dump socket), with a
// receive buffer of rcvbuf bytes.
func openNL(path string, groups uint32, rcvbuf int) (*nlConn, error) {
	var fd int
	err := netns.Do(path, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	// SO_RCVBUFFORCE passes net.core.rmem_max as root; without CAP_NET_ADMIN
	// fall back to what the unprivileged limit allows.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("set netlink receive buffer to %d bytes: %w", rcvbuf, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netlink socket to groups %#x: %w", groups, err)
	}
	f := os.NewFile(uintptr(fd), "ctnetlink")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("netlink raw conn: %w", err)
	}
	c := &nlConn{f: f, rc: rc}
	c.readFn = c.recvOnce
	c.tryFn = c.recvNoWait
	return c, nil
}

func (c *nlConn) recvOnce(fd uintptr) bool {
	var p unsafe.Pointer
	if len(c.buf) > 0 {
		p = unsafe.Pointer(&c.buf[0])
	}
	// recvfrom(2) directly: x/sys/unix.Recvfrom allocates the peer address
	// on every call, and MSG_TRUNC makes the kernel report a datagram that
	// did not fit instead of silently cutting it.
	n, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(p), uintptr(len(c.buf)), unix.MSG_TRUNC, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	c.n = int(n)
	c.errno = nil
	if e != 0 {
		c.errno = e
		c.n = 0
	}
	return true
}

// recvNoWait is recvOnce that reports an empty socket instead of asking
// the poller to wait.
func (c *nlConn) recvNoWait(fd uintptr) bool {
	c.empty = !c.recvOnce(fd)
	return true
}

// recv reads one datagram into buf. A datagram larger than buf is an error.
func (c *nlConn) recv(buf []byte) (int, error) {
	return c.read(buf, c.readFn)
}

// tryRecv reads one datagram into buf if one is queued.
func (c *nlConn) tryRecv(buf []byte) (int, bool, error) {
	c.empty = false
	n, err := c.read(buf, c.tryFn)
	if err == nil && c.empty {
		return 0, false, nil
	}
	return n, true, err
}

func (c *nlConn) read(buf []byte, fn func(fd uintptr) bool) (int, error) {
	c.buf = buf
	err := c.rc.Read(fn)
	c.buf = nil
	if err != nil {
		return 0, err
	}
	if c.errno != nil {
		return 0, c.errno
	}
	if c.n > len(buf) {
		return 0, fmt.Errorf("netlink datagram of %d bytes exceeds %d-byte buffer", c.n, len(buf))
	}
	return c.n, nil
}

func (c *nlConn) send(b []byte) error {
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return serr
}

func (c *nlConn) setDeadline(t time.Time) error { return c.f.SetReadDeadline(t) }

func (c *nlConn) close() error { return c.f.Close() }
