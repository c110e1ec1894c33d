package ipfixcollect

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// msg builds IPFIX messages for tests.
type msg struct{ b []byte }

func newMsg(domain uint32) *msg {
	m := &msg{b: make([]byte, 16)}
	binary.BigEndian.PutUint16(m.b, 10)
	binary.BigEndian.PutUint32(m.b[4:], 1_763_700_000)
	binary.BigEndian.PutUint32(m.b[12:], domain)
	return m
}

func (m *msg) set(id uint16, records ...[]byte) *msg {
	start := len(m.b)
	m.b = binary.BigEndian.AppendUint16(m.b, id)
	m.b = append(m.b, 0, 0)
	for _, r := range records {
		m.b = append(m.b, r...)
	}
	binary.BigEndian.PutUint16(m.b[start+2:], uint16(len(m.b)-start))
	return m
}

func (m *msg) bytes() []byte {
	binary.BigEndian.PutUint16(m.b[2:], uint16(len(m.b)))
	return m.b
}

type spec struct {
	ent        uint32
	id, length uint16
}

func tmplRecord(id uint16, fields ...spec) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = binary.BigEndian.AppendUint16(b, uint16(len(fields)))
	for _, f := range fields {
		if f.ent == 0 {
			b = binary.BigEndian.AppendUint16(b, f.id)
			b = binary.BigEndian.AppendUint16(b, f.length)
			continue
		}
		b = binary.BigEndian.AppendUint16(b, f.id|0x8000)
		b = binary.BigEndian.AppendUint16(b, f.length)
		b = binary.BigEndian.AppendUint32(b, f.ent)
	}
	return b
}

func withdrawal(id uint16) []byte { return []byte{byte(id >> 8), byte(id), 0, 0} }

var (
	srcV4     = spec{0, 8, 4}
	dstV4     = spec{0, 12, 4}
	pktDelta4 = spec{0, 2, 4} // unsigned64 in reduced-size encoding
	podName   = spec{56506, 101, 65535}
	unknownIE = spec{12345, 7, 3}
	flowEnd   = spec{0, 151, 4}
	flowType  = spec{56506, 137, 1}
)

// simpleTemplate is {sourceIPv4Address, destinationIPv4Address, packetDeltaCount(4)}.
func simpleTemplate(id uint16) []byte { return tmplRecord(id, srcV4, dstV4, pktDelta4) }

func simpleData(n uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{10, 0, 0, 1, 10, 0, 0, 2}, n)
}

type sink struct {
	mu   sync.Mutex
	recs []Record
}

func (s *sink) add(r Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, r.Clone())
}

func (s *sink) all() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Record(nil), s.recs...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func run(t *testing.T, network string) (*Collector, *prometheus.Registry, *sink, context.CancelFunc) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := New(Config{Network: network, Address: "127.0.0.1:0", DrainTimeout: time.Second}, reg)
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, s.add) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return c, reg, &s, stop
}

