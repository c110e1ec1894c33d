package clickhouse

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/servicemap"
)

// RollupConfig turns on the per-minute service-map rollup
// (docs/ui.md): an AggregatingMergeTree keyed by minute, source and
// destination node, port, protocol and app protocol, filled by a
// materialized view from every insert into the flows table, so the map
// reads thousands of rows instead of millions. Its columns are aggregate
// states (sum, and uniq of the connections), not plain sums: 18.16's
// SummingMergeTree keeps one of two uniq states when it merges rows
// (measured: 3 distinct connections read as 2 after OPTIMIZE FINAL), so
// a connection count across rows needs AggregatingMergeTree.
type RollupConfig struct {
	// Retention is how long rollup rows are kept (0: forever). Servers
	// with TTL (19.6+) expire rows exactly; older ones (18.16) lose
	// whole days: the writer drops the rollup's daily partitions that
	// lie entirely before now - Retention, at start and hourly.
	Retention time.Duration
}

// ttlFrom is the first release with table TTL.
var ttlFrom = Version{Major: 19, Minor: 6}

// pruneEvery is how often a writer on a server without TTL drops the
// rollup's expired partitions.
const pruneEvery = time.Hour

// rollupSums are the rollup's aggregated columns.
func rollupSums() []servicemap.Counter { return servicemap.Counters() }

// rollupEngine is the rollup's engine; a rollup of another engine is one
// an older flowlens created (plain UInt64 sums, connections counted by
// final rows) and is re-created (ensureRollup).
const rollupEngine = "AggregatingMergeTree"

