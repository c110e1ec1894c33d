package servicemap

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// FlowQuery filters, sorts and pages the flow records of a window.
type FlowQuery struct {
	Window
	Namespace   string // either end's pod namespace, or the Service's
	Pod         string // either end's pod name
	Service     string // destination Service, ns/name
	Protocol    *uint8
	AppProtocol string
	Correlation string // not-required, correlated, unmatched
	Text        string // free text in the HTTP URL/host, TLS SNI, DNS query name
	Node        string // a node id: rows with it at either end
	Edge        string // an edge id
	Sort        string // SortFields; default time
	Desc        bool
	Limit       int // 1..MaxLimit
	Offset      int // 0..MaxOffset
}

// Paging bounds.
const (
	MaxLimit     = 500
	MaxOffset    = 100000
	DefaultLimit = 50
	MaxTextLen   = 256
)

// sortColumns maps the API's sort fields to ORDER BY lists.
var sortColumns = map[string]string{
	"time":         "flowEndSeconds",
	"bytes":        "octetDeltaCount",
	"reverseBytes": "reverseOctetDeltaCount",
	"packets":      "packetDeltaCount",
	"source":       "sourcePodNamespace, sourcePodName, sourceIP",
	"destination":  "destinationPodNamespace, destinationPodName, destinationIP",
}

