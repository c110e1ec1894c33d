//go:build integration

package mirror

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/netns"
)

// dirKey is one direction of a TCP connection as captured.
type dirKey struct {
	src, dst netip.AddrPort
}

type counts struct {
	packets, bytes uint64
}

// sniffer reads everything arriving on one interface with a raw AF_PACKET
// socket (what Suricata's af-packet does) and sums IPv4 TCP packets and
// their IP lengths per direction. A GSO super-packet arrives whole, as one
// packet whose IP total length covers all its segments: the unit conntrack
// counts in too.
type sniffer struct {
	fd   int
	wg   sync.WaitGroup
	stop chan struct{}

	mu    sync.Mutex
	flows map[dirKey]counts
	other int // non-IPv4-TCP frames
	err   error
}

func startSniffer(t *testing.T, nsPath, ifname string) *sniffer {
	t.Helper()
	s := &sniffer{stop: make(chan struct{}), flows: map[dirKey]counts{}}
	proto := int(htons(unix.ETH_P_ALL))
	err := netns.Do(nsPath, func() error {
		ifi, err := ifindexOf(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		s.fd = fd
		// Room for a burst of 64 KiB GSO copies: a drop here would fail
		// the comparison, and is checked below.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi})
	})
	if err != nil {
		if s.fd != 0 {
			unix.Close(s.fd)
		}
		t.Fatalf("capture on %s: %v", ifname, err)
	}
	s.wg.Add(1)
	go s.run()
	t.Cleanup(func() { s.close() })
	return s
}

func ifindexOf(name string) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	req, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, req); err != nil {
		return 0, err
	}
	return int(req.Uint32()), nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (s *sniffer) run() {
	defer s.wg.Done()
	buf := make([]byte, 256<<10)
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
		s.add(buf[:n])
	}
}

func (s *sniffer) add(f []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP {
		s.other++
		return
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != unix.IPPROTO_TCP || len(ip) < ihl+4 {
		s.other++
		return
	}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(ip[ihl:]))
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(ip[ihl+2:]))
	k := dirKey{src, dst}
	c := s.flows[k]
	c.packets++
	c.bytes += uint64(binary.BigEndian.Uint16(ip[2:]))
	s.flows[k] = c
}

// take returns what was captured so far and starts afresh.
func (s *sniffer) take(t *testing.T) map[dirKey]counts {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		t.Fatalf("capture: %v", s.err)
	}
	var st unix.TpacketStats
	sz := uint32(unsafe.Sizeof(st))
	// PACKET_STATISTICS resets on read: drops since the previous take.
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.fd), unix.SOL_PACKET, unix.PACKET_STATISTICS, uintptr(unsafe.Pointer(&st)), uintptr(unsafe.Pointer(&sz)), 0)
	if errno != 0 {
		t.Fatalf("capture statistics: %v", errno)
	}
	if st.Drops != 0 {
		t.Fatalf("capture socket dropped %d frames: the comparison would be wrong", st.Drops)
	}
	out := s.flows
	s.flows = map[dirKey]counts{}
	return out
}

func (s *sniffer) close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	s.wg.Wait()
	unix.Close(s.fd)
}
