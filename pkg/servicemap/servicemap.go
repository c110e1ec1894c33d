package servicemap

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Conn is what the reader needs of a clickhouse-go connection.
type Conn interface {
	Query(ctx context.Context, query string, args ...any) (driver.Rows, error)
}

// Config names the flows table.
type Config struct {
	Database string // default "default"
	Table    string // default "flows"
	// MaxEdges bounds one map's edges (default 5000); the busiest are
	// kept and Map.Truncated says so.
	MaxEdges int
}

// Limits of a query window.
const (
	MaxWindow = 31 * 24 * time.Hour
	// insertSlack: a row is inserted after its flow ended, give or take
	// the clock difference between the nodes and ClickHouse. The raw
	// queries bound timeInserted (the table's partition and sort key) by
	// the window's start minus this, which skips older partitions.
	insertSlack = time.Hour
	// DefaultMaxEdges is Config.MaxEdges' default.
	DefaultMaxEdges = 5000
	// maxFlowRecords bounds one flow's detail.
	maxFlowRecords = 1000
)

// ErrInvalid marks an error in what the caller asked (a bad filter or
// window), as opposed to the server failing.
var ErrInvalid = errors.New("invalid query")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Reader answers map and flow queries from one server (in cluster mode:
// any shard, through the Distributed tables).
type Reader struct {
	conn     Conn
	db       string
	table    string
	rollup   string
	view     string
	maxEdges int
}

// New returns a Reader over conn.
func New(cfg Config, conn Conn) (*Reader, error) {
	if cfg.Database == "" {
		cfg.Database = "default"
	}
	if cfg.Table == "" {
		cfg.Table = "flows"
	}
	if cfg.MaxEdges == 0 {
		cfg.MaxEdges = DefaultMaxEdges
	}
	if cfg.MaxEdges < 0 || cfg.MaxEdges > 100000 {
		return nil, fmt.Errorf("maxEdges: must be within 1..100000, got %d", cfg.MaxEdges)
	}
	if conn == nil {
		return nil, errors.New("servicemap: nil connection")
	}
	return &Reader{conn: conn, db: cfg.Database, table: cfg.Table, rollup: RollupTable(cfg.Table),
		view: RollupView(cfg.Table), maxEdges: cfg.MaxEdges}, nil
}

// Window is a half-open time range [From, To).
type Window struct{ From, To time.Time }

// Validate checks the window's bounds.
func (w Window) Validate() error {
	switch {
	case w.From.Unix() < 0 || w.To.Unix() > 1<<32-1:
		return invalidf("from/to: must be within the DateTime range (1970..2106)")
	case !w.To.After(w.From):
		return invalidf("to: must be after from")
	case w.To.Sub(w.From) > MaxWindow:
		return invalidf("to: at most %s after from", MaxWindow)
	}
	return nil
}

// Source says where a map is read from.
type Source int

// Map sources.
const (
	// SourceAuto reads the rollup when it covers the window, else raw rows.
	SourceAuto Source = iota
	// SourceRaw always reads raw rows.
	SourceRaw
	// SourceRollup reads the rollup, or fails when it does not cover the window.
	SourceRollup
)

// ParseSource reads auto, raw or rollup ("" is auto).
func ParseSource(s string) (Source, error) {
	switch s {
	case "", "auto":
		return SourceAuto, nil
	case "raw":
		return SourceRaw, nil
	case "rollup":
		return SourceRollup, nil
	}
	return 0, invalidf("source: want auto, raw or rollup, got %q", trunc(s))
}

// MapQuery asks for the map of a window.
type MapQuery struct {
	Window
	// Namespace keeps the edges with either end in it ("" all).
	Namespace string
	Source    Source
}

// Edge is one (source, destination, port, protocol) over the window.
type Edge struct {
	ID          string `json:"id"`
	Source      string `json:"source"`
	Target      string `json:"target"`
	Port        uint16 `json:"port"`
	Protocol    uint8  `json:"protocol"`
	AppProtocol string `json:"appProtocol"`
	Counts
}

// Counts are an edge's summed counters (Counters).
type Counts struct {
	Bytes          uint64 `json:"bytes"`
	ReverseBytes   uint64 `json:"reverseBytes"`
	Packets        uint64 `json:"packets"`
	ReversePackets uint64 `json:"reversePackets"`
	Connections    uint64 `json:"connections"`
	Requests       uint64 `json:"requests"`
	HTTP4xx        uint64 `json:"http4xx"`
	HTTP5xx        uint64 `json:"http5xx"`
	DNSErrors      uint64 `json:"dnsErrors"`
}

func (c *Counts) fields() []*uint64 {
	return []*uint64{&c.Bytes, &c.ReverseBytes, &c.Packets, &c.ReversePackets, &c.Connections,
		&c.Requests, &c.HTTP4xx, &c.HTTP5xx, &c.DNSErrors}
}

// Map is the answer to a MapQuery.
type Map struct {
	// From and To are the window the numbers cover: the rollup widens
	// the asked window to whole minutes.
	From   int64  `json:"from"`
	To     int64  `json:"to"`
	Rollup bool   `json:"rollup"`
	Nodes  []Node `json:"nodes"`
	Edges  []Edge `json:"edges"`
	// Truncated: more edges than MaxEdges; the busiest (by bytes both
	// ways) are kept.
	Truncated bool `json:"truncated"`
}

// checkString bounds a filter value.
func checkString(field, v string, maxLen int) error {
	if len(v) > maxLen {
		return invalidf("%s: longer than %d bytes", field, maxLen)
	}
	return nil
}

// RollupStart is when the rollup began: the first whole minute after its
// view was created (rows inserted before never reached it). ok is false
// when the rollup or its view does not exist. In cluster mode (the
// rollup is a Distributed table) every shard's view counts: start is the
// latest of their creations, and ok is false unless every shard of the
// Distributed table's cluster has one (a shard without it has rows its
// rollup lacks).
func (r *Reader) RollupStart(ctx context.Context) (start time.Time, ok bool, err error) {
	rows, err := r.conn.Query(ctx, "SELECT name, engine, toUInt32(metadata_modification_time), engine_full FROM system.tables WHERE database = ? AND name IN (?, ?)",
		r.db, r.rollup, r.view)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("look up rollup %s.%s: %w", r.db, r.rollup, err)
	}
	defer rows.Close()
	var haveTable, haveView bool
	var cluster string
	for rows.Next() {
		var name, engine, full string
		var mtime uint32
		if err := rows.Scan(&name, &engine, &mtime, &full); err != nil {
			return time.Time{}, false, fmt.Errorf("look up rollup %s.%s: %w", r.db, r.rollup, err)
		}
		switch {
		case name == r.view && engine == "MaterializedView":
			haveView = true
			start = ceilMinute(time.Unix(int64(mtime), 0))
		case name == r.rollup:
			haveTable = true
			if engine == "Distributed" {
				cluster, ok = distributedCluster(full)
				if !ok {
					return time.Time{}, false, fmt.Errorf("look up rollup %s.%s: cannot read the cluster of %q", r.db, r.rollup, trunc(full))
				}
			}
		}
	}
	if err := rows.Err(); err != nil {
		return time.Time{}, false, fmt.Errorf("look up rollup %s.%s: %w", r.db, r.rollup, err)
	}
	if cluster == "" {
		return start, haveTable && haveView, nil
	}
	if !haveTable {
		return time.Time{}, false, nil
	}
	return r.clusterRollupStart(ctx, cluster)
}

