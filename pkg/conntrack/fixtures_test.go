package conntrack

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
	"github.com/flowlens/flowlens/pkg/flow"
)

// fixtureEntries are the entries inserted into a fresh namespace when
// testdata/*.bin were captured from a real kernel (TestCaptureFixtures,
// integration tag, -capture-fixtures).
var fixtureEntries = []conntracktest.Entry{
	{Proto: 6, OrigSrc: cli4, OrigDst: vip4, OrigSrcPort: 40000, OrigDstPort: 80,
		ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 8080, ReplyDstPort: 40000,
		TCPState: 3, Timeout: 3600, Status: 0xa, Mark: 0x42},
	{Proto: 6, OrigSrc: cli6, OrigDst: vip6, OrigSrcPort: 40001, OrigDstPort: 443,
		ReplySrc: ep6, ReplyDst: cli6, ReplySrcPort: 8443, ReplyDstPort: 40001,
		TCPState: 3, Timeout: 3600, Status: 0xa, Zone: 5},
	{Proto: 17, OrigSrc: cli4, OrigDst: ep4, OrigSrcPort: 5353, OrigDstPort: 53,
		ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 53, ReplyDstPort: 5353, Timeout: 3600},
	{Proto: 1, OrigSrc: cli4, OrigDst: ep4, OrigSrcPort: 0x77, OrigDstPort: 8 << 8,
		ReplySrc: ep4, ReplyDst: cli4, ReplySrcPort: 0x77, ReplyDstPort: 0, Timeout: 3600},
	{Proto: 58, OrigSrc: cli6, OrigDst: ep6, OrigSrcPort: 0x78, OrigDstPort: 128 << 8,
		ReplySrc: ep6, ReplyDst: cli6, ReplySrcPort: 0x78, ReplyDstPort: 129 << 8, Timeout: 3600},
}

// expectedConn is what the decoder must make of a fixture entry, apart from
// the fields only the kernel knows (ID, status bits it adds, timestamps).
func expectedConn(e conntracktest.Entry) flow.Conn {
	c := flow.Conn{
		Tuple:     flow.NewTuple(e.OrigSrc, e.ReplySrc, e.OrigSrcPort, e.ReplySrcPort, e.Proto),
		OrigDstIP: e.OrigDst.As16(), OrigDstPort: e.OrigDstPort,
		Zone: e.Zone, Mark: e.Mark, TCPState: flow.TCPState(e.TCPState),
	}
	if e.Proto == flow.ProtoICMP || e.Proto == flow.ProtoICMPv6 {
		c.Tuple.DstPort = e.OrigDstPort
	}
	return c
}

// readFixture returns the netlink messages captured in testdata/name.
func readFixture(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatalf("read fixture (regenerate with go test -tags integration -run TestCaptureFixtures -capture-fixtures): %v", err)
	}
	return b
}

// loadFixtures returns the ctnetlink payloads of every captured message.
func loadFixtures(tb testing.TB) [][]byte {
	var out [][]byte
	for _, name := range []string{"dump.bin", "events.bin"} {
		b := readFixture(tb, name)
		for {
			m, rest, ok, err := nextMsg(b)
			if err != nil {
				tb.Fatalf("%s: %v", name, err)
			}
			if !ok {
				break
			}
			b = rest
			if p, ok := ctPayload(m); ok {
				out = append(out, p)
			}
		}
	}
	return out
}

func TestDecodeCapturedDump(t *testing.T) {
	b := readFixture(t, "dump.bin")
	var got []flow.Conn
	done := false
	for !done {
		m, rest, ok, err := nextMsg(b)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Fatal("captured dump has no NLMSG_DONE")
		}
		b = rest
		if m.typ == nlmsgDone {
			done = true
			continue
		}
		p, ok := ctPayload(m)
		if !ok {
			t.Fatalf("unexpected message type %#x in dump", m.typ)
		}
		var c flow.Conn
		if err := decodeConn(p, &c); err != nil {
			t.Fatalf("decode captured entry: %v", err)
		}
		got = append(got, c)
	}
	if len(got) != len(fixtureEntries) {
		t.Fatalf("captured dump has %d entries, want %d", len(got), len(fixtureEntries))
	}
	for _, e := range fixtureEntries {
		want := expectedConn(e)
		found := false
		for _, c := range got {
			if c.Tuple != want.Tuple {
				continue
			}
			found = true
			kernel := c
			kernel.ID, kernel.Status, kernel.StartNanos = 0, 0, 0
			if kernel != want {
				t.Errorf("%v:\n got %+v\nwant %+v", want.Tuple, kernel, want)
			}
			if c.ID == 0 || c.Status&0x8 == 0 || c.StartNanos == 0 {
				t.Errorf("%v: kernel fields missing: id %d status %#x start %d", want.Tuple, c.ID, c.Status, c.StartNanos)
			}
		}
		if !found {
			t.Errorf("entry %v not in captured dump", want.Tuple)
		}
	}
}

func TestHandleCapturedEvents(t *testing.T) {
	s := &Source{m: mustMetrics(t), filter: newFilter(Config{})}
	var st decodeStats
	var c flow.Conn
	counts := map[EventType]int{}
	var destroyed []flow.Conn
	s.handleEvents(readFixture(t, "events.bin"), &c, &st, func(ev Event) {
		counts[ev.Type]++
		if ev.Type == EventDestroy {
			destroyed = append(destroyed, *ev.Conn)
		}
	})
	if st.errors != 0 {
		t.Fatalf("%d decode errors, first: %v", st.errors, st.firstErr)
	}
	n := len(fixtureEntries)
	if counts[EventNew] != n || counts[EventDestroy] != n {
		t.Errorf("events = %v, want %d new and %d destroy", counts, n, n)
	}
	for _, d := range destroyed {
		if d.StopNanos == 0 || d.StopNanos < d.StartNanos {
			t.Errorf("destroy of %v: start %d stop %d, want a stop time after start", d.Tuple, d.StartNanos, d.StopNanos)
		}
	}
}

func TestFilteredEventsAreNotDelivered(t *testing.T) {
	s := &Source{m: mustMetrics(t), filter: newFilter(Config{Zones: []uint16{5}})}
	var st decodeStats
	var c flow.Conn
	var zones []uint16
	s.handleEvents(readFixture(t, "events.bin"), &c, &st, func(ev Event) { zones = append(zones, ev.Conn.Zone) })
	if len(zones) != 2 || zones[0] != 5 || zones[1] != 5 {
		t.Errorf("delivered zones %v, want the zone-5 entry's new and destroy only", zones)
	}
	if st.filtered != 2*(len(fixtureEntries)-1) {
		t.Errorf("filtered %d, want %d", st.filtered, 2*(len(fixtureEntries)-1))
	}
}
