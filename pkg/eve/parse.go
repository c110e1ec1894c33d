package eve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/flowlens/flowlens/pkg/flow"
)

// rawRecord is the subset of an EVE record the parser reads. Its json tags
// (and those of the types it holds) are the one declaration of the keys:
// the scanner derives its tables from them (fields.go), and the tests
// decode with encoding/json through the same tags for comparison. The tag
// eve:"intern" marks strings from a small known set (knownNames), which
// the scanner reuses instead of allocating. Fields whose JSON type is
// wrong (a string port, an object where a string was expected) are left
// zero rather than rejecting the line: Suricata's schema drifts between
// versions and one odd field must not cost the rest.
type rawRecord struct {
	Timestamp string   `json:"timestamp"`
	FlowID    flexUint `json:"flow_id"`
	EventType string   `json:"event_type" eve:"intern"`
	SrcIP     string   `json:"src_ip"`
	SrcPort   flexUint `json:"src_port"`
	DestIP    string   `json:"dest_ip"`
	DestPort  flexUint `json:"dest_port"`
	Proto     string   `json:"proto" eve:"intern"`
	TxID      flexUint `json:"tx_id"`
	AppProto  string   `json:"app_proto" eve:"intern"`
	HTTP      *rawHTTP `json:"http"`
	DNS       *rawDNS  `json:"dns"`
	TLS       *rawTLS  `json:"tls"`
}

type rawHTTP struct {
	Hostname    string   `json:"hostname"`
	URL         string   `json:"url"`
	UserAgent   string   `json:"http_user_agent"`
	ContentType string   `json:"http_content_type"`
	Method      string   `json:"http_method"`
	Protocol    string   `json:"protocol"`
	Status      flexUint `json:"status"`
	Length      flexUint `json:"length"`
	Version     string   `json:"version"`
	// Headers are only needed for HTTP/2 records, which log the request
	// line as pseudo-headers; keeping them as spans of the input avoids
	// decoding (and allocating) them for every HTTP/1 record.
	RequestHeaders  span `json:"request_headers"`
	ResponseHeaders span `json:"response_headers"`
}

type rawHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type rawDNS struct {
	Version flexUint        `json:"version"`
	Type    string          `json:"type"`
	ID      flexUint        `json:"id"`
	TxID    flexUint        `json:"tx_id"`
	RRName  string          `json:"rrname"`
	RRType  string          `json:"rrtype"`
	RCode   string          `json:"rcode"`
	RData   string          `json:"rdata"` // v1: one line per answer
	Queries []rawDNSRecord  `json:"queries"`
	Answers []rawDNSRecord  `json:"answers"`
	Grouped map[string]span `json:"grouped"`
}

type rawDNSRecord struct {
	RRName string `json:"rrname"`
	RRType string `json:"rrtype"`
	RData  string `json:"rdata"`
}

type rawTLS struct {
	SNI     string  `json:"sni"`
	Version string  `json:"version"`
	JA3     rawHash `json:"ja3"`
	JA3S    rawHash `json:"ja3s"`
	JA4     string  `json:"ja4"`
}

type rawHash struct {
	Hash string `json:"hash"`
}

// span keeps a JSON value as a slice of the input line without copying. It
// is only valid during ParseLine, which decodes it before returning.
type span []byte

func (s *span) UnmarshalJSON(b []byte) error {
	*s = b
	return nil
}

// flexUint accepts a JSON number, a numeric string or null; anything else
// leaves it unset. Suricata writes numbers, but hand-edited and older files
// do not always.
type flexUint struct {
	v   uint64
	set bool
}

func (f *flexUint) UnmarshalJSON(b []byte) error {
	if len(b) > 1 && b[0] == '"' {
		b = b[1 : len(b)-1]
	}
	v, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		*f = flexUint{}
		return nil
	}
	*f = flexUint{v: v, set: true}
	return nil
}

// Timestamps carry the sensor's UTC offset without a colon
// ("2016-01-02T19:08:01.310448+0000"); RFC 3339 is accepted too.
const eveTimeLayout = "2006-01-02T15:04:05.999999999-0700"

