package l7

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
)

// Privacy says what of an HTTP transaction may leave the node. The zero
// value is the default policy. What can leave is exactly the httpVals
// fields (appendHTTPEntry): hostname, url, user agent, content type,
// method, protocol, status and length. Headers never do, whatever the
// policy. Userinfo ("user:password@" of an absolute-form URL or of the
// hostname) never does either; query strings and path parameters only when
// the policy keeps them.
type Privacy struct {
	// KeepQuery exports URLs with their query string; by default
	// everything from the first '?' or '#' is removed, since query strings
	// carry tokens and personal data more often than paths do.
	KeepQuery bool
	// DropURL exports no URL at all.
	DropURL bool
	// DropUserAgent exports no User-Agent.
	DropUserAgent bool
	// KeepPathParams exports path parameters (";jsessionid=..." after a
	// path segment); by default they are removed, since servlet containers
	// and others carry session ids in them.
	KeepPathParams bool
}

// stricter combines two policies so that whatever either drops is dropped.
func (p Privacy) stricter(q Privacy) Privacy {
	return Privacy{
		KeepQuery:      p.KeepQuery && q.KeepQuery,
		DropURL:        p.DropURL || q.DropURL,
		DropUserAgent:  p.DropUserAgent || q.DropUserAgent,
		KeepPathParams: p.KeepPathParams && q.KeepPathParams,
	}
}

// url returns what of the request target u may leave the node.
func (p Privacy) url(u string) string {
	if p.DropURL {
		return ""
	}
	// The common case, an origin-form path with nothing to remove.
	if strings.HasPrefix(u, "/") && !strings.HasPrefix(u, "//") &&
		!strings.ContainsAny(u, ";?#") {
		return u
	}
	authority, rest := splitAuthority(u)
	path, query := rest, ""
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		path, query = rest[:i], rest[i:]
	}
	if !p.KeepPathParams {
		path = stripPathParams(path)
	}
	if !p.KeepQuery {
		query = ""
	}
	return authority + path + query
}

// splitAuthority splits a request target into its scheme and authority
// without userinfo ("http://host:port", "//host" or, for the authority
// form of CONNECT, "host:port") and the rest (path, query, fragment).
func splitAuthority(u string) (authority, rest string) {
	start := 0
	switch {
	case strings.HasPrefix(u, "/") && !strings.HasPrefix(u, "//"), u == "*":
		return "", u // origin form, asterisk form
	case strings.HasPrefix(u, "//"):
		start = 2 // network-path reference
	default:
		if i := strings.Index(u, "://"); i > 0 && isScheme(u[:i]) {
			start = i + 3
		} // else the authority form: all of u up to a path is the authority
	}
	end := len(u)
	if i := strings.IndexAny(u[start:], "/?#"); i >= 0 {
		end = start + i
	}
	host := u[start:end]
	// Userinfo cannot hold a raw '@'; cutting at the last one removes the
	// most whatever a client sent.
	if i := strings.LastIndexByte(host, '@'); i >= 0 {
		host = host[i+1:]
	}
	return u[:start] + host, u[end:]
}

// isScheme reports whether s is an RFC 3986 scheme.
func isScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// stripPathParams removes each segment's parameters (";..." up to the next
// '/') from a path without query.
func stripPathParams(path string) string {
	if strings.IndexByte(path, ';') < 0 {
		return path
	}
	b := make([]byte, 0, len(path))
	for i := 0; i < len(path); {
		if path[i] != ';' {
			b = append(b, path[i])
			i++
			continue
		}
		j := strings.IndexByte(path[i:], '/')
		if j < 0 {
			break
		}
		i += j
	}
	return string(b)
}

// hostWithoutUserinfo removes "user:password@" from a hostname: a Host
// header (or HTTP/2 :authority) may carry one.
func hostWithoutUserinfo(h string) string {
	if i := strings.LastIndexByte(h, '@'); i >= 0 {
		return h[i+1:]
	}
	return h
}

// Limits bound what one record can carry.
type limits struct {
	maxTx    int
	maxBytes int
}

// maxDNSAnswers bounds DNSAnswers; a response with hundreds of records
// must not make every record of the connection huge.
const maxDNSAnswers = 512

type httpTx struct {
	id    uint64
	entry []byte // the JSON object of one transaction
}

// connState is what one connection accumulated since its previous record.
// AppProto and TLS describe the connection and survive an export; HTTP
// transactions and DNS describe transactions and are exported once.
type connState struct {
	appProto  string
	txs       []httpTx
	httpBytes int // length of the httpVals object if rendered now
	nextTxID  uint64
	dns       dnsState
	tls       eve.TLS
	touched   time.Time
}

type dnsState struct {
	name, qtype, rcode, answers string
}

// truncation names the limit that stopped an HTTP transaction, "" if none.
type truncation string

func (s *connState) add(ev *eve.Event, p Privacy, lim limits) truncation {
	if ev.AppProto != "" {
		s.appProto = ev.AppProto
	}
	var t truncation
	if ev.HTTP != nil {
		t = s.addHTTP(ev, p, lim)
	}
	if ev.DNS != nil {
		s.addDNS(ev.DNS)
	}
	if ev.TLS != nil {
		setIf(&s.tls.SNI, ev.TLS.SNI)
		setIf(&s.tls.Version, ev.TLS.Version)
		setIf(&s.tls.JA3, ev.TLS.JA3)
		setIf(&s.tls.JA3S, ev.TLS.JA3S)
		setIf(&s.tls.JA4, ev.TLS.JA4)
	}
	return t
}

