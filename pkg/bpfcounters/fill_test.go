package bpfcounters

import (
	"testing"
	"time"
)

func TestFillIncompleteViewIsLossy(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fwd, rev uint32
		lossy    bool
		bornLoss bool
	}{
		{"none", tcpSYN, tcpSYN | tcpACK, false, false},
		{"forward", valIncomplete, 0, true, true},
		{"reply", 0, valIncomplete, true, false}, // Born does not read the reply
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, ft := newFake(t)
			conn := dnatConn(client, server, vip)
			conn.StartNanos = 5000
			v := viewsOf(&conn)
			ft.m[v.fwd[0]] = bpfFlowVal{Packets: 1, TcpFlags: tc.fwd}
			ft.m[v.rev[0]] = bpfFlowVal{Packets: 1, TcpFlags: tc.rev}
			res, err := c.Fill(&conn)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Seen || res.Lossy != tc.lossy {
				t.Errorf("Fill: seen %v lossy %v, want seen, lossy %v", res.Seen, res.Lossy, tc.lossy)
			}
			if res.Finished {
				t.Errorf("Fill: the incomplete mark read as FIN or RST")
			}
			res, err = c.Born(&conn)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Seen || res.Lossy != tc.bornLoss {
				t.Errorf("Born: seen %v lossy %v, want seen, lossy %v", res.Seen, res.Lossy, tc.bornLoss)
			}
		})
	}
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

func TestFwdFlags(t *testing.T) {
	c, ft := newFake(t)
	conn := dnatConn(client, server, vip)
	v := viewsOf(&conn)
	for name, fn := range map[string]func() (FillResult, error){
		"Fill": func() (FillResult, error) { return c.Fill(&conn) },
		"Born": func() (FillResult, error) { return c.Born(&conn) },
	} {
		clear(ft.m)
		if res, _ := fn(); res.FwdFlags != 0 {
			t.Errorf("%s without views: FwdFlags %#x, want 0", name, res.FwdFlags)
		}
		// Receiver side only, marked incomplete: the TCP bits alone.
		ft.m[v.fwd[1]] = bpfFlowVal{Packets: 2, TcpFlags: tcpSYN | tcpACK | valIncomplete}
		ft.m[v.rev[0]] = bpfFlowVal{Packets: 1, TcpFlags: tcpSYN | tcpACK | tcpRST}
		res, err := fn()
		if err != nil {
			t.Fatal(err)
		}
		if res.FwdFlags != tcpSYN|tcpACK {
			t.Errorf("%s: FwdFlags %#x, want %#x (the forward view's, not the reply's)", name, res.FwdFlags, tcpSYN|tcpACK)
		}
		// The sender-side view is the one picked.
		ft.m[v.fwd[0]] = bpfFlowVal{Packets: 2, TcpFlags: tcpSYN | tcpFIN}
		if res, _ := fn(); res.FwdFlags != tcpSYN|tcpFIN {
			t.Errorf("%s: FwdFlags %#x, want the sender-side view's %#x", name, res.FwdFlags, tcpSYN|tcpFIN)
		}
	}
}

// An unattributed loss hits, among connections of unknown start, those
// whose views were first counted before it.
func TestLossAllDatesUnknownStartByFirstPacket(t *testing.T) {
	c, ft := newFake(t)
	c.lossAll = time.Now().Add(-30 * time.Minute).UnixNano()
	conn := dnatConn(client, server, vip)
	v := viewsOf(&conn)
	mono := uint64(monoNow())
	hour := uint64(time.Hour)
	ft.m[v.fwd[0]] = bpfFlowVal{Packets: 1, FirstNs: mono - hour, LastNs: mono}
	ft.m[v.rev[0]] = bpfFlowVal{Packets: 1, FirstNs: mono, LastNs: mono}
	for name, fn := range map[string]func() (FillResult, error){
		"Fill": func() (FillResult, error) { return c.Fill(&conn) },
		"Born": func() (FillResult, error) { return c.Born(&conn) },
	} {
		res, err := fn()
		if err != nil {
			t.Fatal(err)
		}
		if !res.Lossy {
			t.Errorf("%s: first packet an hour ago, loss half an hour ago: not lossy", name)
		}
	}
	// A start time, when known, decides.
	conn.StartNanos = time.Now().Add(-time.Minute).UnixNano()
	if res, _ := c.Fill(&conn); res.Lossy {
		t.Errorf("connection started after the loss: lossy")
	}
}

func TestPruneAttachTimes(t *testing.T) {
	c, _ := newFake(t)
	now := time.Now().UnixNano()
	c.attached = map[attachKey]*attachment{{"ns", 1}: {}}
	c.detachedAt = map[uint32]int64{2: now - int64(time.Hour), 3: now - int64(time.Hour), 4: now}
	c.attachedAt = map[uint32]int64{1: 10, 2: 20, 3: 30, 4: 40}
	// 1 attached; 2 detached long ago, named by an entry; 3 detached long
	// ago, named by none; 4 detached within the grace period.
	c.pruneAttachTimes(map[uint32]struct{}{2: {}}, now-int64(time.Minute))
	for idx, want := range map[uint32]bool{1: true, 2: true, 3: false, 4: true} {
		if _, ok := c.attachedAt[idx]; ok != want {
			t.Errorf("ifindex %d kept %v, want %v", idx, ok, want)
		}
	}
	if _, ok := c.detachedAt[3]; ok {
		t.Errorf("detach time of a pruned interface kept")
	}
}