// SortFields are the accepted FlowQuery.Sort values.
func SortFields() []string {
	out := make([]string, 0, len(sortColumns))
	for k := range sortColumns {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Correlations are the values of the correlation column.
var correlations = []string{"not-required", "correlated", "unmatched"}

// FlowRow is one stored record (one export interval of a connection).
// The counters are the interval's deltas, what the map sums.
type FlowRow struct {
	Key                     string `json:"key"`
	FlowStartSeconds        int64  `json:"flowStartSeconds"`
	FlowEndSeconds          int64  `json:"flowEndSeconds"`
	FlowEndReason           uint8  `json:"flowEndReason"`
	SourceIP                string `json:"sourceIP"`
	SourcePort              uint16 `json:"sourcePort"`
	DestinationIP           string `json:"destinationIP"`
	DestinationPort         uint16 `json:"destinationPort"`
	Protocol                uint8  `json:"protocol"`
	SourcePodNamespace      string `json:"sourcePodNamespace"`
	SourcePodName           string `json:"sourcePodName"`
	SourceWorkload          string `json:"sourceWorkload"`
	DestinationPodNamespace string `json:"destinationPodNamespace"`
	DestinationPodName      string `json:"destinationPodName"`
	DestinationWorkload     string `json:"destinationWorkload"`
	DestinationService      string `json:"destinationService"`
	AppProtocol             string `json:"appProtocol"`
	Correlation             string `json:"correlation"`
	Bytes                   uint64 `json:"bytes"`
	ReverseBytes            uint64 `json:"reverseBytes"`
	Packets                 uint64 `json:"packets"`
	ReversePackets          uint64 `json:"reversePackets"`
}

// FlowPage is one page of records and how many match in all.
type FlowPage struct {
	Total uint64    `json:"total"`
	Rows  []FlowRow `json:"rows"`
}

const flowColumns = "connectionKey, flowStartSeconds, flowEndSeconds, flowEndReason, sourceIP, sourceTransportPort, " +
	"destinationIP, destinationTransportPort, protocolIdentifier, sourcePodNamespace, sourcePodName, " +
	"sourceWorkloadKind, sourceWorkloadName, destinationPodNamespace, destinationPodName, destinationWorkloadKind, " +
	"destinationWorkloadName, destinationServicePortName, appProtocolName, correlation, octetDeltaCount, " +
	"reverseOctetDeltaCount, packetDeltaCount, reversePacketDeltaCount"

// where builds q's condition and its bound arguments.
func (q *FlowQuery) where() (string, []any, error) {
	if err := q.Validate(); err != nil {
		return "", nil, err
	}
	conds := []string{TimeExpr + " >= toDateTime(?)", TimeExpr + " < toDateTime(?)", "timeInserted >= toDateTime(?)"}
	args := []any{q.From.Unix(), q.To.Unix(), max(q.From.Add(-insertSlack).Unix(), 0)}
	add := func(cond string, a ...any) {
		conds = append(conds, cond)
		args = append(args, a...)
	}
	for _, s := range []struct {
		field, v string
		max      int
	}{{"namespace", q.Namespace, 253}, {"pod", q.Pod, 253}, {"service", q.Service, 512},
		{"appProtocol", q.AppProtocol, 64}, {"q", q.Text, MaxTextLen}} {
		if err := checkString(s.field, s.v, s.max); err != nil {
			return "", nil, err
		}
	}
	if q.Namespace != "" {
		// Either end's pod, or the Service the destination was reached
		// through: a superset of the map's namespace filter.
		add("(sourcePodNamespace = ? OR destinationPodNamespace = ? OR "+DestinationNamespaceExpr+" = ?)", q.Namespace, q.Namespace, q.Namespace)
	}
	if q.Pod != "" {
		add("(sourcePodName = ? OR destinationPodName = ?)", q.Pod, q.Pod)
	}
	if q.Service != "" {
		add("replaceRegexpOne(destinationServicePortName, ':[^:/]*$', '') = ?", q.Service)
	}
	if q.Protocol != nil {
		add("protocolIdentifier = ?", *q.Protocol)
	}
	if q.AppProtocol != "" {
		add("appProtocolName = ?", q.AppProtocol)
	}
	if q.Correlation != "" {
		known := false
		for _, c := range correlations {
			known = known || c == q.Correlation
		}
		if !known {
			return "", nil, invalidf("correlation: want one of %s, got %q", strings.Join(correlations, ", "), trunc(q.Correlation))
		}
		add("correlation = ?", q.Correlation)
	}
	if q.Text != "" {
		add("(positionCaseInsensitive(httpVals, ?) > 0 OR positionCaseInsensitive(tlsServerName, ?) > 0 OR positionCaseInsensitive(dnsQueryName, ?) > 0)",
			q.Text, q.Text, q.Text)
	}
	if q.Node != "" {
		if _, err := ParseNodeID(q.Node); err != nil {
			return "", nil, invalidf("node: %v", err)
		}
		add("("+SourceNodeExpr+" = ? OR "+DestinationNodeExpr+" = ?)", q.Node, q.Node)
	}
	if q.Edge != "" {
		k, err := ParseEdgeID(q.Edge)
		if err != nil {
			return "", nil, invalidf("edge: %v", err)
		}
		add(SourceNodeExpr+" = ? AND "+DestinationNodeExpr+" = ? AND "+PortExpr+" = ? AND "+ProtocolExpr+" = ?",
			k.Source, k.Destination, k.Port, k.Protocol)
	}
	return strings.Join(conds, " AND "), args, nil
}

// Flows reads one page of the records q selects, and their total.
func (r *Reader) Flows(ctx context.Context, q FlowQuery) (*FlowPage, error) {
	cond, args, err := q.where()
	if err != nil {
		return nil, err
	}
	if q.Sort == "" {
		q.Sort = "time"
	}
	order, ok := sortColumns[q.Sort]
	if !ok {
		return nil, invalidf("sort: want one of %s, got %q", strings.Join(SortFields(), ", "), trunc(q.Sort))
	}
	if q.Limit == 0 {
		q.Limit = DefaultLimit
	}
	if q.Limit < 1 || q.Limit > MaxLimit {
		return nil, invalidf("limit: must be within 1..%d, got %d", MaxLimit, q.Limit)
	}
	if q.Offset < 0 || q.Offset > MaxOffset {
		return nil, invalidf("offset: must be within 0..%d, got %d", MaxOffset, q.Offset)
	}
	dir := "ASC"
	if q.Desc {
		dir = "DESC"
	}
	cols := strings.Split(order, ", ")
	for i := range cols {
		cols[i] += " " + dir
	}
	table := QuoteIdent(r.db) + "." + QuoteIdent(r.table)

	page := &FlowPage{Rows: []FlowRow{}}
	total, err := r.conn.Query(ctx, "SELECT count() FROM "+table+" WHERE "+cond, args...)
	if err != nil {
		return nil, fmt.Errorf("count flows: %w", err)
	}
	for total.Next() {
		if err := total.Scan(&page.Total); err != nil {
			total.Close()
			return nil, fmt.Errorf("count flows: %w", err)
		}
	}
	err = total.Err()
	total.Close()
	if err != nil {
		return nil, fmt.Errorf("count flows: %w", err)
	}

	// Limit and offset are numbers checked above; the tie-breakers make
	// pages stable while rows are added behind the window.
	sql := fmt.Sprintf("SELECT %s FROM %s WHERE %s ORDER BY %s, connectionKey, flowStartSeconds, flowEndSeconds, timeInserted LIMIT %d OFFSET %d",
		flowColumns, table, cond, strings.Join(cols, ", "), q.Limit, q.Offset)
	rows, err := r.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list flows: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			f                                   FlowRow
			ck                                  uint64
			start, end                          time.Time
			sKind, sName, dKind, dName, svcPort string
		)
		if err := rows.Scan(&ck, &start, &end, &f.FlowEndReason, &f.SourceIP, &f.SourcePort, &f.DestinationIP, &f.DestinationPort,
			&f.Protocol, &f.SourcePodNamespace, &f.SourcePodName, &sKind, &sName, &f.DestinationPodNamespace, &f.DestinationPodName,
			&dKind, &dName, &svcPort, &f.AppProtocol, &f.Correlation, &f.Bytes, &f.ReverseBytes, &f.Packets, &f.ReversePackets); err != nil {
			return nil, fmt.Errorf("list flows: %w", err)
		}
		f.FlowStartSeconds, f.FlowEndSeconds = start.Unix(), end.Unix()
		f.Key = FlowKey{ConnectionKey: ck, StartSeconds: uint32(max(start.Unix(), 0))}.String()
		f.SourceWorkload = workload(sKind, sName)
		f.DestinationWorkload = workload(dKind, dName)
		f.DestinationService = svcPort
		page.Rows = append(page.Rows, f)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list flows: %w", err)
	}
	return page, nil
}