// ParseLine parses one EVE record. A line that is not an Event returns a
// *RejectError naming the Reason. It never panics, whatever the input.
func ParseLine(line []byte) (Event, error) {
	// JSON whitespace only: bytes.TrimSpace would also accept U+00A0 etc.
	line = bytes.Trim(line, " \t\r\n")
	if len(line) == 0 {
		return Event{}, &RejectError{Reason: ReasonEmpty}
	}
	var raw rawRecord
	if err := decodeRecord(line, &raw); err != nil {
		return Event{}, &RejectError{Reason: ReasonInvalidJSON, Err: err}
	}
	if raw.EventType == "" {
		return Event{}, &RejectError{Reason: ReasonNoEventType}
	}
	if !KnownEventType(raw.EventType) {
		return Event{}, &RejectError{Reason: ReasonUnknownEventType, Err: fmt.Errorf("event_type %q", truncate(raw.EventType, 64))}
	}
	ts, err := parseTime(raw.Timestamp)
	if err != nil {
		return Event{}, &RejectError{Reason: ReasonBadTimestamp, Err: err}
	}
	tuple, err := tupleOf(&raw)
	if err != nil {
		return Event{}, &RejectError{Reason: ReasonNoTuple, Err: err}
	}
	ev := Event{
		Time:    ts,
		FlowID:  raw.FlowID.v,
		Tuple:   tuple,
		Type:    raw.EventType,
		TxID:    raw.TxID.v,
		HasTxID: raw.TxID.set,
	}
	ev.AppProto = appProtoOf(&raw)
	switch raw.EventType {
	case "http":
		if raw.HTTP != nil {
			ev.HTTP = httpOf(raw.HTTP, raw.TxID.v)
			if ev.HTTP.Version == "2" {
				ev.AppProto = "http2"
			}
		}
	case "dns":
		if raw.DNS != nil {
			ev.DNS = dnsOf(raw.DNS)
			if !ev.HasTxID && raw.DNS.TxID.set {
				ev.TxID, ev.HasTxID = raw.DNS.TxID.v, true
			}
		}
	case "tls":
		if raw.TLS != nil {
			ev.TLS = &TLS{
				SNI:     raw.TLS.SNI,
				Version: raw.TLS.Version,
				JA3:     raw.TLS.JA3.Hash,
				JA3S:    raw.TLS.JA3S.Hash,
				JA4:     raw.TLS.JA4,
			}
		}
	}
	return ev, nil
}

// appProtoOf decides which records name the flow's application protocol:
// an app-layer record by its type, a flow/netflow record by its app_proto
// field (unless detection failed). Alerts, anomalies and fileinfo records
// also carry app_proto, but they are side effects of a transaction that is
// logged on its own, so they add nothing and are not used; stats, packet and
// similar records never have one.
func appProtoOf(raw *rawRecord) string {
	if p, ok := appLayerTypes[raw.EventType]; ok {
		return p
	}
	switch raw.EventType {
	case "flow", "netflow":
		switch raw.AppProto {
		case "", "failed", "unknown":
			return ""
		}
		return raw.AppProto
	}
	return ""
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("no timestamp")
	}
	t, err := time.Parse(eveTimeLayout, s)
	if err == nil {
		return t, nil
	}
	if t, err2 := time.Parse(time.RFC3339Nano, s); err2 == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("timestamp %q: %w", truncate(s, 64), err)
}

// protoNumbers maps the names Suricata writes in "proto" (its protocol
// table's names) to IP protocol numbers; unknown protocols are written as
// the number itself.
var protoNumbers = map[string]uint8{
	"TCP":       flow.ProtoTCP,
	"UDP":       flow.ProtoUDP,
	"ICMP":      flow.ProtoICMP,
	"IPv6-ICMP": flow.ProtoICMPv6,
	"SCTP":      flow.ProtoSCTP,
	"IGMP":      2,
	"IP-in-IP":  4,
	"IPv6":      41,
	"IPv6-Frag": 44,
	"GRE":       47,
	"ESP":       50,
	"AH":        51,
	"OSPF":      89,
	"DDX":       116,
	"UDPLite":   136,
}

func tupleOf(raw *rawRecord) (flow.Tuple, error) {
	if raw.SrcIP == "" || raw.DestIP == "" {
		return flow.Tuple{}, errors.New("no src_ip/dest_ip")
	}
	src, err := netip.ParseAddr(raw.SrcIP)
	if err != nil {
		return flow.Tuple{}, fmt.Errorf("src_ip: %w", err)
	}
	dst, err := netip.ParseAddr(raw.DestIP)
	if err != nil {
		return flow.Tuple{}, fmt.Errorf("dest_ip: %w", err)
	}
	// Zones (fe80::1%eth0) never appear in EVE and would not key a tuple.
	if src.Zone() != "" || dst.Zone() != "" {
		return flow.Tuple{}, errors.New("address with zone")
	}
	proto, ok := protoNumbers[raw.Proto]
	if !ok {
		n, err := strconv.ParseUint(raw.Proto, 10, 8)
		if err != nil {
			return flow.Tuple{}, fmt.Errorf("proto %q", truncate(raw.Proto, 32))
		}
		proto = uint8(n)
	}
	var sp, dp uint16
	switch proto {
	case flow.ProtoTCP, flow.ProtoUDP, flow.ProtoSCTP, 136:
		if !raw.SrcPort.set || !raw.DestPort.set || raw.SrcPort.v > 65535 || raw.DestPort.v > 65535 {
			return flow.Tuple{}, errors.New("no valid src_port/dest_port")
		}
		sp, dp = uint16(raw.SrcPort.v), uint16(raw.DestPort.v)
	}
	return flow.NewTuple(src, dst, sp, dp, proto), nil
}