// clusterRollupStart reads every shard's view through cluster(): one
// replica of each shard answers.
func (r *Reader) clusterRollupStart(ctx context.Context, cluster string) (time.Time, bool, error) {
	var shards uint64
	rows, err := r.conn.Query(ctx, "SELECT uniqExact(shard_num) FROM system.clusters WHERE cluster = ?", cluster)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("look up the shards of cluster %s: %w", cluster, err)
	}
	for rows.Next() {
		if err := rows.Scan(&shards); err != nil {
			rows.Close()
			return time.Time{}, false, fmt.Errorf("look up the shards of cluster %s: %w", cluster, err)
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return time.Time{}, false, fmt.Errorf("look up the shards of cluster %s: %w", cluster, err)
	}
	if shards == 0 {
		return time.Time{}, false, nil
	}
	rows, err = r.conn.Query(ctx, "SELECT count(), toUInt32(max(metadata_modification_time)) FROM cluster(?, system, tables) "+
		"WHERE database = ? AND name = ? AND engine = 'MaterializedView'", cluster, r.db, r.view)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("look up rollup view %s.%s on the shards of %s: %w", r.db, r.view, cluster, err)
	}
	defer rows.Close()
	var views uint64
	var latest uint32
	for rows.Next() {
		if err := rows.Scan(&views, &latest); err != nil {
			return time.Time{}, false, fmt.Errorf("look up rollup view %s.%s on the shards of %s: %w", r.db, r.view, cluster, err)
		}
	}
	if err := rows.Err(); err != nil {
		return time.Time{}, false, fmt.Errorf("look up rollup view %s.%s on the shards of %s: %w", r.db, r.view, cluster, err)
	}
	if views < shards {
		return time.Time{}, false, nil
	}
	return ceilMinute(time.Unix(int64(latest), 0)), true, nil
}

