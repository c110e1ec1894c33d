package ipfixcollect

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// runWith starts a collector with cfg (Address defaulted) until the test
// ends.
func runWith(t *testing.T, cfg Config) (*Collector, *prometheus.Registry, *sink) {
	t.Helper()
	if cfg.Address == "" {
		cfg.Address = "127.0.0.1:0"
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = time.Second
	}
	reg := prometheus.NewRegistry()
	c, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, s.add) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c, reg, &s
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return 0
}

// zeroLengthTemplate is a template of one 1-byte field followed by n fields
// of length 0: before the fix every data byte decoded as a record of n+1
// fields.
func zeroLengthTemplate(id uint16, n int) []byte {
	fields := []spec{{0, 4, 1}} // protocolIdentifier
	for range n {
		fields = append(fields, spec{0, 210, 0}) // paddingOctets, length 0
	}
	return tmplRecord(id, fields...)
}

func TestZeroLengthTemplateFieldsAreRejectedSoOneMessageCannotDecodeIntoMillionsOfFields(t *testing.T) {
	s := newSession(netip.AddrPort{}, sessionLimits{maxTemplates: 10, maxTemplateFields: 1 << 20, maxFields: 1 << 20})
	data := make([]byte, 2000)
	m := newMsg(1).set(2, zeroLengthTemplate(256, 1000), simpleTemplate(257)).set(256, data).set(257, simpleData(1)).bytes()
	fields, records := 0, 0
	st, err := s.message(m, func(r *Record) { records++; fields += len(r.Fields) })
	if err != nil {
		t.Fatalf("message: %v (a bad template must not cost the rest of the message)", err)
	}
	if fields > len(m) {
		t.Errorf("decoded %d fields from a %d-byte message", fields, len(m))
	}
	if st.zeroLength != 1 || st.unknownTemplates != 1 || records != 1 {
		t.Errorf("zero-length templates %d, unknown-template data sets %d, records %d; want 1, 1, 1 (template 257's)",
			st.zeroLength, st.unknownTemplates, records)
	}
	// A template redefined with a zero-length field is gone, not kept in
	// its old layout.
	s.message(newMsg(1).set(2, zeroLengthTemplate(257, 1)).bytes(), func(*Record) {})
	if _, ok := s.templates[templateKey{1, 257}]; ok {
		t.Error("template 257 still defined after an invalid redefinition")
	}
}

func TestZeroLengthFieldRejectionIsCountedByTheCollector(t *testing.T) {
	c, reg, s := runWith(t, Config{Network: UDP})
	conn, err := net.Dial("udp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The size of the finding: 16,000 zero-length fields, then 64 KiB of
	// data, which decoded as ~65k records of 16k fields each.
	if _, err := conn.Write(newMsg(1).set(2, zeroLengthTemplate(256, 16000)).bytes()); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(newMsg(1).set(256, make([]byte, 65000)).bytes()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "both messages", func() bool { return counter(t, reg, "flowlens_ipfix_collector_messages_total", "") == 2 })
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("two messages took %s to decode", el)
	}
	if v := counter(t, reg, "flowlens_ipfix_collector_errors_total", "zero_length_field"); v != 1 {
		t.Errorf("errors{zero_length_field} = %v, want 1", v)
	}
	if v := counter(t, reg, "flowlens_ipfix_collector_errors_total", "unknown_template"); v != 1 {
		t.Errorf("errors{unknown_template} = %v, want 1 (the data set of the rejected template)", v)
	}
	if n := len(s.all()); n != 0 {
		t.Errorf("%d records delivered, want 0", n)
	}
}

