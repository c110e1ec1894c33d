package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"sync"

	"github.com/flowlens/flowlens/pkg/flow"
)

// record is one flow record as `flowlens collect` prints it: a JSON object
// keyed by IPFIX IE name.
type record map[string]any

// str returns a string field, or "" when absent.
func (r record) str(key string) string {
	switch v := r[key].(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	}
	return ""
}

// num returns an unsigned field; ok is false when absent or not a number.
func (r record) num(key string) (uint64, bool) {
	var s string
	switch v := r[key].(type) {
	case json.Number:
		s = v.String()
	case string:
		s = v
	default:
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

func (r record) addr(v4, v6 string) netip.Addr {
	for _, key := range []string{v4, v6} {
		if a, err := netip.ParseAddr(r.str(key)); err == nil {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// src and dst are the record's endpoints; for a Service connection dst is
// the backend pod and destinationClusterIPv4 holds the VIP.
func (r record) src() netip.AddrPort {
	p, _ := r.num("sourceTransportPort")
	return netip.AddrPortFrom(r.addr("sourceIPv4Address", "sourceIPv6Address"), uint16(p))
}

func (r record) dst() netip.AddrPort {
	p, _ := r.num("destinationTransportPort")
	return netip.AddrPortFrom(r.addr("destinationIPv4Address", "destinationIPv6Address"), uint16(p))
}

func (r record) proto() uint8 {
	p, _ := r.num("protocolIdentifier")
	return uint8(p)
}

// key identifies the connection a record belongs to.
func (r record) key() flowKey { return flowKey{proto: r.proto(), src: r.src()} }

// flowKey is what the demo knows of each of its connections before any
// record arrives: protocol and the client's address and port (unique while
// the demo runs).
type flowKey struct {
	proto uint8
	src   netip.AddrPort
}

func (e expected) key() flowKey { return flowKey{proto: e.Proto, src: e.Src} }

// endReason names flowEndReason, whether it arrives as the IANA number or a
// name.
func (r record) endReason() string {
	if n, ok := r.num("flowEndReason"); ok {
		return flow.EndReason(n).String()
	}
	return r.str("flowEndReason")
}

// ended reports whether the record is the connection's last.
func (r record) ended() bool {
	n, ok := r.num("flowEndReason")
	return ok && (flow.EndReason(n) == flow.EndOfFlow || flow.EndReason(n) == flow.EndIdleTimeout || flow.EndReason(n) == flow.EndForced)
}

// recordLog keeps what the collector printed, latest record per connection.
type recordLog struct {
	mu      sync.Mutex
	total   int
	bad     int
	latest  map[flowKey]record
	updated chan struct{} // receives (non-blocking) after each record
}

func newRecordLog() *recordLog {
	return &recordLog{latest: make(map[flowKey]record), updated: make(chan struct{}, 1)}
}

// read consumes JSON lines until r ends; a line that is not a JSON object
// is counted and skipped, never fatal.
func (l *recordLog) read(r io.Reader, raw io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if raw != nil {
			_, _ = raw.Write(append(line, '\n'))
		}
		l.add(line)
	}
}

func (l *recordLog) add(line []byte) {
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	var rec record
	err := d.Decode(&rec)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil || rec == nil {
		l.bad++
		return
	}
	l.total++
	k := rec.key()
	// Keep the record with the largest totals: records of one connection
	// can arrive out of order across reconnects.
	prev, ok := l.latest[k]
	switch {
	case !ok:
		l.latest[k] = rec
	case !olderThan(rec, prev):
		inheritL7(rec, prev)
		l.latest[k] = rec
	default:
		inheritL7(prev, rec)
	}
	select {
	case l.updated <- struct{}{}:
	default:
	}
}

// l7Keys are the L7 fields; each is exported on one record of a connection
// (transactions and DNS once, the app protocol and TLS on every record).
var l7Keys = []string{"appProtocolName", "httpVals", "dnsQueryName", "dnsQueryType",
	"dnsResponseCode", "dnsAnswers", "tlsServerName", "tlsVersion"}

// inheritL7 gives dst the L7 fields that only src of the same connection
// carries; HTTP transactions of both are merged into one object.
func inheritL7(dst, src record) {
	for _, key := range l7Keys {
		s := src.str(key)
		switch d := dst.str(key); {
		case s == "" || s == d:
		case d == "":
			dst[key] = s
		case key == "httpVals":
			var a, b map[string]json.RawMessage
			if json.Unmarshal([]byte(d), &a) == nil && json.Unmarshal([]byte(s), &b) == nil {
				for id, v := range b {
					if _, ok := a[id]; !ok {
						a[id] = v
					}
				}
				if m, err := json.Marshal(a); err == nil {
					dst[key] = string(m)
				}
			}
		}
	}
}

// olderThan reports whether a carries smaller totals than b.
func olderThan(a, b record) bool {
	ap, _ := a.num("packetTotalCount")
	bp, _ := b.num("packetTotalCount")
	ar, _ := a.num("reversePacketTotalCount")
	br, _ := b.num("reversePacketTotalCount")
	return ap+ar < bp+br
}

// snapshot returns the record counts and a copy of the latest records.
func (l *recordLog) snapshot() (total, bad int, latest map[flowKey]record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	latest = make(map[flowKey]record, len(l.latest))
	for k, v := range l.latest {
		latest[k] = v
	}
	return l.total, l.bad, latest
}

// progress says how many of want have a record and how many have ended.
func progress(want []expected, latest map[flowKey]record) (seen, ended int) {
	for _, e := range want {
		if r, ok := latest[e.key()]; ok {
			seen++
			if r.ended() {
				ended++
			}
		}
	}
	return seen, ended
}

func describe(k flowKey) string {
	return fmt.Sprintf("%s from %s", flow.ProtoName(k.proto), k.src)
}