func counter(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == reason) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestDecodesEveryFieldKindIntoNamedFieldsAndJSON(t *testing.T) {
	c, _, s, _ := run(t, TCP)
	conn, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tmpl := tmplRecord(300, srcV4, dstV4, pktDelta4, podName, unknownIE, flowEnd, flowType)
	data := append(simpleData(42), 4)
	data = append(data, "a\"b\x01"...)
	data = append(data, 0xde, 0xad, 0xbe)
	data = binary.BigEndian.AppendUint32(data, 1_763_700_061)
	data = append(data, 2)
	if _, err := conn.Write(newMsg(7).set(2, tmpl).set(300, data).bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one record", func() bool { return len(s.all()) == 1 })
	r := s.all()[0]
	if r.ObservationDomainID != 7 || r.TemplateID != 300 || r.ExportTime != 1_763_700_000 {
		t.Errorf("record header = domain %d template %d time %d", r.ObservationDomainID, r.TemplateID, r.ExportTime)
	}
	got := string(r.AppendJSON(nil))
	want := `{"sourceIPv4Address":"10.0.0.1","destinationIPv4Address":"10.0.0.2","packetDeltaCount":42,` +
		`"sourcePodName":"a\"b\u0001","ie12345_7":"deadbe","flowEndSeconds":1763700061,"flowType":2}`
	if got != want {
		t.Errorf("JSON:\n got %s\nwant %s", got, want)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(got), &v); err != nil {
		t.Errorf("JSON does not parse: %v", err)
	}
	if f, ok := r.Get("packetDeltaCount"); !ok || f.Interface() != uint64(42) {
		t.Errorf("Get(packetDeltaCount) = %v, %v", f, ok)
	}
	if _, err := r.FlowRecord(); err != nil {
		t.Errorf("FlowRecord: %v", err)
	}
}

func TestMalformedAndOutOfOrderInputIsCountedAndSurvived(t *testing.T) {
	cases := []struct {
		name        string
		datagrams   [][]byte
		wantRecords []uint32 // packetDeltaCount of the records delivered, in order
		wantErrors  map[string]float64
	}{
		{"data before its template is skipped and counted",
			[][]byte{newMsg(1).set(256, simpleData(1)).bytes(), newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(2)).bytes()},
			[]uint32{2}, map[string]float64{"unknown_template": 1}},
		{"garbage is counted and the next message still decodes",
			[][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(3)).bytes()},
			[]uint32{3}, map[string]float64{"malformed": 1}},
		{"a set running past the message end keeps the records before it",
			[][]byte{func() []byte {
				b := newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(4)).set(256, simpleData(5)).bytes()
				binary.BigEndian.PutUint16(b[len(b)-14:], 200) // last set's length
				return b
			}()},
			[]uint32{4}, map[string]float64{"malformed": 1}},
		{"a withdrawn template no longer decodes data",
			[][]byte{newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(6)).bytes(),
				newMsg(1).set(2, withdrawal(256)).set(256, simpleData(7)).bytes()},
			[]uint32{6}, map[string]float64{"unknown_template": 1}},
		{"withdrawing all templates of a domain keeps other domains",
			[][]byte{newMsg(1).set(2, simpleTemplate(256), simpleTemplate(257)).bytes(),
				newMsg(2).set(2, simpleTemplate(256)).bytes(),
				newMsg(1).set(2, withdrawal(2)).set(257, simpleData(8)).bytes(),
				newMsg(2).set(256, simpleData(9)).bytes()},
			[]uint32{9}, map[string]float64{"unknown_template": 1}},
		{"a redefined template decodes with its new layout",
			[][]byte{newMsg(1).set(2, tmplRecord(256, srcV4)).bytes(),
				newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(10)).bytes()},
			[]uint32{10}, nil},
		{"a truncated variable-length field is malformed",
			[][]byte{newMsg(1).set(2, tmplRecord(256, pktDelta4, podName)).set(256, []byte{0, 0, 0, 11, 9, 'x'}).bytes()},
			nil, map[string]float64{"malformed": 1}},
		{"a wrong version is malformed",
			[][]byte{func() []byte { b := newMsg(1).bytes(); b[1] = 9; return b }()},
			nil, map[string]float64{"malformed": 1}},
		{"options templates and unknown set ids are skipped without harm",
			[][]byte{newMsg(1).set(3, append([]byte{1, 44, 0, 1, 0, 1}, 0, 149, 0, 4)).set(300, []byte{0, 0, 0, 5}).set(100, []byte{1, 2}).
				set(2, simpleTemplate(256)).set(256, simpleData(12)).bytes()},
			[]uint32{12}, map[string]float64{"unknown_set": 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, reg, s, _ := run(t, UDP)
			conn, err := net.Dial("udp", c.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			for _, d := range tc.datagrams {
				if _, err := conn.Write(d); err != nil {
					t.Fatal(err)
				}
			}
			// The message counter moves before the message's records reach
			// the callback: wait for both.
			var got []uint32
			waitFor(t, "every datagram and its records", func() bool {
				got = got[:0]
				for _, r := range s.all() {
					if f, ok := r.Get("packetDeltaCount"); ok {
						got = append(got, uint32(f.Uint))
					}
				}
				return counter(t, reg, "flowlens_ipfix_collector_messages_total", "") == float64(len(tc.datagrams)) &&
					len(got) >= len(tc.wantRecords)
			})
			if fmt.Sprint(got) != fmt.Sprint(tc.wantRecords) {
				t.Errorf("records %v, want %v", got, tc.wantRecords)
			}
			for _, reason := range []string{"malformed", "unknown_template", "unknown_set"} {
				if v := counter(t, reg, "flowlens_ipfix_collector_errors_total", reason); v != tc.wantErrors[reason] {
					t.Errorf("errors{reason=%s} = %v, want %v", reason, v, tc.wantErrors[reason])
				}
			}
		})
	}
}

func TestBrokenTCPStreamIsClosedWithoutDisturbingOtherExporters(t *testing.T) {
	c, reg, s, _ := run(t, TCP)
	good, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	bad, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := good.Write(newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(1)).bytes()); err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Write([]byte("this is not IPFIX at all....")); err != nil {
		t.Fatal(err)
	}
	_ = bad.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bad.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("broken stream: read = %v, want EOF (closed by the collector)", err)
	}
	if _, err := good.Write(newMsg(1).set(256, simpleData(2)).bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both records of the good exporter", func() bool { return len(s.all()) == 2 })
	if v := counter(t, reg, "flowlens_ipfix_collector_errors_total", "malformed"); v != 1 {
		t.Errorf("malformed = %v, want 1", v)
	}
}

