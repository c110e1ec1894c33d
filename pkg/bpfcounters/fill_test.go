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

// Born and Fill answer from the values the last two rounds read (as of the
// last round: no system call for a NEW or a close whose views a recent
// round read), and read the map for the views no recent round read; a
// view Forget deleted is found in neither.
func TestFillAnswersFromTheLastTwoRounds(t *testing.T) {
	c, ft := newFake(t)
	conn := dnatConn(client, server, vip)
	v := viewsOf(&conn)
	mono := uint64(monoNow())
	// The round before read the forward view, the last round the reply
	// one; the forward view moved since (a packet after the last round:
	// the next round reads it).
	c.cache.prev[v.fwd[0]] = bpfFlowVal{Packets: 3, Bytes: 200, TcpFlags: tcpSYN, FirstNs: mono, LastNs: mono}
	c.cache.vals[v.rev[0]] = bpfFlowVal{Packets: 4, Bytes: 900, FirstNs: mono, LastNs: mono}
	ft.m[v.fwd[0]] = bpfFlowVal{Packets: 5, Bytes: 400, TcpFlags: tcpSYN, FirstNs: mono, LastNs: mono}
	ft.m[v.rev[0]] = bpfFlowVal{Packets: 4, Bytes: 900, FirstNs: mono, LastNs: mono}

	res, err := c.Born(&conn)
	if err != nil || !res.Seen || res.FwdFlags != tcpSYN {
		t.Fatalf("Born = %+v, %v; want seen with SYN", res, err)
	}
	if _, err := c.Fill(&conn); err != nil || conn.Fwd.Packets != 3 || conn.Rev.Packets != 4 {
		t.Errorf("Fill: fwd %+v rev %+v (%v), want the rounds' 3 and 4 packets", conn.Fwd, conn.Rev, err)
	}
	if ft.lookups != 0 {
		t.Errorf("%d map lookups for views the last two rounds read, want 0", ft.lookups)
	}
	// A view no recent round read is read from the map.
	delete(c.cache.prev, v.fwd[0])
	if _, err := c.Fill(&conn); err != nil || conn.Fwd.Packets != 5 || ft.lookups != 1 {
		t.Errorf("Fill of a view no round read: fwd %+v after %d lookups (%v), want the map's 5 packets after 1", conn.Fwd, ft.lookups, err)
	}
	c.cache.vals[v.fwd[0]] = ft.m[v.fwd[0]]
	if err := c.Forget(&conn); err != nil {
		t.Fatal(err)
	}
	if res, err := c.Born(&conn); err != nil || res.Seen {
		t.Errorf("Born after Forget = %+v, %v; want not seen", res, err)
	}
	if len(c.cache.vals)+len(c.cache.prev) != 0 {
		t.Errorf("Forget left views in the rounds' values: %v %v", c.cache.vals, c.cache.prev)
	}
}
