//go:build integration

package tcphealth

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/netns"
)

// delayLine is two endpoint namespaces joined through a third one in which
// a relay copies every frame from one veth to the other after a fixed
// delay: a real network delay for kernels without netem (this one has
// none). The relay reads and writes with the virtio-net header
// (PACKET_VNET_HDR), so GSO packets and partial checksums cross it as the
// kernel made them.
type delayLine struct {
	cli, srv     string // netns paths
	cliV4, srvV4 netip.Addr
	cliV6, srvV6 netip.Addr
	names        []string
	fds          []int
	wg           sync.WaitGroup
	stopped      atomic.Bool
	mu           sync.Mutex
	relayed      int
	relayErr     error
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %v: %w: %s", args, err, bytes.TrimSpace(out))
	}
	return nil
}

// newDelayLine builds client <-veth-> wire <-veth-> server with delay each
// way in the wire namespace.
func newDelayLine(t *testing.T, delay time.Duration) *delayLine {
	t.Helper()
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	id := "thd" + hex.EncodeToString(b[:])
	d := &delayLine{
		cli: netns.Path(id + "c"), srv: netns.Path(id + "s"),
		cliV4: netip.MustParseAddr("10.199.0.1"), srvV4: netip.MustParseAddr("10.199.0.2"),
		cliV6: netip.MustParseAddr("fd00:199::1"), srvV6: netip.MustParseAddr("fd00:199::2"),
	}
	t.Cleanup(d.close)
	wire := id + "w"
	for _, n := range []string{id + "c", wire, id + "s"} {
		if err := ipCmd("netns", "add", n); err != nil {
			t.Fatal(err)
		}
		d.names = append(d.names, n)
		if err := ipCmd("-n", n, "link", "set", "lo", "up"); err != nil {
			t.Fatal(err)
		}
	}
	// The wire namespace has no addresses and must not speak itself.
	if err := netns.WriteSysctl(netns.Path(wire), "net.ipv6.conf.all.disable_ipv6", "1"); err != nil {
		t.Fatal(err)
	}
	if err := netns.WriteSysctl(netns.Path(wire), "net.ipv6.conf.default.disable_ipv6", "1"); err != nil {
		t.Fatal(err)
	}
	for _, end := range []struct {
		ns       string
		v4, v6   netip.Addr
		own, far string
	}{
		{id + "c", d.cliV4, d.cliV6, "c0", "c1"},
		{id + "s", d.srvV4, d.srvV6, "s0", "s1"},
	} {
		steps := [][]string{
			{"link", "add", end.own, "netns", end.ns, "type", "veth", "peer", "name", end.far, "netns", wire},
			{"-n", end.ns, "addr", "add", end.v4.String() + "/24", "dev", end.own},
			{"-n", end.ns, "addr", "add", end.v6.String() + "/64", "dev", end.own, "nodad"},
			{"-n", end.ns, "link", "set", end.own, "up"},
			{"-n", wire, "link", "set", end.far, "up"},
		}
		for _, s := range steps {
			if err := ipCmd(s...); err != nil {
				t.Fatal(err)
			}
		}
	}
	c1, err := d.packetSocket(netns.Path(wire), "c1")
	if err != nil {
		t.Fatal(err)
	}
	s1, err := d.packetSocket(netns.Path(wire), "s1")
	if err != nil {
		t.Fatal(err)
	}
	d.relay(c1, s1, delay)
	d.relay(s1, c1, delay)
	return d
}

// packetSocket opens a raw packet socket bound to ifName in the namespace.
func (d *delayLine) packetSocket(path, ifName string) (int, error) {
	fd := -1
	err := netns.Do(path, func() error {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, proto)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		// A read timeout lets the reader notice the line is closing
		// (closing a packet socket does not wake a blocked read).
		tv := unix.Timeval{Usec: 200000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return fmt.Errorf("SO_RCVTIMEO: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			unix.Close(fd)
			return fmt.Errorf("PACKET_VNET_HDR: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind to %s: %w", ifName, err)
		}
		return nil
	})
	if err != nil {
		return -1, err
	}
	d.fds = append(d.fds, fd)
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

type frame struct {
	data []byte
	at   time.Time
}

// relay copies the frames arriving on in to out, each delay after it came.
func (d *delayLine) relay(in, out int, delay time.Duration) {
	ch := make(chan frame, 4096)
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		defer close(ch)
		buf := make([]byte, 70000)
		for {
			n, from, err := unix.Recvfrom(in, buf, 0)
			if d.stopped.Load() {
				return
			}
			if err != nil {
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
					continue
				}
				d.setErr(fmt.Errorf("relay read: %w", err))
				return
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue // what the other direction wrote
			}
			ch <- frame{data: bytes.Clone(buf[:n]), at: time.Now()}
		}
	}()
	go func() {
		defer d.wg.Done()
		for f := range ch {
			time.Sleep(time.Until(f.at.Add(delay)))
			if _, err := unix.Write(out, f.data); err != nil {
				d.setErr(fmt.Errorf("relay write: %w", err))
				continue
			}
			d.mu.Lock()
			d.relayed++
			d.mu.Unlock()
		}
	}()
}

func (d *delayLine) setErr(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.relayErr == nil {
		d.relayErr = err
	}
}

func (d *delayLine) err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.relayErr
}

func (d *delayLine) close() {
	d.stopped.Store(true)
	d.wg.Wait()
	for _, fd := range d.fds {
		unix.Close(fd)
	}
	for _, n := range d.names {
		_ = ipCmd("netns", "del", n)
	}
}
