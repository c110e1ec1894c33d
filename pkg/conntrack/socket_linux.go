package conntrack

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
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
	readFn func(fd uintptr) bool
}

// openNL opens a ctnetlink socket in the namespace at path, subscribed to the
// multicast groups in the groups bitmask (0 for a dump socket), with a
// receive buffer of rcvbuf bytes.
func openNL(path string, groups uint32, rcvbuf int) (*nlConn, error) {
	fd, err := openNLFD(path, groups, rcvbuf, unix.SOCK_NONBLOCK)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "ctnetlink")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("netlink raw conn: %w", err)
	}
	c := &nlConn{f: f, rc: rc}
	c.readFn = c.recvOnce
	return c, nil
}

// openNLFD opens and binds the socket; flags are added to its type.
func openNLFD(path string, groups uint32, rcvbuf int, flags int) (int, error) {
	var fd int
	err := netns.Do(path, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|flags, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	// SO_RCVBUFFORCE passes net.core.rmem_max as root; without CAP_NET_ADMIN
	// fall back to what the unprivileged limit allows.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("set netlink receive buffer to %d bytes: %w", rcvbuf, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind netlink socket to groups %#x: %w", groups, err)
	}
	return fd, nil
}

// nlEventConn is the event socket: a non-blocking descriptor outside the
// runtime poller, waited on through an epoll instance of its own. In the
// poller, every datagram the kernel queues wakes the poller's thread
// (epoll reports each arrival), although the listener reads them in
// batches and is not waiting: one wake-up per conntrack event, which was
// most of the agent's scheduling cost. A read that finds nothing waits in
// epoll_wait until a datagram arrives or setDeadline writes the eventfd:
// no periodic wake-up. (A receive timeout that woke it every 100 ms to
// look at its deadline doubled an idle agent's CPU, 0.008 cores against
// 0.004: each wake-up re-entered a blocking system call, and the
// runtime's monitor thread polls every 20 µs while a P sits in one, for
// up to 10 ms.)
type nlEventConn struct {
	fd, epfd, wakefd int
	deadline         atomic.Int64 // Unix ns; 0: none
	events           [2]unix.EpollEvent
}

func openEventNL(path string, groups uint32, rcvbuf int) (*nlEventConn, error) {
	fd, err := openNLFD(path, groups, rcvbuf, unix.SOCK_NONBLOCK)
	if err != nil {
		return nil, err
	}
	c := &nlEventConn{fd: fd, epfd: -1, wakefd: -1}
	if c.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		c.close()
		return nil, fmt.Errorf("create epoll for the netlink event socket: %w", err)
	}
	if c.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		c.close()
		return nil, fmt.Errorf("create eventfd for the netlink event socket: %w", err)
	}
	for _, f := range []int{c.fd, c.wakefd} {
		if err := unix.EpollCtl(c.epfd, unix.EPOLL_CTL_ADD, f, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(f)}); err != nil {
			c.close()
			return nil, fmt.Errorf("add fd %d to the netlink event socket's epoll: %w", f, err)
		}
	}
	return c, nil
}

func (c *nlEventConn) recvFlags(buf []byte, flags int) (int, error) {
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(c.fd), uintptr(p), uintptr(len(buf)), uintptr(flags|unix.MSG_TRUNC), 0, 0)
	if e != 0 {
		return 0, e
	}
	if int(n) > len(buf) {
		return 0, fmt.Errorf("netlink datagram of %d bytes exceeds %d-byte buffer", n, len(buf))
	}
	return int(n), nil
}

func (c *nlEventConn) recv(buf []byte) (int, error) {
	for {
		n, ok, err := c.tryRecv(buf)
		if ok || err != nil {
			return n, err
		}
		if err := c.wait(); err != nil {
			return 0, err
		}
	}
}

// wait blocks until the socket is readable, the eventfd was written or
// the deadline passed.
func (c *nlEventConn) wait() error {
	timeout := -1
	if d := c.deadline.Load(); d != 0 {
		left := time.Duration(d - time.Now().UnixNano())
		if left <= 0 {
			return nil // tryRecv reports it
		}
		timeout = int((left + time.Millisecond - 1) / time.Millisecond)
	}
	n, err := unix.EpollWait(c.epfd, c.events[:], timeout)
	if err != nil && !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("wait for conntrack events: %w", err)
	}
	for i := 0; i < n; i++ {
		if int(c.events[i].Fd) == c.wakefd {
			var b [8]byte
			_, _ = unix.Read(c.wakefd, b[:]) // reset; the deadline is re-read
		}
	}
	return nil
}

func (c *nlEventConn) tryRecv(buf []byte) (int, bool, error) {
	if d := c.deadline.Load(); d != 0 && time.Now().UnixNano() >= d {
		return 0, true, os.ErrDeadlineExceeded
	}
	n, err := c.recvFlags(buf, unix.MSG_DONTWAIT)
	if errors.Is(err, unix.EAGAIN) {
		return 0, false, nil
	}
	return n, true, err
}

// setDeadline sets when reads fail with os.ErrDeadlineExceeded, and wakes
// a blocked read so that it sees the new deadline.
func (c *nlEventConn) setDeadline(t time.Time) error {
	c.deadline.Store(t.UnixNano())
	one := [8]byte{1} // an eventfd write adds this native-endian uint64
	if _, err := unix.Write(c.wakefd, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("wake the conntrack event reader: %w", err)
	}
	return nil
}

func (c *nlEventConn) close() error {
	for _, f := range []int{c.epfd, c.wakefd} {
		if f >= 0 {
			unix.Close(f)
		}
	}
	return unix.Close(c.fd)
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

// recv reads one datagram into buf. A datagram larger than buf is an error.
func (c *nlConn) recv(buf []byte) (int, error) {
	c.buf = buf
	err := c.rc.Read(c.readFn)
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
