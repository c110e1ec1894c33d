package ipfixcollect

import (
	"bufio"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// procNetUDPDrops reads the drops column of /proc/net/udp for the socket
// with the given inode: the kernel's own view, to compare with the metric.
func procNetUDPDrops(t *testing.T, inode uint64) uint64 {
	t.Helper()
	f, err := os.Open("/proc/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 13 || fs[9] != strconv.FormatUint(inode, 10) {
			continue
		}
		n, err := strconv.ParseUint(fs[len(fs)-1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Fatalf("socket inode %d not in /proc/net/udp", inode)
	return 0
}

func TestKernelDropsOnTheUDPListenerAreAMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := New(Config{Network: UDP, Address: "127.0.0.1:0"}, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A small receive buffer and nobody reading: the kernel drops.
	if err := c.pc.SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	rc, _ := c.pc.SyscallConn()
	_ = rc.Control(func(fd uintptr) { err = syscall.Fstat(int(fd), &st) })
	if err != nil {
		t.Fatal(err)
	}
	if v := counter(t, reg, "flowlens_ipfix_collector_udp_receive_drops_total", ""); v != 0 {
		t.Fatalf("drops before any traffic = %v", v)
	}
	conn, err := net.Dial("udp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(1)).bytes()
	for range 500 {
		if _, err := conn.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	got := counter(t, reg, "flowlens_ipfix_collector_udp_receive_drops_total", "")
	want := procNetUDPDrops(t, st.Ino)
	if got == 0 || uint64(got) != want {
		t.Errorf("udp_receive_drops_total = %v, /proc/net/udp drops = %d; want equal and > 0", got, want)
	}
	// The total survives the socket's close.
	c.Close()
	if after := counter(t, reg, "flowlens_ipfix_collector_udp_receive_drops_total", ""); after != got {
		t.Errorf("after Close the metric reads %v, want the last total %v", after, got)
	}
}
