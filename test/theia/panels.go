// Package theia checks that Antrea Theia's Grafana dashboards run against
// the flowlens ClickHouse table unchanged: it holds the panels' SQL as
// Theia ships it (testdata, with provenance), the substitution of the
// Grafana macros its data source expands before sending a query, and the
// integration test that runs the panels on rows from the real pipeline.
package theia

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Panel is one query of a Theia dashboard panel.
type Panel struct {
	// Name is the panel's title and, in parentheses, its visualisation
	// (one dashboard has a stat and a time series of the same title).
	Name string
	SQL  string
}

const panelPrefix = "-- panel: "

// LoadPanels reads a testdata file: "--" comment lines (the provenance),
// then for each panel a "-- panel: <name>" line followed by its SQL.
func LoadPanels(path string) ([]Panel, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load panels: %w", err)
	}
	defer f.Close()
	var ps []Panel
	var sql []string
	flush := func() {
		if len(ps) > 0 {
			ps[len(ps)-1].SQL = strings.Join(sql, "\n")
		}
		sql = nil
	}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch name, ok := strings.CutPrefix(line, panelPrefix); {
		case ok:
			flush()
			ps = append(ps, Panel{Name: name})
		case len(ps) == 0 && strings.HasPrefix(line, "--"):
			// provenance header
		case len(ps) == 0:
			return nil, fmt.Errorf("load panels: %s:%d: SQL before the first %q line", path, n, panelPrefix)
		default:
			sql = append(sql, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("load panels: %s: %w", path, err)
	}
	flush()
	for _, p := range ps {
		if strings.TrimSpace(p.SQL) == "" {
			return nil, fmt.Errorf("load panels: %s: panel %q has no SQL", path, p.Name)
		}
	}
	return ps, nil
}

// Query is what Grafana sends with a panel's SQL: the dashboard's time
// range and the panel's interval (time range / max data points).
type Query struct {
	From, To time.Time
	Interval time.Duration
	// StartOfInterval, when set, is what $__timeInterval(c) becomes
	// instead of the data source's toStartOfInterval, which ClickHouse
	// before 19.3 lacks: the test uses an equivalent 18.16 has to check
	// the time series panels' values there too. Grafana has no such
	// option.
	StartOfInterval func(col string, seconds int64) string
}

// StartOfIntervalFor18 is toStartOfInterval(toDateTime(col), INTERVAL
// seconds second) in functions ClickHouse 18.16 has: the start of the
// seconds-long bucket, counted from the epoch, that col falls in.
func StartOfIntervalFor18(col string, seconds int64) string {
	return fmt.Sprintf("toDateTime(intDiv(toUInt32(toDateTime(%s)), %d) * %d)", col, seconds, seconds)
}

var (
	macroCall  = regexp.MustCompile(`\$__(timeFilter|timeInterval)\(\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\)`)
	intervalMs = regexp.MustCompile(`\$__interval_ms\b`)
)

// Expand does to a panel's SQL what Grafana and Theia's data source
// (grafana-clickhouse-datasource, v2 onwards, whose macros are documented
// with it) do before the query reaches ClickHouse:
//
//	$__timeFilter(c)   -> c >= toDateTime(<From, Unix s>) AND c <= toDateTime(<To, Unix s>)
//	$__timeInterval(c) -> toStartOfInterval(toDateTime(c), INTERVAL <Interval in s, at least 1> second)
//	$__interval_ms     -> <Interval in ms> (a Grafana global variable)
//
// Theia's panels use no other macro or template variable (the
// dashboards' ad-hoc filter adds nothing while no filter is set). A "$"
// left after the substitution is an error, so a panel that starts using
// one this function does not know fails the test instead of reaching
// ClickHouse half expanded.
func Expand(sql string, q Query) (string, error) {
	secs := int64(math.Max(q.Interval.Seconds(), 1))
	out := macroCall.ReplaceAllStringFunc(sql, func(m string) string {
		sub := macroCall.FindStringSubmatch(m)
		col := sub[2]
		if sub[1] == "timeFilter" {
			return fmt.Sprintf("%s >= toDateTime(%d) AND %s <= toDateTime(%d)", col, q.From.Unix(), col, q.To.Unix())
		}
		if q.StartOfInterval != nil {
			return q.StartOfInterval(col, secs)
		}
		return fmt.Sprintf("toStartOfInterval(toDateTime(%s), INTERVAL %d second)", col, secs)
	})
	out = intervalMs.ReplaceAllString(out, strconv.FormatInt(q.Interval.Milliseconds(), 10))
	if i := strings.Index(out, "$"); i >= 0 {
		end := min(i+30, len(out))
		return "", fmt.Errorf("expand: unknown macro or variable at %q", out[i:end])
	}
	return out, nil
}