func TestDecodedFieldsPerMessageAreBoundedAndTheRefusalCounted(t *testing.T) {
	c, reg, s := runWith(t, Config{Network: UDP, MaxFieldsPerMessage: 10})
	conn, err := net.Dial("udp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Three fields per record: the fourth record would be the 12th field.
	m := newMsg(1).set(2, simpleTemplate(256)).set(256, simpleData(1), simpleData(2), simpleData(3), simpleData(4), simpleData(5)).bytes()
	if _, err := conn.Write(m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message", func() bool { return counter(t, reg, "flowlens_ipfix_collector_messages_total", "") == 1 })
	if n := len(s.all()); n != 3 {
		t.Errorf("%d records delivered, want the 3 within the bound", n)
	}
	if v := counter(t, reg, "flowlens_ipfix_collector_errors_total", "field_limit"); v != 1 {
		t.Errorf("errors{field_limit} = %v, want 1", v)
	}
	// The bound is per message: the next one decodes again.
	if _, err := conn.Write(newMsg(1).set(256, simpleData(6)).bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the next message's record", func() bool { return len(s.all()) == 4 })
}

func TestTemplateFloodOnOneSessionStopsAtTheBoundAndIsCounted(t *testing.T) {
	c, reg, s := runWith(t, Config{Network: TCP, MaxTemplatesPerSession: 4, MaxTemplateFieldsPerSession: 1000})
	conn, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var tmpls [][]byte
	for id := uint16(256); id < 266; id++ {
		tmpls = append(tmpls, simpleTemplate(id))
	}
	write := func(b []byte) {
		t.Helper()
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	write(newMsg(1).set(2, tmpls...).bytes())
	// Redefining a kept template is not a new one; data for a kept and a
	// refused template.
	write(newMsg(1).set(2, simpleTemplate(259)).set(259, simpleData(1)).set(265, simpleData(2)).bytes())
	waitFor(t, "both messages", func() bool { return counter(t, reg, "flowlens_ipfix_collector_messages_total", "") == 2 })
	if v := counter(t, reg, "flowlens_ipfix_collector_refused_total", "template_limit"); v != 6 {
		t.Errorf("refused{template_limit} = %v, want 6", v)
	}
	if got := s.all(); len(got) != 1 || got[0].TemplateID != 259 {
		t.Errorf("records %v, want one of template 259", got)
	}
	if v := counter(t, reg, "flowlens_ipfix_collector_errors_total", "unknown_template"); v != 1 {
		t.Errorf("errors{unknown_template} = %v, want 1 (template 265 was refused)", v)
	}
	// A withdrawal makes room.
	write(newMsg(1).set(2, withdrawal(256)).set(2, simpleTemplate(300)).set(300, simpleData(3)).bytes())
	waitFor(t, "the record of the template defined after a withdrawal", func() bool { return len(s.all()) == 2 })
}

func TestTemplateFieldsPerSessionAreBounded(t *testing.T) {
	s := newSession(netip.AddrPort{}, sessionLimits{maxTemplates: 100, maxTemplateFields: 10, maxFields: 1 << 20})
	// 3 fields each: 256, 257, 258 fit (9), 259 does not.
	st, err := s.message(newMsg(1).set(2, simpleTemplate(256), simpleTemplate(257), simpleTemplate(258), simpleTemplate(259)).bytes(), func(*Record) {})
	if err != nil {
		t.Fatal(err)
	}
	if st.templateFieldsRefused != 1 || len(s.templates) != 3 || s.templateFields != 9 {
		t.Errorf("refused %d, kept %d templates of %d fields; want 1, 3, 9", st.templateFieldsRefused, len(s.templates), s.templateFields)
	}
	// Redefining 258 with one field frees two: a 1-field 259 then fits.
	st, _ = s.message(newMsg(1).set(2, tmplRecord(258, srcV4), tmplRecord(259, srcV4)).bytes(), func(*Record) {})
	if st.templateFieldsRefused != 0 || len(s.templates) != 4 || s.templateFields != 8 {
		t.Errorf("after redefinition: refused %d, kept %d templates of %d fields; want 0, 4, 8", st.templateFieldsRefused, len(s.templates), s.templateFields)
	}
	// Withdrawing everything of the domain frees everything.
	s.message(newMsg(1).set(2, withdrawal(2)).bytes(), func(*Record) {})
	if len(s.templates) != 0 || s.templateFields != 0 {
		t.Errorf("after withdrawing all: %d templates of %d fields", len(s.templates), s.templateFields)
	}
}

func TestConnectionBeyondMaxConnectionsIsRefusedAndCounted(t *testing.T) {
	c, reg, s := runWith(t, Config{Network: TCP, MaxConnections: 2})
	dial := func() net.Conn {
		t.Helper()
		conn, err := net.Dial("tcp", c.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	a, b := dial(), dial()
	for i, conn := range []net.Conn{a, b} {
		if _, err := conn.Write(newMsg(uint32(i)).set(2, simpleTemplate(256)).set(256, simpleData(uint32(i))).bytes()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "two records", func() bool { return len(s.all()) == 2 })
	third := dial()
	_ = third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("connection 3 of 2: read = %v, want EOF (refused)", err)
	}
	if v := counter(t, reg, "flowlens_ipfix_collector_refused_total", "connection_limit"); v != 1 {
		t.Errorf("refused{connection_limit} = %v, want 1", v)
	}
	if v := gauge(t, reg, "flowlens_ipfix_collector_connections"); v != 2 {
		t.Errorf("open connections = %v, want 2", v)
	}
	// A closed connection frees its slot.
	a.Close()
	waitFor(t, "the closed connection to be gone", func() bool { return gauge(t, reg, "flowlens_ipfix_collector_connections") == 1 })
	d := dial()
	if _, err := d.Write(newMsg(9).set(2, simpleTemplate(256)).set(256, simpleData(9)).bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the record of the connection that took the freed slot", func() bool { return len(s.all()) == 3 })
}

func TestIdleConnectionIsClosedAfterIdleTimeoutAndCounted(t *testing.T) {
	const idle = 300 * time.Millisecond
	c, reg, s := runWith(t, Config{Network: TCP, IdleTimeout: idle, DrainTimeout: 2 * time.Second})
	quiet, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	half, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	if _, err := quiet.Write(newMsg(1).set(2, simpleTemplate(256)).bytes()); err != nil {
		t.Fatal(err)
	}
	// Half of a message: a header announcing 1000 bytes, and 10 of them.
	partial := newMsg(2).bytes()
	binary.BigEndian.PutUint16(partial[2:], 1000)
	if _, err := half.Write(append(partial, make([]byte, 10)...)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for name, conn := range map[string]net.Conn{"idle": quiet, "half-sent": half} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("%s connection: read = %v, want EOF after the idle timeout", name, err)
			}
			if el := time.Since(start); el < idle-50*time.Millisecond {
				t.Errorf("%s connection closed after %s, before the idle timeout %s", name, el, idle)
			}
		}()
	}
	wg.Wait()
	if v := counter(t, reg, "flowlens_ipfix_collector_idle_closed_total", ""); v != 2 {
		t.Errorf("idle_closed = %v, want 2", v)
	}
	// The close is orderly: what the exporter sends before its own close
	// is still read, as on shutdown.
	if _, err := quiet.Write(newMsg(1).set(256, simpleData(7)).bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the record sent after the collector's close", func() bool { return len(s.all()) == 1 })
	quiet.Close()
	half.Close()
	waitFor(t, "no open connections", func() bool { return gauge(t, reg, "flowlens_ipfix_collector_connections") == 0 })
}

func TestUDPSessionsAreBoundedOldestFirst(t *testing.T) {
	c, reg, s := runWith(t, Config{Network: UDP, MaxUDPSessions: 2})
	var conns []net.Conn
	for i := range 3 {
		conn, err := net.Dial("udp", c.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, conn)
		if _, err := conn.Write(newMsg(uint32(i)).set(2, simpleTemplate(256)).bytes()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the template", func() bool {
			return counter(t, reg, "flowlens_ipfix_collector_messages_total", "") == float64(i+1)
		})
	}
	if v := counter(t, reg, "flowlens_ipfix_collector_udp_sessions_evicted_total", ""); v != 1 {
		t.Errorf("evicted = %v, want 1", v)
	}
	// The kept sessions decode; the evicted one is a new session without
	// templates (which evicts the then oldest, session 1, in turn).
	for _, i := range []int{1, 2, 0} {
		if _, err := conns[i].Write(newMsg(uint32(i)).set(256, simpleData(uint32(i))).bytes()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all six messages", func() bool { return counter(t, reg, "flowlens_ipfix_collector_messages_total", "") == 6 })
	if got := len(s.all()); got != 2 {
		t.Errorf("%d records, want 2 (the first session's templates were forgotten)", got)
	}
	if v := counter(t, reg, "flowlens_ipfix_collector_errors_total", "unknown_template"); v != 1 {
		t.Errorf("errors{unknown_template} = %v, want 1", v)
	}
}
