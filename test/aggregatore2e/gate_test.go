//go:build integration

package aggregatore2e_test

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// gate is a loopback TCP relay between one agent and the aggregator that
// can hold what the agent sends: the test decides which node's half of a
// connection reaches the aggregator first. The agent's observation domain
// travels in the IPFIX header and the relay connects from 127.0.0.1, so
// the aggregator names the agent as it would without the relay.
type gate struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cond  *sync.Cond
	held  bool
	conns map[net.Conn]struct{}
	done  bool
	wg    sync.WaitGroup
}

func startGate(t *testing.T, target string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	g.cond = sync.NewCond(&g.mu)
	g.wg.Add(1)
	go g.accept()
	t.Cleanup(g.close)
	return g
}

// Addr is where the agent exports to.
func (g *gate) Addr() string { return g.ln.Addr().String() }

// Hold keeps everything the agent sends from now on in the relay.
func (g *gate) Hold() {
	g.mu.Lock()
	g.held = true
	g.mu.Unlock()
}

// Release forwards what was held, and everything after it.
func (g *gate) Release() {
	g.mu.Lock()
	g.held = false
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *gate) track(c net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done {
		return false
	}
	g.conns[c] = struct{}{}
	return true
}

func (g *gate) accept() {
	defer g.wg.Done()
	for {
		in, err := g.ln.Accept()
		if err != nil {
			return
		}
		if !g.track(in) {
			in.Close()
			return
		}
		g.wg.Add(1)
		go g.relay(in)
	}
}

func (g *gate) relay(in net.Conn) {
	defer g.wg.Done()
	defer in.Close()
	out, err := net.Dial("tcp", g.target)
	if err != nil {
		return // the agent reconnects later
	}
	defer out.Close()
	if !g.track(out) {
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		// A collector sends nothing back; its closing ends the relay.
		_, _ = io.Copy(in, out)
		in.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			g.mu.Lock()
			for g.held && !g.done {
				g.cond.Wait()
			}
			g.mu.Unlock()
			if _, werr := out.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := out.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
			return
		}
	}
}

func (g *gate) close() {
	g.mu.Lock()
	g.done = true
	g.cond.Broadcast()
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.ln.Close()
	g.wg.Wait()
}
