// Package eve reads Suricata EVE JSON records (from a unix stream socket, a
// unix datagram socket or a tailed eve.json file) and turns each line into a
// typed Event. Bad input never stops a reader: every line either becomes an
// Event or is rejected with a Reason that the Observer counts.
//
// Formats differ across Suricata 4.x..8.x (DNS v1/v2/v3, HTTP/2 logged as
// event_type "http", direction of DNS answers); the parser accepts all of
// them and normalises to one Event shape. The 5-tuple is kept in the
// orientation the record was logged in: matching a connection is the
// consumer's job and must not depend on orientation.
package eve

import (
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Event is one accepted EVE record.
type Event struct {
	Time   time.Time
	FlowID uint64
	// Tuple is the 5-tuple as logged; ICMP records have zero ports.
	Tuple flow.Tuple
	// Type is the record's event_type (e.g. "http", "flow", "alert").
	Type string
	// AppProto is the application protocol the record proves the flow
	// carries, in Suricata's app_proto spelling ("http", "http2",
	// "ftp-data"), or "" when the record says nothing about it. See
	// appProtoOf for which records carry one.
	AppProto string
	TxID     uint64
	HasTxID  bool

	// Per-type details; nil unless Type (or, for HTTP, the http object of
	// an http record) carries them.
	HTTP *HTTP
	DNS  *DNS
	TLS  *TLS
}

// HTTP is one HTTP/1.x or HTTP/2 transaction.
type HTTP struct {
	Hostname    string
	URL         string
	UserAgent   string
	ContentType string
	Method      string
	// Protocol is the request line's version ("HTTP/1.1"); "HTTP/2" for
	// HTTP/2 records, which usually log none.
	Protocol string
	// Status is 0 when no response was seen or the status line was
	// malformed (Suricata 8 then logs only status_string).
	Status int
	Length int64
	TxID   uint64
	// Version is "2" for HTTP/2 records, else "".
	Version string
}

// DNS is one DNS transaction (a request or a response).
type DNS struct {
	// Version is the logged layout version (1, 2, 3), 0 when the record
	// does not say (Suricata 6 queries, Suricata 4 records).
	Version  int
	Response bool
	ID       uint16
	Queries  []DNSQuery
	// RCode is the response code name ("NOERROR", "NXDOMAIN"); Suricata 8
	// also logs it on requests.
	RCode   string
	Answers []DNSAnswer
}

// DNSQuery is one question.
type DNSQuery struct {
	Name string
	Type string
}

// DNSAnswer is one answer record; Data is empty for types Suricata logs as
// objects (SOA, SRV ...).
type DNSAnswer struct {
	Name string
	Type string
	Data string
}

// TLS is one TLS handshake.
type TLS struct {
	SNI     string
	Version string
	JA3     string // ja3.hash
	JA3S    string // ja3s.hash
	JA4     string
}

// Reason says why a line was rejected.
type Reason string

// Rejection reasons; they are metric label values, so the set is closed.
const (
	ReasonEmpty    Reason = "empty"
	ReasonOversize Reason = "oversize"
	// ReasonBufferFull: a stream socket's line did not fit in what is left
	// of MaxBufferedBytes, shared by all clients.
	ReasonBufferFull       Reason = "buffer_full"
	ReasonInvalidJSON      Reason = "invalid_json"
	ReasonNoEventType      Reason = "no_event_type"
	ReasonUnknownEventType Reason = "unknown_event_type"
	ReasonNoTuple          Reason = "no_tuple"
	ReasonBadTimestamp     Reason = "bad_timestamp"
)

// AllReasons lists every Reason, for pre-creating metric series.
func AllReasons() []Reason {
	return []Reason{
		ReasonEmpty, ReasonOversize, ReasonBufferFull, ReasonInvalidJSON, ReasonNoEventType,
		ReasonUnknownEventType, ReasonNoTuple, ReasonBadTimestamp,
	}
}

// RejectError is returned by ParseLine for a line that is not an Event.
type RejectError struct {
	Reason Reason
	Err    error // cause, may be nil
}

func (e *RejectError) Error() string {
	if e.Err != nil {
		return "eve line rejected: " + string(e.Reason) + ": " + e.Err.Error()
	}
	return "eve line rejected: " + string(e.Reason)
}

func (e *RejectError) Unwrap() error { return e.Err }

// ReasonOf returns the rejection reason carried by err, or "" if err is not
// a *RejectError.
func ReasonOf(err error) Reason {
	if re, ok := err.(*RejectError); ok {
		return re.Reason
	}
	return ""
}

// appLayerTypes maps the event types written by Suricata's app-layer
// loggers to the app_proto name of the protocol (the spelling Suricata uses
// in flow records). A record of one of these types proves the flow speaks
// that protocol.
var appLayerTypes = map[string]string{
	"bittorrent_dht": "bittorrent-dht",
	"dcerpc":         "dcerpc",
	"dhcp":           "dhcp",
	"dnp3":           "dnp3",
	"dns":            "dns",
	"doh2":           "doh2",
	"enip":           "enip",
	"ftp":            "ftp",
	"ftp_data":       "ftp-data",
	"http":           "http",
	"http2":          "http2", // Suricata 6 logged HTTP/2 under its own type
	"ike":            "ike",
	"ikev2":          "ike",
	"imap":           "imap",
	"krb5":           "krb5",
	"ldap":           "ldap",
	"mdns":           "mdns",
	"modbus":         "modbus",
	"mqtt":           "mqtt",
	"nfs":            "nfs",
	"ntp":            "ntp",
	"pgsql":          "pgsql",
	"pop3":           "pop3",
	"quic":           "quic",
	"rdp":            "rdp",
	"rfb":            "rfb",
	"sip":            "sip",
	"smb":            "smb",
	"smtp":           "smtp",
	"snmp":           "snmp",
	"ssh":            "ssh",
	"telnet":         "telnet",
	"tftp":           "tftp",
	"tls":            "tls",
	"websocket":      "websocket",
}

// otherTypes are event types that are valid EVE but are not themselves an
// application protocol: alerts, anomalies and file records describe a
// packet or a file of some transaction, flow/netflow summarise the flow
// (and carry app_proto, which we take), stats has no 5-tuple at all.
var otherTypes = map[string]bool{
	"alert":    true,
	"anomaly":  true,
	"arp":      true,
	"drop":     true,
	"fileinfo": true,
	"flow":     true,
	"frame":    true,
	"netflow":  true,
	"packet":   true,
	"stats":    true,
	"verdict":  true,
}

// knownNames maps the strings the fields tagged eve:"intern" usually hold
// (event types, app_proto values, protocol names) to themselves, so the
// scanner can reuse these strings rather than allocate one per line.
var knownNames = func() map[string]string {
	m := map[string]string{}
	for t, p := range appLayerTypes {
		m[t], m[p] = t, p
	}
	for t := range otherTypes {
		m[t] = t
	}
	for n := range protoNumbers {
		m[n] = n
	}
	for _, n := range []string{"failed", "unknown"} {
		m[n] = n
	}
	return m
}()

// KnownEventType reports whether t is an event type the parser accepts.
func KnownEventType(t string) bool {
	_, app := appLayerTypes[t]
	return app || otherTypes[t]
}
