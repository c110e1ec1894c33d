package ipfixcollect

import (
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socketDrops returns the kernel's count of datagrams dropped on the socket
// (sk_drops: receive buffer full, checksum or filter failures): the same
// number /proc/net/udp shows in its drops column. It is a 32-bit counter
// that wraps.
func socketDrops(pc *net.UDPConn) (uint32, error) {
	rc, err := pc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("udp socket: %w", err)
	}
	var (
		mem  [unix.SK_MEMINFO_VARS]uint32
		serr error
	)
	err = rc.Control(func(fd uintptr) {
		l := uint32(unsafe.Sizeof(mem))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&mem[0])), uintptr(unsafe.Pointer(&l)), 0)
		if errno != 0 {
			serr = errno
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("getsockopt SO_MEMINFO: %w", err)
	}
	return mem[unix.SK_MEMINFO_DROPS], nil
}
