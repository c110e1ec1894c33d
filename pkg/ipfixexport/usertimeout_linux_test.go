package ipfixexport

import (
	"context"
	"net"
	"testing"
	"time"
)

// A collector whose host vanishes (packets dropped, no RST) must fail the
// connection once data stays unacknowledged for WriteTimeout, not when the
// send buffer fills or the kernel gives up retransmitting minutes later:
// the TCP and TLS sockets carry TCP_USER_TIMEOUT = WriteTimeout. (The
// blackhole itself is in pkg/agent's integration test.)
func TestCollectorSocketsFailAfterWriteTimeoutUnacknowledged(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for _, wt := range []time.Duration{3 * time.Second, 1500 * time.Millisecond} {
		e, err := New(Config{Address: ln.Addr().String(), Transport: TCP, WriteTimeout: wt}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c, err := e.dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got, err := tcpUserTimeout(c.tcp)
		c.tcp.Close()
		<-c.done
		if err != nil {
			t.Fatal(err)
		}
		if got != wt {
			t.Errorf("WriteTimeout %s: TCP_USER_TIMEOUT %s", wt, got)
		}
	}
}
