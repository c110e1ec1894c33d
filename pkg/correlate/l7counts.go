package correlate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/flowlens/flowlens/pkg/flow"
)

// L7Counts are per-row application-layer counts, computed once when a row is
// exported so that sinks (ClickHouse's httpRequests ... dnsErrors columns)
// and the link metrics can sum them without parsing JSON. Each transaction
// is in exactly one row (see resetTransactions), so sums over rows count
// each once.
type L7Counts struct {
	// HTTPRequests is the number of HTTP transactions the row carries: the
	// values of its httpVals object that are JSON objects (one per
	// Suricata transaction id, both halves already united by id, so a
	// transaction both ends logged counts once).
	HTTPRequests uint64
	// HTTP4xx and HTTP5xx count those transactions whose status is 400 to
	// 499, and 500 or more. A transaction without a response (status 0)
	// is a request and neither.
	HTTP4xx, HTTP5xx uint64
	// DNSErrors is 1 when the row carries a DNS transaction with a
	// response whose code is not NOERROR (NXDOMAIN, SERVFAIL, REFUSED,
	// ...), else 0: a record carries at most one DNS transaction, the
	// last of its interval (flow.L7), and a query without a response is
	// no error.
	DNSErrors uint64
}

// CountL7 computes l's counts. err reports an httpVals that is not a JSON
// object (the correlator never emits one: mergeL7 drops it); its HTTP counts
// are then zero. Values that are not objects (null, "") are no transaction.
func CountL7(l *flow.L7) (L7Counts, error) {
	var c L7Counts
	if l.DNSResponseCode != "" && l.DNSResponseCode != "NOERROR" {
		c.DNSErrors = 1
	}
	if l.HTTPVals == "" {
		return c, nil
	}
	var txs map[string]json.RawMessage
	if err := json.Unmarshal([]byte(l.HTTPVals), &txs); err != nil {
		return c, fmt.Errorf("count httpVals transactions: %w", err)
	}
	for _, raw := range txs {
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 || raw[0] != '{' {
			continue
		}
		var tx struct {
			Status json.RawMessage `json:"status"`
		}
		if err := json.Unmarshal(raw, &tx); err != nil {
			continue
		}
		c.HTTPRequests++
		switch s := httpStatus(tx.Status); {
		case s >= 500:
			c.HTTP5xx++
		case s >= 400:
			c.HTTP4xx++
		}
	}
	return c, nil
}

// httpStatus reads Antrea's numeric status; a quoted number (some
// encoders) is accepted too, anything else is 0 (no response).
func httpStatus(raw json.RawMessage) int64 {
	s := string(bytes.Trim(bytes.TrimSpace(raw), `"`))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}