func workload(kind, name string) string {
	if name == "" {
		return ""
	}
	return kind + "/" + name
}

// HTTPTransaction is one entry of a record's httpVals.
type HTTPTransaction struct {
	ID          uint64 `json:"id"`
	Method      string `json:"method"`
	URL         string `json:"url"`
	Hostname    string `json:"hostname"`
	Status      int    `json:"status"`
	ContentType string `json:"contentType"`
	Length      int64  `json:"length"`
	UserAgent   string `json:"userAgent"`
	Protocol    string `json:"protocol"`
	// FlowEndSeconds is the end of the record that carried it.
	FlowEndSeconds int64 `json:"flowEndSeconds"`
}

// DNSTransaction is the DNS detail of one record.
type DNSTransaction struct {
	QueryName      string   `json:"queryName"`
	QueryType      string   `json:"queryType"`
	ResponseCode   string   `json:"responseCode"`
	Answers        []string `json:"answers"`
	FlowEndSeconds int64    `json:"flowEndSeconds"`
}

// TLSDetail is the connection's TLS handshake as recorded.
type TLSDetail struct {
	ServerName string `json:"serverName"`
	Version    string `json:"version"`
	JA3        string `json:"ja3"`
	JA3S       string `json:"ja3s"`
	JA4        string `json:"ja4"`
}

// FlowDetail is every stored record of one connection, oldest first.
type FlowDetail struct {
	Key string `json:"key"`
	// Columns are the table's columns in order; each record maps them
	// to values (DateTime as Unix seconds, integers above 2^53 as
	// decimal strings so JavaScript does not round them).
	Columns []string          `json:"columns"`
	Records []map[string]any  `json:"records"`
	HTTP    []HTTPTransaction `json:"http"`
	DNS     []DNSTransaction  `json:"dns"`
	TLS     *TLSDetail        `json:"tls"`
	// Truncated: the connection has more than the records shown.
	Truncated bool `json:"truncated"`
	// BadHTTPVals counts records whose httpVals was not a JSON object.
	BadHTTPVals int `json:"badHttpVals"`
}