// CreateRollupSQL is the DDL of the rollup table name (a single server's
// rollup, or a shard's local one) on a server of version v.
func CreateRollupSQL(database, name string, v Version, retention time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s.%s (\n", quoteIdent(database), quoteIdent(name))
	b.WriteString(rollupColumns())
	key := servicemap.RollupKey()
	keys := make([]string, len(key))
	for i, k := range key {
		keys[i] = k.Name
	}
	fmt.Fprintf(&b, ") ENGINE = %s\nPARTITION BY toYYYYMMDD(minute)\nORDER BY (%s)", rollupEngine, strings.Join(keys, ", "))
	if retention > 0 && v.AtLeast(ttlFrom.Major, ttlFrom.Minor) {
		fmt.Fprintf(&b, "\nTTL minute + toIntervalSecond(%d)", int64(retention/time.Second))
	}
	return b.String()
}

// rollupColumns is the column list of the rollup table and of its
// Distributed table. Strings stay String: 18.16 has no LowCardinality
// without an experimental setting.
func rollupColumns() string {
	var b strings.Builder
	for _, k := range servicemap.RollupKey() {
		typ := "String"
		switch k.Name {
		case "minute":
			typ = "DateTime"
		case "port":
			typ = "UInt16"
		case "protocol":
			typ = "UInt8"
		}
		fmt.Fprintf(&b, "  %s %s,\n", k.Name, typ)
	}
	sums := rollupSums()
	for i, c := range sums {
		fmt.Fprintf(&b, "  %s %s", c.Name, c.Type())
		if i < len(sums)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// CreateRollupViewSQL is the materialized view that aggregates every
// block inserted into source (the flows table, or a shard's local table)
// into the rollup table target.
func CreateRollupViewSQL(database, view, source, target string) string {
	key := servicemap.RollupKey()
	sel := make([]string, 0, len(key)+len(rollupSums()))
	group := make([]string, len(key))
	for i, k := range key {
		sel = append(sel, k.Expr+" AS "+k.Name)
		group[i] = k.Name
	}
	for _, c := range rollupSums() {
		sel = append(sel, c.State()+" AS "+c.Name)
	}
	return fmt.Sprintf("CREATE MATERIALIZED VIEW IF NOT EXISTS %s.%s TO %s.%s AS SELECT %s FROM %s.%s GROUP BY %s",
		quoteIdent(database), quoteIdent(view), quoteIdent(database), quoteIdent(target),
		strings.Join(sel, ", "), quoteIdent(database), quoteIdent(source), strings.Join(group, ", "))
}

// CreateRollupDistributedSQL is a cluster's Distributed table over the
// shards' rollups. Nothing inserts through it (each shard's view fills
// its own rollup), so it has no sharding key.
func CreateRollupDistributedSQL(database, name, cluster, local string) string {
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s (\n%s) ENGINE = Distributed(%s, %s, %s)",
		quoteIdent(database), quoteIdent(name), rollupColumns(), quoteString(cluster), quoteString(database), quoteString(local))
}

// ModifyRollupTTLSQL sets the retention of an existing rollup (a changed
// configuration) on servers with TTL.
func ModifyRollupTTLSQL(database, name string, retention time.Duration) string {
	return fmt.Sprintf("ALTER TABLE %s.%s MODIFY TTL minute + toIntervalSecond(%d)", quoteIdent(database), quoteIdent(name), int64(retention/time.Second))
}

// rollupNames are the rollup's objects for this writer: the table the
// view fills (a shard's local rollup in cluster mode), the view, and in
// cluster mode the Distributed rollup.
func (w *Writer) rollupNames() (local, view, distributed string) {
	view = servicemap.RollupView(w.cfg.Table)
	if w.cfg.Cluster != nil {
		return servicemap.RollupTable(w.table), view, servicemap.RollupTable(w.cfg.Table)
	}
	return servicemap.RollupTable(w.cfg.Table), view, ""
}

// ensureRollup creates the rollup, its view and (cluster) its
// Distributed table, after the flows table has every column the view
// reads. The view is created after its target: a view whose target is
// missing would fail every insert into the flows table.
func (w *Writer) ensureRollup(ctx context.Context, v Version) error {
	rc := w.cfg.Rollup
	local, view, distributed := w.rollupNames()
	if err := w.dropOutdatedRollup(ctx, local, view, distributed); err != nil {
		return err
	}
	if err := w.conn.Exec(ctx, CreateRollupSQL(w.cfg.Database, local, v, rc.Retention)); err != nil {
		return fmt.Errorf("create rollup %s.%s: %w", w.cfg.Database, local, err)
	}
	if rc.Retention > 0 && v.AtLeast(ttlFrom.Major, ttlFrom.Minor) {
		if err := w.conn.Exec(ctx, ModifyRollupTTLSQL(w.cfg.Database, local, rc.Retention)); err != nil {
			return fmt.Errorf("set retention of rollup %s.%s: %w", w.cfg.Database, local, err)
		}
	}
	if err := w.conn.Exec(ctx, CreateRollupViewSQL(w.cfg.Database, view, w.table, local)); err != nil {
		return fmt.Errorf("create rollup view %s.%s: %w", w.cfg.Database, view, err)
	}
	if distributed != "" {
		if err := w.conn.Exec(ctx, CreateRollupDistributedSQL(w.cfg.Database, distributed, w.cfg.Cluster.Name, local)); err != nil {
			return fmt.Errorf("create rollup %s.%s: %w", w.cfg.Database, distributed, err)
		}
	}
	return nil
}

// dropOutdatedRollup drops a rollup an older flowlens created (another
// engine, UInt64 sums; a Distributed rollup whose connections column is
// not the uniq state), its view first so no insert meets a view without
// its target. The rollup is derived data: the re-created view's creation
// time is where the new rollup starts, and the map reads raw rows for
// earlier windows (servicemap.Reader.RollupStart), so nothing is counted
// under the old definitions.
func (w *Writer) dropOutdatedRollup(ctx context.Context, local, view, distributed string) error {
	db := w.cfg.Database
	rows, err := w.conn.Query(ctx, "SELECT t.name, t.engine, c.type FROM system.tables AS t ANY LEFT JOIN "+
		"(SELECT table AS name, type FROM system.columns WHERE database = ? AND name = 'connections') AS c USING name "+
		"WHERE t.database = ? AND t.name IN (?, ?)", db, db, local, distributed)
	if err != nil {
		return fmt.Errorf("look up rollup %s.%s: %w", db, local, err)
	}
	want := connectionsType()
	var outdated bool
	for rows.Next() {
		var name, engine, typ string
		if err := rows.Scan(&name, &engine, &typ); err != nil {
			rows.Close()
			return fmt.Errorf("look up rollup %s.%s: %w", db, local, err)
		}
		if (name == local && engine != rollupEngine) || typ != want {
			outdated = true
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return fmt.Errorf("look up rollup %s.%s: %w", db, local, err)
	}
	if !outdated {
		return nil
	}
	klog.InfoS("Re-creating the service-map rollup an older version created; the map reads raw rows for earlier windows",
		"table", db+"."+local, "addr", w.cfg.Addr)
	for _, t := range []string{view, distributed, local} {
		if t == "" {
			continue
		}
		if err := w.conn.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %s.%s", quoteIdent(db), quoteIdent(t))); err != nil {
			return fmt.Errorf("drop outdated rollup object %s.%s: %w", db, t, err)
		}
	}
	return nil
}

// connectionsType is the type of the rollup's connections column.
func connectionsType() string {
	for _, c := range rollupSums() {
		if c.Name == "connections" {
			return c.Type()
		}
	}
	return ""
}

// pruneRollupIfDue drops expired rollup partitions on a server without
// TTL, at most once per pruneEvery. A failure is logged and tried again
// an hour later: the rollup only grows meanwhile.
func (w *Writer) pruneRollupIfDue(ctx context.Context, now time.Time) {
	w.mu.Lock()
	rc, v := w.cfg.Rollup, w.version
	due := rc != nil && rc.Retention > 0 && w.ready && !v.AtLeast(ttlFrom.Major, ttlFrom.Minor) && now.Sub(w.lastPrune) >= pruneEvery
	if due {
		w.lastPrune = now
	}
	w.mu.Unlock()
	if !due {
		return
	}
	local, _, _ := w.rollupNames()
	// Bounded: it runs on the write path, after a batch was stored.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := w.PruneRollup(ctx, now)
	if err != nil {
		klog.ErrorS(err, "Dropping expired rollup partitions failed; retrying in an hour", "table", w.cfg.Database+"."+local, "addr", w.cfg.Addr)
		return
	}
	if n > 0 {
		klog.InfoS("Dropped expired rollup partitions", "table", w.cfg.Database+"."+local, "addr", w.cfg.Addr, "partitions", n)
	}
}

// PruneRollup drops the rollup's daily partitions that end before
// now - Retention (whole days: a partition is dropped once its last
// minute has expired) and returns how many it dropped. Servers with TTL
// do not need it.
func (w *Writer) PruneRollup(ctx context.Context, now time.Time) (int, error) {
	rc := w.cfg.Rollup
	if rc == nil || rc.Retention <= 0 {
		return 0, nil
	}
	local, _, _ := w.rollupNames()
	// The partition key toYYYYMMDD(minute) is a day of the server's time
	// zone, not UTC.
	loc, err := w.serverLocation(ctx)
	if err != nil {
		return 0, err
	}
	cutoff := now.Add(-rc.Retention)
	rows, err := w.conn.Query(ctx, "SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active", w.cfg.Database, local)
	if err != nil {
		return 0, fmt.Errorf("list partitions of %s.%s: %w", w.cfg.Database, local, err)
	}
	var parts []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			rows.Close()
			return 0, fmt.Errorf("list partitions of %s.%s: %w", w.cfg.Database, local, err)
		}
		parts = append(parts, p)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return 0, fmt.Errorf("list partitions of %s.%s: %w", w.cfg.Database, local, err)
	}
	expired := expiredPartitions(parts, loc, cutoff)
	for i, p := range expired {
		// p parsed as a date: digits only.
		if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			continue
		}
		if err := w.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s.%s DROP PARTITION %s", quoteIdent(w.cfg.Database), quoteIdent(local), p)); err != nil {
			return i, fmt.Errorf("drop partition %s of %s.%s: %w", p, w.cfg.Database, local, err)
		}
	}
	return len(expired), nil
}

// serverLocation is the server's time zone (SELECT timezone()).
func (w *Writer) serverLocation(ctx context.Context) (*time.Location, error) {
	rows, err := w.conn.Query(ctx, "SELECT timezone()")
	if err != nil {
		return nil, fmt.Errorf("read the server's time zone: %w", err)
	}
	defer rows.Close()
	var name string
	for rows.Next() {
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("read the server's time zone: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the server's time zone: %w", err)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("server time zone %q: %w", name, err)
	}
	return loc, nil
}

// expiredPartitions are the daily partitions (YYYYMMDD, days in loc)
// whose last minute lies before cutoff: a partition holds nothing newer
// than its day's end, so it may go then. Other names are left alone.
func expiredPartitions(parts []string, loc *time.Location, cutoff time.Time) []string {
	var expired []string
	for _, p := range parts {
		day, err := time.ParseInLocation("20060102", p, loc)
		if err != nil {
			continue // not one of ours: leave it
		}
		// AddDate, not 24h: a day with a DST change is 23 or 25 hours.
		if !day.AddDate(0, 0, 1).After(cutoff) {
			expired = append(expired, p)
		}
	}
	return expired
}
