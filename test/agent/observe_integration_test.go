//go:build integration

package agent_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/agenttest"
	"github.com/flowlens/flowlens/test/netnstest"
)

// startObservingAgent is startAgent with every eBPF observer required
// (observe.*.mode on): a program that cannot load fails the start.
func startObservingAgent(t *testing.T, node *netnstest.Node, collectorAddr string) *agenttest.Agent {
	t.Helper()
	ag := agenttest.StartAgent(t, agentBin, fmt.Sprintf(`nodeName: %s
conntrack:
  netns: %s
counters:
  source: ebpf
connections:
  activeTimeout: 2s
  idleTimeout: 2s
  tickInterval: 100ms
observe:
  tcpHealth: {mode: "on"}
  packetDrops: {mode: "on"}
  dnsNames: {mode: "on", minTTL: 1m}
export:
  collector: %s
  transport: tcp
  flushInterval: 200ms
server:
  listen: 127.0.0.1:0
`, node.Name, node.NetnsPath, collectorAddr))
	for _, o := range []string{"tcp-health", "packet-drops", "dns-names"} {
		if v, _ := ag.Metric(t, `flowlens_agent_observer_running{observer="`+o+`"}`); v != 1 {
			t.Fatalf("observer %s is not running:\n%s", o, ag.Metrics(t))
		}
	}
	return ag
}