func TestExporterReconnectingWithNewTemplatesIsDecodedWithThem(t *testing.T) {
	c, _, s, _ := run(t, TCP)
	send := func(m []byte) {
		conn, err := net.Dial("tcp", c.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write(m); err != nil {
			t.Fatal(err)
		}
	}
	send(newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(1)).bytes())
	waitFor(t, "the first record", func() bool { return len(s.all()) == 1 })
	send(newMsg(1).set(2, tmplRecord(256, pktDelta4, flowType)).set(256, []byte{0, 0, 0, 2, 3}).bytes())
	waitFor(t, "the second record", func() bool { return len(s.all()) == 2 })
	r := s.all()[1]
	if len(r.Fields) != 2 || r.Fields[1].Name != "flowType" || r.Fields[1].Uint != 3 {
		t.Errorf("second connection's record = %s, want the new template's fields", r.AppendJSON(nil))
	}
	if _, err := r.FlowRecord(); err != ErrNotFlow {
		t.Errorf("FlowRecord of a record without addresses: err = %v, want ErrNotFlow", err)
	}
}

func TestManyExportersAtOnce(t *testing.T) {
	c, _, s, _ := run(t, TCP)
	const exporters, each = 10, 100
	var wg sync.WaitGroup
	for i := range exporters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", c.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			m := newMsg(uint32(i)).set(2, simpleTemplate(256))
			recs := make([][]byte, each)
			for j := range recs {
				recs[j] = simpleData(uint32(i*each + j))
			}
			if _, err := conn.Write(m.set(256, recs...).bytes()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "every record", func() bool { return len(s.all()) == exporters*each })
	seen := map[uint64]bool{}
	for _, r := range s.all() {
		f, _ := r.Get("packetDeltaCount")
		seen[f.Uint] = true
	}
	if len(seen) != exporters*each {
		t.Errorf("%d distinct records, want %d", len(seen), exporters*each)
	}
}

func TestShutdownDeliversWhatExportersAlreadySent(t *testing.T) {
	c, reg, s, stop := run(t, TCP)
	conn, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := newMsg(1).set(2, simpleTemplate(256))
	if _, err := conn.Write(m.bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the template", func() bool { return counter(t, reg, "flowlens_ipfix_collector_messages_total", "") == 1 })
	const n = 2000
	for i := range n {
		if _, err := conn.Write(newMsg(1).set(256, simpleData(uint32(i))).bytes()); err != nil {
			t.Fatal(err)
		}
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	// The collector closes its side first; an exporter then sees EOF.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("exporter read = %v, want EOF once the collector stops", err)
	}
	conn.Close()
	<-stopped
	if got := len(s.all()); got != n {
		t.Errorf("delivered %d of %d records sent before shutdown", got, n)
	}
}

func TestParseListen(t *testing.T) {
	cases := []struct {
		in, network, addr, errPart string
	}{
		{"tcp://127.0.0.1:4739", "tcp", "127.0.0.1:4739", ""},
		{"udp://[::1]:0", "udp", "[::1]:0", ""},
		{"tls://0.0.0.0:4740", "tls", "0.0.0.0:4740", ""},
		{"sctp://127.0.0.1:4739", "", "", "scheme"},
		{"127.0.0.1:4739", "", "", "scheme"},
		{"tcp://127.0.0.1", "", "", "port"},
		{"tcp://127.0.0.1:4739/path", "", "", "scheme://host:port"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			n, a, err := ParseListen(tc.in)
			if tc.errPart != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errPart) {
					t.Errorf("err = %v, want one mentioning %q", err, tc.errPart)
				}
				return
			}
			if err != nil || n != tc.network || a != tc.addr {
				t.Errorf("= %q %q %v, want %q %q", n, a, err, tc.network, tc.addr)
			}
		})
	}
}

func TestNewNamesTheBadField(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"unknown network", Config{Network: "sctp", Address: "127.0.0.1:0"}, "Network"},
		{"address without port", Config{Network: TCP, Address: "127.0.0.1"}, "Address"},
		{"TLS without a certificate", Config{Network: TLS, Address: "127.0.0.1:0"}, "CertFile"},
		{"negative drain timeout", Config{Network: TCP, Address: "127.0.0.1:0", DrainTimeout: -1}, "DrainTimeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.cfg, nil)
			if err == nil {
				c.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New() error = %v, want one naming %s", err, tc.want)
			}
		})
	}
}