// distributedCluster reads the cluster name, Distributed's first
// argument, from a table's engine_full: Distributed('c', 'db', 'local'[, key]).
func distributedCluster(full string) (string, bool) {
	rest, ok := strings.CutPrefix(full, "Distributed(")
	if !ok {
		return "", false
	}
	rest = strings.TrimSpace(rest)
	if rest == "" {
		return "", false
	}
	if rest[0] != '\'' {
		// An unquoted identifier.
		end := strings.IndexAny(rest, ", )")
		if end <= 0 {
			return "", false
		}
		return rest[:end], true
	}
	var b strings.Builder
	for i := 1; i < len(rest); i++ {
		switch c := rest[i]; c {
		case '\\':
			if i+1 < len(rest) {
				i++
				b.WriteByte(rest[i])
			}
		case '\'':
			return b.String(), b.Len() > 0
		default:
			b.WriteByte(c)
		}
	}
	return "", false
}

// rollupCovers tells whether the rollup still holds from's minute: its
// retention (PruneRollup's dropped days, or TTL) removes the oldest
// minutes first, so it does when it has a row at or before from. An
// empty rollup covers nothing: a window with no traffic is read from raw
// rows as cheaply. The minute is the rollup's first sort key, so this
// reads one granule.
func (r *Reader) rollupCovers(ctx context.Context, from time.Time) (bool, error) {
	rows, err := r.conn.Query(ctx, fmt.Sprintf("SELECT count() FROM (SELECT 1 FROM %s.%s WHERE minute <= toDateTime(?) LIMIT 1)",
		QuoteIdent(r.db), QuoteIdent(r.rollup)), from.Unix())
	if err != nil {
		return false, fmt.Errorf("look up the rollup's first minute: %w", err)
	}
	defer rows.Close()
	var n uint64
	for rows.Next() {
		if err := rows.Scan(&n); err != nil {
			return false, fmt.Errorf("look up the rollup's first minute: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return false, fmt.Errorf("look up the rollup's first minute: %w", err)
	}
	return n > 0, nil
}

func floorMinute(t time.Time) time.Time { return t.Truncate(time.Minute) }

// maxDateTime is the last second a DateTime holds.
const maxDateTime = 1<<32 - 1

// ceilMinute rounds up to the minute, within the DateTime range (a
// window ending in 2106's last minute must not become a bound the server
// wraps around).
func ceilMinute(t time.Time) time.Time {
	f := t.Truncate(time.Minute)
	if !f.Equal(t) {
		f = f.Add(time.Minute)
	}
	if f.Unix() > maxDateTime {
		return time.Unix(maxDateTime, 0)
	}
	return f
}

// Map reads the service map of q's window.
func (r *Reader) Map(ctx context.Context, q MapQuery) (*Map, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	if err := checkString("namespace", q.Namespace, 253); err != nil {
		return nil, err
	}
	useRollup := false
	from, to := floorMinute(q.From), ceilMinute(q.To)
	if q.Source != SourceRaw {
		start, ok, err := r.RollupStart(ctx)
		if err != nil {
			return nil, err
		}
		useRollup = ok && !from.Before(start)
		covered := true
		if useRollup {
			if covered, err = r.rollupCovers(ctx, from); err != nil {
				return nil, err
			}
			useRollup = covered
		}
		if q.Source == SourceRollup && !useRollup {
			switch {
			case !ok:
				return nil, invalidf("source: no rollup %s.%s with its view %s on every shard (sinks.clickhouse.rollup.enabled)", r.db, r.rollup, r.view)
			case !covered:
				return nil, invalidf("source: the rollup holds nothing at or before from (%d): its retention dropped that time, or it is empty", from.Unix())
			}
			return nil, invalidf("source: the rollup starts at %d, after from (%d)", start.Unix(), from.Unix())
		}
	}
	var (
		sql  string
		args []any
	)
	if useRollup {
		sql, args = r.mapSQL(r.rollupSource(), from, to, q.Namespace)
	} else {
		from, to = q.From, q.To
		sql, args = r.mapSQL(r.rawSource(), from, to, q.Namespace)
	}
	m := &Map{From: from.Unix(), To: to.Unix(), Rollup: useRollup, Nodes: []Node{}, Edges: []Edge{}}
	rows, err := r.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("map query: %w", err)
	}
	defer rows.Close()
	nodes := map[string]bool{}
	for rows.Next() {
		var e Edge
		var srcNS, dstNS string
		dest := []any{&e.Source, &e.Target, &e.Port, &e.Protocol, &e.AppProtocol, &srcNS, &dstNS}
		for _, f := range e.fields() {
			dest = append(dest, f)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("map query: %w", err)
		}
		if len(m.Edges) == r.maxEdges {
			m.Truncated = true
			break
		}
		e.ID = EdgeKey{Source: e.Source, Destination: e.Target, Port: e.Port, Protocol: e.Protocol}.String()
		m.Edges = append(m.Edges, e)
		for _, id := range []string{e.Source, e.Target} {
			if nodes[id] {
				continue
			}
			nodes[id] = true
			n, err := ParseNodeID(id)
			if err != nil {
				// A name no parse accepts (an IP-less external row):
				// still shown, as external.
				n = Node{ID: id, Kind: KindExternal, Name: strings.TrimPrefix(id, "x:"), Label: id}
			}
			m.Nodes = append(m.Nodes, n)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("map query: %w", err)
	}
	return m, nil
}

// mapSource is a table (or subquery) with the rollup's columns and the
// condition selecting a window in it.
type mapSource struct {
	from string
	// window is the time condition; it takes from and to (Unix seconds),
	// then the extra args.
	window    string
	extraArgs func(from time.Time) []any
	// agg is a counter's aggregate over the source.
	agg func(Counter) string
}

func (r *Reader) rollupSource() mapSource {
	return mapSource{
		from:      QuoteIdent(r.db) + "." + QuoteIdent(r.rollup),
		window:    "minute >= toDateTime(?) AND minute < toDateTime(?)",
		extraArgs: func(time.Time) []any { return nil },
		agg:       Counter.Merge,
	}
}

// rawSource computes the rollup's key columns from raw rows in the window
// with the very expressions the rollup's view uses, next to the raw
// columns the counters aggregate.
func (r *Reader) rawSource() mapSource {
	cols := make([]string, 0, 20)
	for _, k := range RollupKey()[1:] {
		cols = append(cols, k.Expr+" AS "+k.Name)
	}
	cols = append(cols, rawColumns()...)
	return mapSource{
		from: fmt.Sprintf("(SELECT %s FROM %s.%s WHERE %s >= toDateTime(?) AND %s < toDateTime(?) AND timeInserted >= toDateTime(?))",
			strings.Join(cols, ", "), QuoteIdent(r.db), QuoteIdent(r.table), TimeExpr, TimeExpr),
		extraArgs: func(from time.Time) []any { return []any{max(from.Add(-insertSlack).Unix(), 0)} },
		agg:       Counter.Raw,
	}
}

func (r *Reader) mapSQL(src mapSource, from, to time.Time, namespace string) (string, []any) {
	var where []string
	args := []any{from.Unix(), to.Unix()}
	args = append(args, src.extraArgs(from)...)
	if src.window != "" {
		where = append(where, src.window)
	}
	if namespace != "" {
		where = append(where, "(sourceNamespace = ? OR destinationNamespace = ?)")
		args = append(args, namespace, namespace)
	}
	sums := make([]string, 0, len(Counters()))
	for _, c := range Counters() {
		sums = append(sums, src.agg(c)+" AS "+c.Name)
	}
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	q := fmt.Sprintf("SELECT sourceNode, destinationNode, port, protocol, max(appProtocol), any(sourceNamespace), any(destinationNamespace), %s FROM %s%s "+
		"GROUP BY sourceNode, destinationNode, port, protocol ORDER BY bytes + reverseBytes DESC, sourceNode, destinationNode, port, protocol LIMIT %d",
		strings.Join(sums, ", "), src.from, cond, r.maxEdges+1)
	return q, args
}