func setIf(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

func (s *connState) addHTTP(ev *eve.Event, p Privacy, lim limits) truncation {
	h := ev.HTTP
	if h.Hostname == "" && h.URL == "" && h.Method == "" && h.Status == 0 {
		// HTTP/2 SETTINGS-only records: the app protocol, not a request.
		return ""
	}
	id := h.TxID
	if !ev.HasTxID {
		// Records without tx_id (some Suricata 8 HTTP/2 records) get the
		// next id after the highest seen, so they never overwrite one.
		id = s.nextTxID
	}
	if id >= s.nextTxID {
		s.nextTxID = id + 1
	}
	entry := appendHTTPEntry(make([]byte, 0, httpEntrySize(h)), h, p)
	keyLen := len(strconv.FormatUint(id, 10)) + 3 // "id":
	for i := range s.txs {
		if s.txs[i].id != id {
			continue
		}
		// Suricata logs a transaction again when it sees more of it; the
		// later record is the more complete one.
		size := s.httpBytes - len(s.txs[i].entry) + len(entry)
		if size > lim.maxBytes {
			return "bytes"
		}
		s.txs[i].entry, s.httpBytes = entry, size
		return ""
	}
	if len(s.txs) >= lim.maxTx {
		return "transactions"
	}
	size := s.httpBytes + keyLen + len(entry)
	if len(s.txs) == 0 {
		size += 2 // {}
	} else {
		size++ // ,
	}
	if size > lim.maxBytes {
		return "bytes"
	}
	s.txs = append(s.txs, httpTx{id: id, entry: entry})
	s.httpBytes = size
	return ""
}

func (s *connState) addDNS(d *eve.DNS) {
	var q eve.DNSQuery
	if len(d.Queries) > 0 {
		q = d.Queries[0]
	}
	if q.Name != "" && (q.Name != s.dns.name || q.Type != s.dns.qtype) {
		s.dns = dnsState{name: q.Name, qtype: q.Type}
	}
	if !d.Response {
		return
	}
	// Suricata 8 writes rcode on requests too; only a response has one.
	s.dns.rcode = d.RCode
	var b strings.Builder
	for _, a := range d.Answers {
		if a.Data == "" {
			continue
		}
		if b.Len()+len(a.Data)+1 > maxDNSAnswers {
			break
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(a.Data)
	}
	if b.Len() > 0 {
		s.dns.answers = b.String()
	}
}

// fill writes the state into l and forgets the per-transaction parts.
func (s *connState) fill(l *flow.L7) {
	l.AppProtocolName = s.appProto
	l.HTTPVals = s.httpVals()
	l.DNSQueryName = s.dns.name
	l.DNSQueryType = s.dns.qtype
	l.DNSResponseCode = s.dns.rcode
	l.DNSAnswers = s.dns.answers
	l.TLSServerName = s.tls.SNI
	l.TLSVersion = s.tls.Version
	l.TLSJA3 = s.tls.JA3
	l.TLSJA3S = s.tls.JA3S
	l.TLSJA4 = s.tls.JA4
	s.txs, s.httpBytes = nil, 0
	s.dns = dnsState{}
}

// httpVals renders the transactions as one JSON object keyed by tx id, in
// arrival order. It is built once per export from entries encoded at
// ingest, so many ingests between two exports still give one object.
func (s *connState) httpVals() string {
	if len(s.txs) == 0 {
		return ""
	}
	b := make([]byte, 0, s.httpBytes)
	b = append(b, '{')
	for i, tx := range s.txs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = strconv.AppendUint(b, tx.id, 10)
		b = append(b, '"', ':')
		b = append(b, tx.entry...)
	}
	b = append(b, '}')
	return string(b)
}

// httpEntrySize is the encoded size of an entry without escapes, so one
// allocation usually suffices.
func httpEntrySize(h *eve.HTTP) int {
	return 160 + len(h.Hostname) + len(h.URL) + len(h.UserAgent) + len(h.ContentType) + len(h.Method) + len(h.Protocol)
}

// appendHTTPEntry encodes one transaction the way Antrea's httpVals did,
// with the fields in a fixed order.
func appendHTTPEntry(b []byte, h *eve.HTTP, p Privacy) []byte {
	ua := h.UserAgent
	if p.DropUserAgent {
		ua = ""
	}
	b = append(b, `{"hostname":`...)
	b = appendJSONString(b, hostWithoutUserinfo(h.Hostname))
	b = append(b, `,"url":`...)
	b = appendJSONString(b, p.url(h.URL))
	b = append(b, `,"http_user_agent":`...)
	b = appendJSONString(b, ua)
	b = append(b, `,"http_content_type":`...)
	b = appendJSONString(b, h.ContentType)
	b = append(b, `,"http_method":`...)
	b = appendJSONString(b, h.Method)
	b = append(b, `,"protocol":`...)
	b = appendJSONString(b, h.Protocol)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(h.Status), 10)
	b = append(b, `,"length":`...)
	b = strconv.AppendInt(b, h.Length, 10)
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. Invalid UTF-8 (Suricata
// passes raw header bytes through) becomes U+FFFD so the result is always
// valid JSON.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