func httpOf(r *rawHTTP, txID uint64) *HTTP {
	h := &HTTP{
		Hostname:    r.Hostname,
		URL:         r.URL,
		UserAgent:   r.UserAgent,
		ContentType: r.ContentType,
		Method:      r.Method,
		Protocol:    r.Protocol,
		Length:      int64(min(r.Length.v, 1<<62)),
		TxID:        txID,
		Version:     r.Version,
	}
	if r.Status.v <= 999 {
		h.Status = int(r.Status.v)
	}
	if r.Version != "2" {
		return h
	}
	// HTTP/2 records log the request line as pseudo-headers; fill what the
	// HTTP/1-style fields left empty.
	if h.Protocol == "" {
		h.Protocol = "HTTP/2"
	}
	for _, hd := range headersOf(r.RequestHeaders) {
		switch strings.ToLower(hd.Name) {
		case ":method":
			setIfEmpty(&h.Method, hd.Value)
		case ":authority", "host":
			setIfEmpty(&h.Hostname, hd.Value)
		case ":path":
			setIfEmpty(&h.URL, hd.Value)
		case "user-agent":
			setIfEmpty(&h.UserAgent, hd.Value)
		}
	}
	for _, hd := range headersOf(r.ResponseHeaders) {
		switch strings.ToLower(hd.Name) {
		case ":status":
			if h.Status == 0 {
				if n, err := strconv.Atoi(hd.Value); err == nil && n > 0 && n <= 999 {
					h.Status = n
				}
			}
		case "content-type":
			setIfEmpty(&h.ContentType, hd.Value)
		case "content-length":
			if h.Length == 0 {
				if n, err := strconv.ParseInt(hd.Value, 10, 64); err == nil && n > 0 {
					h.Length = n
				}
			}
		}
	}
	return h
}

func headersOf(sp span) []rawHeader {
	if len(sp) == 0 || sp[0] != '[' {
		return nil
	}
	// Entries without name/value ({"table_size_update":N}) decode as empty.
	// The span was validated with the line, so this cannot fail midway.
	var hs []rawHeader
	s := scanner{b: sp}
	_ = headersDecoder(&s, unsafe.Pointer(&hs))
	return hs
}

func setIfEmpty(dst *string, v string) {
	if *dst == "" {
		*dst = v
	}
}

// dnsOf normalises the three layouts: v1 (one line per answer, rdata at the
// top level), v2 (type query/answer, rrname/rrtype at the top, answers[] or
// grouped{}), v3 (type request/response, queries[] and answers[]).
func dnsOf(r *rawDNS) *DNS {
	d := &DNS{
		Version:  int(min(r.Version.v, 255)),
		Response: r.Type == "answer" || r.Type == "response",
		ID:       uint16(r.ID.v),
		RCode:    r.RCode,
	}
	if len(r.Queries) > 0 {
		d.Queries = make([]DNSQuery, 0, len(r.Queries))
		for _, q := range r.Queries {
			d.Queries = append(d.Queries, DNSQuery{Name: q.RRName, Type: q.RRType})
		}
	} else if r.RRName != "" || r.RRType != "" {
		d.Queries = []DNSQuery{{Name: r.RRName, Type: r.RRType}}
	}
	switch {
	case len(r.Answers) > 0:
		d.Answers = make([]DNSAnswer, 0, len(r.Answers))
		for _, a := range r.Answers {
			d.Answers = append(d.Answers, DNSAnswer{Name: a.RRName, Type: a.RRType, Data: a.RData})
		}
	case len(r.Grouped) > 0:
		// Grouped answers lose the owner name; use the query's.
		name := ""
		if len(d.Queries) > 0 {
			name = d.Queries[0].Name
		}
		types := make([]string, 0, len(r.Grouped))
		for typ := range r.Grouped {
			types = append(types, typ)
		}
		sort.Strings(types) // map order is random; output must not be
		for _, typ := range types {
			vals := r.Grouped[typ]
			var strs []json.RawMessage
			if json.Unmarshal(vals, &strs) != nil {
				continue
			}
			for _, v := range strs {
				var s string
				if json.Unmarshal(v, &s) == nil {
					d.Answers = append(d.Answers, DNSAnswer{Name: name, Type: typ, Data: s})
				}
			}
		}
	case r.RData != "":
		d.Answers = []DNSAnswer{{Name: r.RRName, Type: r.RRType, Data: r.RData}}
	}
	return d
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