// Flow reads the records of one connection.
func (r *Reader) Flow(ctx context.Context, key string) (*FlowDetail, error) {
	k, err := ParseFlowKey(key)
	if err != nil {
		return nil, invalidf("key: %v", err)
	}
	// A connection's rows were inserted after it started (give or take
	// insertSlack of clock difference): bounding timeInserted, the
	// table's partition and sort key, skips the older partitions.
	sql := fmt.Sprintf("SELECT * FROM %s.%s WHERE connectionKey = ? AND flowStartSeconds = toDateTime(?) AND timeInserted >= toDateTime(?) "+
		"ORDER BY flowEndSeconds, timeInserted LIMIT %d",
		QuoteIdent(r.db), QuoteIdent(r.table), maxFlowRecords+1)
	rows, err := r.conn.Query(ctx, sql, k.ConnectionKey, k.StartSeconds, max(int64(k.StartSeconds)-int64(insertSlack/time.Second), 0))
	if err != nil {
		return nil, fmt.Errorf("read flow %s: %w", key, err)
	}
	defer rows.Close()
	d := &FlowDetail{Key: key, Columns: rows.Columns(), Records: []map[string]any{}, HTTP: []HTTPTransaction{}, DNS: []DNSTransaction{}}
	types := rows.ColumnTypes()
	for rows.Next() {
		if len(d.Records) == maxFlowRecords {
			d.Truncated = true
			break
		}
		dest := make([]any, len(types))
		for i, t := range types {
			dest[i] = reflect.New(t.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("read flow %s: %w", key, err)
		}
		rec := make(map[string]any, len(dest))
		for i, name := range d.Columns {
			rec[name] = jsonValue(reflect.ValueOf(dest[i]).Elem().Interface())
		}
		d.Records = append(d.Records, rec)
		d.addL7(rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read flow %s: %w", key, err)
	}
	return d, nil
}

// jsonValue turns a scanned value into what JSON carries without loss.
func jsonValue(v any) any {
	switch x := v.(type) {
	case time.Time:
		return x.Unix()
	case uint64:
		if x > 1<<53-1 {
			return strconv.FormatUint(x, 10)
		}
	case int64:
		if x > 1<<53-1 || x < -(1<<53-1) {
			return strconv.FormatInt(x, 10)
		}
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil
		}
	}
	return v
}

// httpEntry is one transaction as pkg/l7 encodes it in httpVals.
type httpEntry struct {
	Hostname    string `json:"hostname"`
	URL         string `json:"url"`
	UserAgent   string `json:"http_user_agent"`
	ContentType string `json:"http_content_type"`
	Method      string `json:"http_method"`
	Protocol    string `json:"protocol"`
	Status      int    `json:"status"`
	Length      int64  `json:"length"`
}

func str(rec map[string]any, name string) string {
	s, _ := rec[name].(string)
	return s
}

func (d *FlowDetail) addL7(rec map[string]any) {
	end, _ := rec["flowEndSeconds"].(int64)
	if hv := str(rec, "httpVals"); hv != "" {
		var m map[string]httpEntry
		if err := json.Unmarshal([]byte(hv), &m); err != nil {
			d.BadHTTPVals++
		} else {
			ids := make([]uint64, 0, len(m))
			byID := make(map[uint64]httpEntry, len(m))
			for k, e := range m {
				id, _ := strconv.ParseUint(k, 10, 64)
				ids = append(ids, id)
				byID[id] = e
			}
			sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
			for _, id := range ids {
				e := byID[id]
				d.HTTP = append(d.HTTP, HTTPTransaction{ID: id, Method: e.Method, URL: e.URL, Hostname: e.Hostname, Status: e.Status,
					ContentType: e.ContentType, Length: e.Length, UserAgent: e.UserAgent, Protocol: e.Protocol, FlowEndSeconds: end})
			}
		}
	}
	if q := str(rec, "dnsQueryName"); q != "" || str(rec, "dnsResponseCode") != "" {
		var answers []string
		if a := str(rec, "dnsAnswers"); a != "" {
			answers = strings.Split(a, ",")
		}
		d.DNS = append(d.DNS, DNSTransaction{QueryName: q, QueryType: str(rec, "dnsQueryType"), ResponseCode: str(rec, "dnsResponseCode"),
			Answers: answers, FlowEndSeconds: end})
	}
	if d.TLS == nil && (str(rec, "tlsServerName") != "" || str(rec, "tlsVersion") != "") {
		d.TLS = &TLSDetail{ServerName: str(rec, "tlsServerName"), Version: str(rec, "tlsVersion"),
			JA3: str(rec, "tlsJA3"), JA3S: str(rec, "tlsJA3S"), JA4: str(rec, "tlsJA4")}
	}
}