// What the eBPF observers saw reaches the collector in the connection's
// records, through the real agent and its IPFIX templates: TCP health of
// a connection through a Service VIP, the reset of a refused connection,
// drops with the kernel's reason counted as the dropping rule counted
// them, and the name a pod resolved for the address it then dialled.
func TestObserversReachTheCollector(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "agent-obs",
		Pods: []netnstest.PodSpec{{Name: "client"}, {Name: "server"}, {Name: "dns"}}})
	client, server := node.Pod("client"), node.Pod("server")
	if _, err := server.ListenTCP(8080); err != nil {
		t.Fatal(err)
	}
	if _, err := server.ListenUDP(5353); err != nil {
		t.Fatal(err)
	}
	// An external-looking address the server pod also answers on: the
	// name is what a pod resolved for a destination outside the cluster.
	const name = "api.example.test"
	external := netip.MustParseAddr("203.0.113.10")
	for _, args := range [][]string{
		{"ip", "-n", server.NetnsName, "addr", "add", external.String() + "/32", "dev", "eth0"},
		{"ip", "-n", node.NetnsName, "route", "add", external.String() + "/32", "dev", server.HostVeth},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	stopDNS := serveDNS(t, node.Pod("dns"), name, external)
	defer stopDNS()
	svc := netnstest.AddServiceT(t, node, netnstest.Service{Name: "web", Port: 80, Backend: server, TargetPort: 8080})
	col := agenttest.StartCollector(t)
	startObservingAgent(t, node, col.Addr)

	t.Run("TCP health through a Service", func(t *testing.T) {
		xfer, err := netnstest.SendExactly(client, netip.AddrPortFrom(svc.VIP, svc.Port), 200_000, 50_000)
		if err != nil {
			t.Fatalf("transfer: %v", err)
		}
		recs := col.WaitFor(t, xfer.Local, flow.ProtoTCP, flow.EndOfFlow, 20*time.Second)
		var samples, established int
		for i, a := range recs {
			h := a.Rec.Health
			samples += int(h.RTTSamples)
			if h.RTTSamples > 0 && (h.RTTMinMicros == 0 || h.RTTMinMicros > h.RTTAvgMicros || h.RTTAvgMicros > h.RTTMaxMicros || h.RTTMaxMicros > 1_000_000) {
				t.Errorf("record %d: RTT min/avg/max %d/%d/%d µs over %d samples: not ordered or implausible on a veth", i, h.RTTMinMicros, h.RTTAvgMicros, h.RTTMaxMicros, h.RTTSamples)
			}
			if h.EstablishMicros > 0 {
				established++
				if i != 0 || h.EstablishMicros > 1_000_000 {
					t.Errorf("record %d of %d: establish time %d µs: want it in the first record only, under a second", i, len(recs), h.EstablishMicros)
				}
			}
			if h.FwdResets+h.RevResets != 0 {
				t.Errorf("record %d: resets %d/%d on a connection closed with FINs", i, h.FwdResets, h.RevResets)
			}
		}
		for i, a := range recs {
			h := a.Rec.Health
			t.Logf("record %d (%s): RTT %d/%d/%d µs over %d samples, establish %d µs, retransmits %d/%d", i, a.Rec.EndReason, h.RTTMinMicros, h.RTTAvgMicros, h.RTTMaxMicros, h.RTTSamples, h.EstablishMicros, h.FwdRetransmits, h.RevRetransmits)
		}
		if samples == 0 || established != 1 {
			t.Errorf("%d RTT samples and %d records with an establish time over %d records; want some and exactly one", samples, established, len(recs))
		}
	})

	t.Run("reset of a refused connection", func(t *testing.T) {
		local := netip.AddrPortFrom(client.IPv4, 41001)
		err := client.Run(func() error {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", server.Addr(9).String())
			if err == nil {
				c.Close()
				return errors.New("connected to a closed port")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		recs := col.WaitFor(t, local, flow.ProtoTCP, flow.EndOfFlow, 20*time.Second)
		var fwd, rev uint32
		for _, a := range recs {
			fwd += a.Rec.Health.FwdResets
			rev += a.Rec.Health.RevResets
		}
		if fwd != 0 || rev != 1 {
			t.Errorf("resets by the client %d, by the server %d; want 0 and 1 (the server's kernel refused the SYN once)", fwd, rev)
		}
	})

	t.Run("drops with their reason", func(t *testing.T) {
		// Dropped in the server pod, after the node's conntrack confirmed
		// the connection: the flow is in the store, its packets die with
		// a reason.
		const sport, sent = 42001, 7
		nft(t, server, "add table inet flt")
		nft(t, server, "add chain inet flt in { type filter hook input priority 0 ; }")
		nft(t, server, fmt.Sprintf("add rule inet flt in udp sport %d counter drop", sport))
		local := netip.AddrPortFrom(client.IPv4, sport)
		err := client.Run(func() error {
			c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(local), net.UDPAddrFromAddrPort(server.Addr(5353)))
			if err != nil {
				return err
			}
			defer c.Close()
			for range sent {
				if _, err := c.Write([]byte("dropped")); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`counter packets (\d+)`).FindSubmatch(nft(t, server, "list chain inet flt in"))
		if m == nil {
			t.Fatal("no counter in the rule")
		}
		ruleDropped, _ := strconv.Atoi(string(m[1]))
		if ruleDropped != sent {
			t.Fatalf("the rule dropped %d packets, the client sent %d: the check below would prove nothing", ruleDropped, sent)
		}
		recs := col.WaitFor(t, local, flow.ProtoUDP, flow.EndIdleTimeout, 20*time.Second)
		var fwd, rev uint32
		reasons := map[string]bool{}
		for _, a := range recs {
			fwd += a.Rec.Health.FwdDrops
			rev += a.Rec.Health.RevDrops
			if a.Rec.Health.DropReason != "" {
				reasons[a.Rec.Health.DropReason] = true
			}
		}
		if int(fwd) != ruleDropped || rev != 0 {
			t.Errorf("drops %d forward, %d reverse; the rule dropped %d forward", fwd, rev, ruleDropped)
		}
		if len(reasons) != 1 || !reasons["NETFILTER_DROP"] {
			t.Errorf("drop reasons %v, want NETFILTER_DROP", reasons)
		}
	})

	t.Run("destination name", func(t *testing.T) {
		if err := client.Run(func() error { return queryDNS(node.Pod("dns").Addr(53), name) }); err != nil {
			t.Fatal(err)
		}
		xfer, err := netnstest.SendExactly(client, netip.AddrPortFrom(external, 8080), 1000, 1000)
		if err != nil {
			t.Fatalf("transfer: %v", err)
		}
		recs := col.WaitFor(t, xfer.Local, flow.ProtoTCP, flow.EndOfFlow, 20*time.Second)
		for i, a := range recs {
			if a.Rec.Tuple.Dst() != external {
				t.Fatalf("record %d goes to %s, want %s", i, a.Rec.Tuple.Dst(), external)
			}
			if a.Rec.DestinationName != name {
				t.Errorf("record %d: destination name %q, want %q (resolved by the client just before)", i, a.Rec.DestinationName, name)
			}
		}
	})
}

func nft(t *testing.T, p *netnstest.Pod, cmd string) []byte {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+p.NetnsPath, "nft", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", cmd, err, out)
	}
	return out
}

// serveDNS answers every A question for name with addr (TTL 300) from
// p's port 53, until stopped.
func serveDNS(t *testing.T, p *netnstest.Pod, name string, addr netip.Addr) (stop func()) {
	t.Helper()
	var conn *net.UDPConn
	if err := p.Run(func() (err error) {
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(p.Addr(53)))
		return err
	}); err != nil {
		t.Fatalf("dns server: %v", err)
	}
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			var q dnsmessage.Message
			if q.Unpack(buf[:n]) != nil || len(q.Questions) != 1 {
				continue
			}
			resp := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: q.ID, Response: true, Authoritative: true},
				Questions: q.Questions,
			}
			if q.Questions[0].Name.String() == name+"." && q.Questions[0].Type == dnsmessage.TypeA {
				resp.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 300},
					Body:   &dnsmessage.AResource{A: addr.As4()},
				}}
			}
			if b, err := resp.Pack(); err == nil {
				_, _ = conn.WriteToUDPAddrPort(b, from)
			}
		}
	}()
	return func() { conn.Close() }
}

// queryDNS asks server for name's A record and waits for the answer.
func queryDNS(server netip.AddrPort, name string) error {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		return err
	}
	defer c.Close()
	q := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 7, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name + "."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	b, err := q.Pack()
	if err != nil {
		return err
	}
	if _, err := c.Write(b); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("dns answer: %w", err)
	}
	var resp dnsmessage.Message
	if err := resp.Unpack(buf[:n]); err != nil || len(resp.Answers) != 1 {
		return fmt.Errorf("dns answer: %d answers, %v", len(resp.Answers), err)
	}
	return nil
}
