//go:build integration

package l7_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/l7"
	"github.com/flowlens/flowlens/test/l7e2e"
	"github.com/flowlens/flowlens/test/netnstest"
)

// podConns stands in for the connection store in this test: it knows the
// one client pod -> server pod connection shape and answers in either
// orientation with the client as source, as pkg/connstore does.
type podConns struct {
	client, server netip.Addr
	vip            netip.AddrPort
}

func (p podConns) LookupConn(t flow.Tuple) (flow.Conn, bool) {
	switch {
	case t.Src() == p.client && t.Dst() == p.server:
	case t.Src() == p.server && t.Dst() == p.client:
		t = t.Reverse()
	default:
		return flow.Conn{}, false
	}
	return flow.Conn{Tuple: t, OrigDstIP: p.vip.Addr().As16(), OrigDstPort: p.vip.Port()}, true
}

// ingressOf opts the server pod in with visibility.antrea.io/l7-export:
// ingress.
type ingressOf netip.Addr

func (s ingressOf) L7Want(c *flow.Conn) flow.L7Want {
	if c.Tuple.Dst() == netip.Addr(s) {
		return flow.L7Destination
	}
	return flow.L7None
}

// TestRealSuricataHTTPEventReachesTheRecord runs Suricata 7 on a mirror of
// a server pod's veth (both directions, tc u32 + mirred), with eve-log
// connected to the reader's unix stream socket, and checks that a request
// through a Service shows up, with its exact method, host, URL and status,
// in the server connection's record.
func TestRealSuricataHTTPEventReachesTheRecord(t *testing.T) {
	if err := netnstest.CheckPrereqs(); err != nil {
		t.Fatalf("prerequisites: %v (run hack/install-deps.sh as root)", err)
	}
	if _, err := l7e2e.FindSuricata(); err != nil {
		t.Fatalf("%v (run hack/install-deps.sh: installs Suricata 7 from bookworm-backports)", err)
	}

	node := netnstest.NewNodeT(t, netnstest.Config{
		Name: "l7",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}},
	})
	server, client := node.Pod("server"), node.Pod("client")
	if _, err := server.ServeHTTP(8080); err != nil {
		t.Fatalf("serve HTTP: %v", err)
	}
	svc := netnstest.AddServiceT(t, node, netnstest.Service{Name: "web", Port: 80, TargetPort: 8080, Backend: server})

	dir, err := os.MkdirTemp("", "fl-suri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "eve.sock")

	enricher, err := l7.New(l7.Config{
		Connections: podConns{client: client.IPv4, server: server.IPv4, vip: svc.Addr()},
		Policy:      ingressOf(server.IPv4),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// As in the agent, the reader hands events to the one goroutine that
	// uses the enricher: this one.
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan eve.Event, 1024)
	reader, err := eve.New(eve.Config{
		Source: eve.SourceUnixStream,
		Path:   sock,
		Handler: func(ev eve.Event) {
			select {
			case events <- ev:
			case <-ctx.Done():
			}
		},
	}, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := reader.Run(ctx); err != nil {
			t.Errorf("reader: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	// Suricata reads a copy of both directions of the server's veth; with
	// one direction only it logs no http event at all.
	sensor, err := l7e2e.StartSensor(l7e2e.SensorConfig{Node: node, Pod: server, Dir: dir, EVESockets: []string{sock}})
	if err != nil {
		t.Fatalf("start suricata: %v", err)
	}
	t.Cleanup(func() { sensor.Close() })

	// Suricata needs about 10 s before it captures: request once a second
	// until a transaction we sent is logged.
	httpc := client.HTTPClient()
	sent := map[string]bool{}
	var got eve.Event
	deadline := time.After(90 * time.Second)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
wait:
	for n := 0; ; n++ {
		url := fmt.Sprintf("/status/418?probe=%d", n)
		sent[url] = true
		if resp, err := httpc.Get("http://" + svc.Addr().String() + url); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		for {
			select {
			case ev := <-events:
				enricher.Ingest(ev, time.Now())
				if ev.HTTP != nil && sent[ev.HTTP.URL] {
					got = ev
					break wait
				}
				continue
			case <-sensor.Done():
				t.Fatalf("suricata exited: %v\n%s", sensor.ExitError(), sensor.LogTail(20))
			case <-deadline:
				t.Fatalf("no http event from Suricata within 90 s\n%s", sensor.LogTail(20))
			case <-tick.C:
			}
			break
		}
	}

	h := got.HTTP
	wantHost := svc.Addr().Addr().String() // the client dialled the VIP
	if h.Method != "GET" || h.Hostname != wantHost || !strings.HasPrefix(h.URL, "/status/418?probe=") ||
		h.Status != 418 || h.Protocol != "HTTP/1.1" {
		t.Errorf("http event = %+v, want GET %s /status/418?probe=N -> 418 HTTP/1.1", *h, wantHost)
	}
	// Suricata sees the pod side of the DNAT: client pod -> server pod:8080.
	if s, d := got.Tuple.Src(), got.Tuple.Dst(); !(s == client.IPv4 && d == server.IPv4 && got.Tuple.DstPort == 8080) &&
		!(s == server.IPv4 && d == client.IPv4 && got.Tuple.SrcPort == 8080) {
		t.Errorf("event tuple %v, want between %v and %v:8080", got.Tuple, client.IPv4, server.IPv4)
	}

	// The record of that connection carries the transaction, query dropped.
	conn, _ := podConns{client: client.IPv4, server: server.IPv4, vip: svc.Addr()}.LookupConn(got.Tuple)
	rec := flow.Record{Conn: conn, EndReason: flow.EndActiveTimeout}
	enricher.Enrich(&rec)
	var vals map[string]map[string]any
	if err := json.Unmarshal([]byte(rec.L7.HTTPVals), &vals); err != nil {
		t.Fatalf("httpVals %q: %v", rec.L7.HTTPVals, err)
	}
	found := false
	for _, v := range vals {
		if v["url"] == "/status/418" && v["hostname"] == wantHost && v["http_method"] == "GET" && v["status"] == 418.0 {
			found = true
		}
	}
	if !found || rec.L7.AppProtocolName != "http" {
		t.Errorf("record L7 = %+v, want appProtocolName http and the GET /status/418 transaction", rec.L7)
	}
}
