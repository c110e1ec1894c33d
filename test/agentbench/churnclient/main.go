// Command churnclient is the client side of BenchmarkChurn: started inside
// a client pod's network namespace (nsenter), it makes short TCP
// connections to one address at a fixed rate, each the exchange of
// test/netnstest's TCP server (an 8-byte big-endian reply length, the
// payload, a half-close, then the reply read to the server's close), and
// prints one line per connection on stdout:
//
//	ok <local ip:port> <start unix ns> <done unix ns> <sent> <received> <segs out> <bytes out> <segs in>
//	fail <local ip:port or -> <start unix ns> <error>
//
// The segments and payload bytes the client's kernel sent (retransmissions
// included) and the segments it received come from TCP_INFO once the
// server's FIN was acknowledged: what a node on the path can have counted.
//
// It runs as its own process so that every socket is created in the pod's
// namespace without switching a thread into it per connection, which
// would limit the benchmark process, not the agent.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	var (
		to       = flag.String("to", "", "ip:port to connect to")
		rate     = flag.Int("rate", 100, "connections per second")
		duration = flag.Duration("duration", 10*time.Second, "how long to make connections")
		sent     = flag.Int64("sent", 300, "payload bytes to send")
		reply    = flag.Int64("reply", 700, "payload bytes to ask back")
		timeout  = flag.Duration("timeout", 10*time.Second, "bound of one whole exchange")
		inflight = flag.Int("max-inflight", 4000, "connections open at once; beyond it a connection is not made and counted as failed")
	)
	flag.Parse()
	if *to == "" || *rate <= 0 || *duration <= 0 || *sent < 0 || *reply < 0 || *inflight <= 0 {
		fmt.Fprintln(os.Stderr, "churnclient: need -to, and positive -rate, -duration, -max-inflight")
		os.Exit(2)
	}
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	var mu sync.Mutex
	emit := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(out, format, args...)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	slots := make(chan struct{}, *inflight)
	every := time.Second / time.Duration(*rate)
	stop := time.Now().Add(*duration)
	next := time.Now()
	for time.Now().Before(stop) {
		next = next.Add(every)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		start := time.Now()
		select {
		case slots <- struct{}{}:
		default:
			emit("fail - %d too many connections in flight\n", start.UnixNano())
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			local, info, err := exchange(*to, *sent, *reply, *timeout)
			done := time.Now()
			if err != nil {
				emit("fail %s %d %v\n", orDash(local), start.UnixNano(), err)
				return
			}
			emit("ok %s %d %d %d %d %d %d %d\n", local, start.UnixNano(), done.UnixNano(), *sent, *reply, info.Segs_out, info.Bytes_sent, info.Segs_in)
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if err := out.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "churnclient:", err)
		os.Exit(1)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// exchange makes one connection; it returns once the server closed, when
// the connection ended for the client, with the socket's TCP_INFO then.
func exchange(to string, sent, reply int64, timeout time.Duration) (local string, info *unix.TCPInfo, err error) {
	c, err := net.DialTimeout("tcp", to, timeout)
	if err != nil {
		return "", nil, err
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	local = c.LocalAddr().String()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return local, nil, err
	}
	buf := make([]byte, 8+sent)
	binary.BigEndian.PutUint64(buf, uint64(reply))
	if _, err := c.Write(buf); err != nil {
		return local, nil, fmt.Errorf("write: %w", err)
	}
	if err := tc.CloseWrite(); err != nil {
		return local, nil, fmt.Errorf("half-close: %w", err)
	}
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return local, nil, fmt.Errorf("read reply: %w", err)
	}
	if n != reply {
		return local, nil, errors.New("short reply: got " + fmt.Sprint(n) + " bytes")
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return local, nil, err
	}
	var infoErr error
	if err := raw.Control(func(fd uintptr) { info, infoErr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return local, nil, err
	}
	if infoErr != nil {
		return local, nil, fmt.Errorf("tcp_info: %w", infoErr)
	}
	return local, info, nil
}
