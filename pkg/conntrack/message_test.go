package conntrack

import (
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
)

// requestAttrs returns the attributes of a dump request by type.
func requestAttrs(t *testing.T, req []byte) map[uint16][]byte {
	t.Helper()
	m, rest, ok, err := nextMsg(req)
	if err != nil || !ok || len(rest) != 0 {
		t.Fatalf("request is not one netlink message: ok=%v rest=%d err=%v", ok, len(rest), err)
	}
	if m.typ != nfnlSubsysCTNetlink<<8|ipctnlMsgCTGet || m.flags != nlmFRequest|nlmFDump || m.seq != 7 {
		t.Fatalf("header type %#x flags %#x seq %d, want ctnetlink GET dump seq 7", m.typ, m.flags, m.seq)
	}
	if m.payload[0] != 0 {
		t.Errorf("family %d, want AF_UNSPEC so IPv4 and IPv6 come in one dump", m.payload[0])
	}
	out := map[uint16][]byte{}
	a := attrs{b: m.payload[nfgenHdrLen:]}
	for a.next() {
		out[a.typ] = a.val
	}
	if a.err != nil {
		t.Fatal(a.err)
	}
	return out
}

func TestDumpRequest(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want map[uint16][]byte
	}{
		{"no filter sends no attributes", Config{}, map[uint16][]byte{}},
		{"mark filter is sent masked, with its mask, for the kernel to apply",
			Config{Mark: 0x40, MarkMask: 0xf0},
			map[uint16][]byte{ctaMark: {0, 0, 0, 0x40}, ctaMarkMask: {0, 0, 0, 0xf0}}},
		{"a single zone is filtered in the kernel",
			Config{Zones: []uint16{0x105}},
			map[uint16][]byte{ctaZone: {1, 5}}},
		{"several zones are left to the decoder", Config{Zones: []uint16{1, 2}}, map[uint16][]byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := requestAttrs(t, dumpRequest(tt.cfg, 7))
			if len(got) != len(tt.want) {
				t.Fatalf("attributes %v, want %v", got, tt.want)
			}
			for typ, v := range tt.want {
				if string(got[typ]) != string(v) {
					t.Errorf("attribute %d = %x, want %x", typ, got[typ], v)
				}
			}
		})
	}
}

func TestFilterMatch(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		zone uint16
		mark uint32
		want bool
	}{
		{"empty config takes everything", Config{}, 9, 0xffff, true},
		{"listed zone passes", Config{Zones: []uint16{3, 65535}}, 65535, 0, true},
		{"unlisted zone is dropped", Config{Zones: []uint16{3}}, 4, 0, false},
		{"zone 0 must be listed once zones are given", Config{Zones: []uint16{3}}, 0, 0, false},
		{"mark compared under the mask only", Config{Mark: 0x10, MarkMask: 0xf0}, 0, 0x1f, true},
		{"mark differing under the mask is dropped", Config{Mark: 0x10, MarkMask: 0xf0}, 0, 0x20, false},
		{"zero mark with a mask selects unmarked", Config{MarkMask: 0xff}, 0, 0x100, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFilter(tt.cfg)
			if got := f.match(tt.zone, tt.mark); got != tt.want {
				t.Errorf("match(zone %d, mark %#x) = %v, want %v", tt.zone, tt.mark, got, tt.want)
			}
		})
	}
}

func TestEventTypeFromMessage(t *testing.T) {
	tests := []struct {
		name  string
		typ   uint16
		flags uint16
		want  EventType
		ok    bool
	}{
		{"NEW with create|excl is a new connection", nfnlSubsysCTNetlink<<8 | ipctnlMsgCTNew, nlmFCreate | nlmFExcl, EventNew, true},
		{"NEW without create is an update", nfnlSubsysCTNetlink<<8 | ipctnlMsgCTNew, 0, EventUpdate, true},
		{"DELETE is a destroy", nfnlSubsysCTNetlink<<8 | ipctnlMsgCTDelete, 0, EventDestroy, true},
		{"expectation subsystem is ignored", 2<<8 | ipctnlMsgCTNew, nlmFCreate, 0, false}, // NFNL_SUBSYS_CTNETLINK_EXP
		{"GET is not an event", nfnlSubsysCTNetlink<<8 | ipctnlMsgCTGet, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := eventType(nlMsg{typ: tt.typ, flags: tt.flags})
			if got != tt.want || ok != tt.ok {
				t.Errorf("eventType = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestNextMsg(t *testing.T) {
	two := conntracktest.AppendMessage(nil, 0, 0, 1, conntracktest.SyntheticEntry(0))
	two = conntracktest.AppendMessage(two, 2, 0, 2, conntracktest.SyntheticEntry(3))
	m, rest, ok, err := nextMsg(two)
	if err != nil || !ok || m.seq != 1 {
		t.Fatalf("first message: seq %d ok %v err %v", m.seq, ok, err)
	}
	m, rest, ok, err = nextMsg(rest)
	if err != nil || !ok || m.seq != 2 || m.typ&0xff != 2 {
		t.Fatalf("second message: seq %d type %#x ok %v err %v", m.seq, m.typ, ok, err)
	}
	if _, _, ok, err = nextMsg(rest); ok || err != nil {
		t.Fatalf("after the last message: ok %v err %v", ok, err)
	}

	bad := append([]byte{}, two[:20]...)
	binary.NativeEndian.PutUint32(bad, 1000)
	if _, _, _, err := nextMsg(bad); !errors.Is(err, errMessageTruncated) {
		t.Errorf("length beyond the buffer: err %v, want %v", err, errMessageTruncated)
	}
	if _, _, _, err := nextMsg(two[:10]); !errors.Is(err, errMessageTruncated) {
		t.Errorf("short header: err %v, want %v", err, errMessageTruncated)
	}
}

func TestErrnoOf(t *testing.T) {
	neg := binary.NativeEndian.AppendUint32(nil, uint32(0xffffffff-uint32(syscall.EPERM)+1))
	if err := errnoOf(neg); !errors.Is(err, syscall.EPERM) {
		t.Errorf("errnoOf(-EPERM) = %v", err)
	}
	if err := errnoOf(make([]byte, 4)); err != nil {
		t.Errorf("errnoOf(0) = %v, want nil (ACK)", err)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"zero config is the agent's own namespace, all entries", Config{}, false},
		{"missing namespace file", Config{NetNSPath: "/nonexistent/netns"}, true},
		{"mark without mask", Config{Mark: 1}, true},
		{"mark bits outside the mask", Config{Mark: 0x100, MarkMask: 0xff}, true},
		{"negative timeout", Config{DumpTimeout: -1}, true},
		{"mark inside the mask", Config{Mark: 0x10, MarkMask: 0xff}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg, nil)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New error = %v, want error %v", err, tt.wantErr)
			}
			if s != nil {
				s.Close()
			}
		})
	}
}

func TestMetricsRegisterWithFlowlensNames(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.events[EventDestroy].Inc()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]int{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "flowlens_conntrack_") {
			t.Errorf("metric %s lacks the flowlens_conntrack_ prefix", mf.GetName())
		}
		series[mf.GetName()] = len(mf.GetMetric())
	}
	if series["flowlens_conntrack_events_total"] != 3 {
		t.Errorf("events series = %d, want new/update/destroy", series["flowlens_conntrack_events_total"])
	}
	if len(series) != 10 {
		t.Errorf("%d metrics registered, want 10: %v", len(series), series)
	}
	if _, err := newMetrics(reg); err == nil {
		t.Error("registering twice on one registry succeeded; want a duplicate error")
	}
}
