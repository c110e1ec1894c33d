// Package clickhouse writes aggregated records into a ClickHouse table over
// the native protocol (clickhouse-go/v2), creating or migrating the table
// first. It is a sink.Writer; batching, buffering and retries are the
// sink package's.
package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/sink"
)

// Config configures a Writer.
type Config struct {
	// Addr is the server's native-protocol host:port.
	Addr     string
	Database string // default "default"
	Table    string // default "flows"
	Username string // default "default"
	Password string
	// Aggregator identifies this aggregator in every row (required).
	Aggregator  string
	DialTimeout time.Duration // default 5s
	// Compress sends blocks LZ4-compressed.
	Compress bool
	// Cluster, when set, replaces Addr: see NewCluster.
	Cluster *ClusterConfig
	// Rollup, when set, creates the service map's per-minute rollup
	// (rollup.go) next to the flows table.
	Rollup *RollupConfig
}

// ClusterConfig describes a cluster of non-replicated shards. Each shard
// has a local MergeTree table, LocalTable, and a Distributed table named
// Config.Table over all of them, which queries read from any shard.
// Writers insert into the local tables directly, each row into the shard
// the Distributed table would choose: ShardFor.
type ClusterConfig struct {
	// Name is the cluster in the servers' remote_servers.
	Name string
	// Shards are the shards' native-protocol host:port, in the order of
	// the remote_servers definition, which the writers check.
	Shards []string
	// LocalTable is each shard's MergeTree table (default <table>_local).
	LocalTable string
	// SkipAddressCheck keeps the start-up check of the cluster's shape
	// (shard count, one replica, weight 1) but not whether Shards[i] is
	// the address remote_servers gives shard i+1: for an aggregator that
	// reaches the shards through other addresses (port-forward, proxy).
	SkipAddressCheck bool
}

func (c *Config) setDefaults() {
	if c.Database == "" {
		c.Database = "default"
	}
	if c.Table == "" {
		c.Table = "flows"
	}
	if c.Username == "" {
		c.Username = "default"
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.Cluster != nil && c.Cluster.LocalTable == "" {
		cl := *c.Cluster
		cl.LocalTable = c.Table + "_local"
		c.Cluster = &cl
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if cl := c.Cluster; cl != nil {
		switch {
		case c.Addr != "":
			return fmt.Errorf("addr: must be empty with a cluster (its shards are cluster.shards), got %q", c.Addr)
		case cl.Name == "":
			return errors.New("cluster.name: must be set")
		case len(cl.Shards) == 0:
			return errors.New("cluster.shards: at least one shard is needed")
		case cl.LocalTable == "" || cl.LocalTable == c.Table:
			return fmt.Errorf("cluster.localTable: must be set and differ from table %q, got %q", c.Table, cl.LocalTable)
		}
		seen := map[string]int{}
		for i, a := range cl.Shards {
			if j, dup := seen[a]; dup {
				return fmt.Errorf("cluster.shards[%d]: %s is shards[%d] already", i, a, j)
			}
			seen[a] = i
			if a == "" {
				return fmt.Errorf("cluster.shards[%d]: must be set", i)
			}
		}
	}
	switch {
	case c.Addr == "" && c.Cluster == nil:
		return errors.New("addr: must be set")
	case c.Aggregator == "":
		return errors.New("aggregator: must be set")
	case c.DialTimeout < 0:
		return fmt.Errorf("dialTimeout: must be positive, got %s", c.DialTimeout)
	case c.Rollup != nil && c.Rollup.Retention < 0:
		return fmt.Errorf("rollup.retention: must not be negative, got %s", c.Rollup.Retention)
	}
	return nil
}

// Writer inserts batches into the flows table: of one server, or of one
// shard of a cluster (NewCluster).
type Writer struct {
	cfg  Config
	conn driver.Conn
	// table is where rows go: Config.Table, or a shard's local table.
	table     string
	insertSQL string
	// shard is the writer's index in cfg.Cluster.Shards (whose address
	// is then cfg.Addr).
	shard int

	mu      sync.Mutex
	ready   bool
	version Version
	// foreignViews: see ForeignViews.
	foreignViews []string
	// lastPrune is when expired rollup partitions were last dropped.
	lastPrune time.Time
}

var _ sink.Writer = (*Writer)(nil)

// New validates cfg and prepares a connection pool; nothing is dialled
// until EnsureSchema or Write, so the aggregator starts while ClickHouse is
// down and buffers meanwhile.
func New(cfg Config) (*Writer, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("clickhouse sink config: %w", err)
	}
	if cfg.Cluster != nil {
		return nil, errors.New("clickhouse sink config: cluster: one writer per shard, use NewCluster")
	}
	return open(cfg, cfg.Table, 0)
}

// NewCluster validates cfg (Cluster set, Addr empty) and returns one
// Writer per shard, in cfg.Cluster.Shards order: writer i inserts into
// the local table of shard i, so a sink per writer keeps a shard's outage
// to that shard's queue. Route each record to writer
// ShardFor(connectionKey, n) (ClusterSink does). As with New, nothing is dialled yet.
func NewCluster(cfg Config) ([]*Writer, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("clickhouse sink config: %w", err)
	}
	if cfg.Cluster == nil {
		return nil, errors.New("clickhouse sink config: cluster: must be set for NewCluster")
	}
	var ws []*Writer
	for i, addr := range cfg.Cluster.Shards {
		c := cfg
		c.Addr = addr
		w, err := open(c, cfg.Cluster.LocalTable, i)
		if err != nil {
			for _, w := range ws {
				_ = w.Close()
			}
			return nil, fmt.Errorf("shard %d: %w", i, err)
		}
		ws = append(ws, w)
	}
	return ws, nil
}

func open(cfg Config, table string, shard int) (*Writer, error) {
	session := cfg.Database
	if cfg.Cluster != nil {
		// A shard may not have the database yet (EnsureSchema creates
		// it), and a session in a missing one is refused: use the
		// server's default (every statement names the database).
		session = ""
	}
	opts := &ch.Options{
		Addr:         []string{cfg.Addr},
		Auth:         ch.Auth{Database: session, Username: cfg.Username, Password: cfg.Password},
		DialTimeout:  cfg.DialTimeout,
		MaxOpenConns: 2,
		MaxIdleConns: 1,
	}
	if cfg.Compress {
		opts.Compression = &ch.Compression{Method: ch.CompressionLZ4}
	}
	conn, err := ch.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", cfg.Addr, err)
	}
	return &Writer{cfg: cfg, conn: conn, table: table, shard: shard, insertSQL: InsertSQL(cfg.Database, table)}, nil
}

// Version is the server version seen by EnsureSchema (zero before).
func (w *Writer) Version() Version {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.version
}

// EnsureSchema creates the table, or adds the columns an older flowlens
// (or an operator's DROP COLUMN) left out. Columns it does not know are
// left alone; a column of another type is a permanent error
// (sink.IsPermanent): migrations only ever add, and every insert would
// fail on it.
func (w *Writer) EnsureSchema(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ready {
		return nil
	}
	sv, err := w.conn.ServerVersion()
	if err != nil {
		return classify(fmt.Errorf("clickhouse server version: %w", err))
	}
	v := Version{Major: sv.Version.Major, Minor: sv.Version.Minor, Patch: sv.Version.Patch}
	table := w.cfg.Database + "." + w.cfg.Table
	if cl := w.cfg.Cluster; cl != nil {
		if err := w.checkCluster(ctx); err != nil {
			return err
		}
		if err := w.conn.Exec(ctx, CreateDatabaseSQL(w.cfg.Database)); err != nil {
			return classify(fmt.Errorf("create database %s: %w", w.cfg.Database, err))
		}
		if err := w.checkClusterTables(ctx); err != nil {
			return err
		}
		if err := w.ensureTable(ctx, w.table, CreateTableSQL(w.cfg.Database, w.table, v), v); err != nil {
			return err
		}
		// Every shard gets the Distributed table too, so any of them
		// answers queries (and the views below read all shards).
		if err := w.ensureTable(ctx, w.cfg.Table, CreateDistributedTableSQL(w.cfg.Database, w.cfg.Table, cl.Name, w.table, v), v); err != nil {
			return err
		}
	} else if err := w.ensureTable(ctx, w.cfg.Table, CreateTableSQL(w.cfg.Database, w.cfg.Table, v), v); err != nil {
		return err
	}
	// After the columns: a view naming one the table lacks would fail.
	for _, tv := range TheiaViews() {
		if err := w.conn.Exec(ctx, CreateViewSQL(w.cfg.Database, w.cfg.Table, tv)); err != nil {
			return classify(fmt.Errorf("create view %s%s: %w", table, tv.Suffix, err))
		}
	}
	if err := w.checkViews(ctx); err != nil {
		return err
	}
	if w.cfg.Rollup != nil {
		// The rollup serves the UI's map; failing to create it must not
		// stop the flows from being stored (the map then reads raw rows).
		if err := w.ensureRollup(ctx, v); err != nil {
			klog.ErrorS(err, "Creating the service-map rollup failed; storing flows without it", "addr", w.cfg.Addr, "table", table)
		}
	}
	w.version, w.ready = v, true
	klog.InfoS("ClickHouse schema ready", "addr", w.cfg.Addr, "version", v, "table", w.cfg.Database+"."+w.table)
	return nil
}

// checkViews warns about each Theia view name held by something that does
// not read the flows table (CREATE VIEW IF NOT EXISTS skipped it): the
// dashboards would read that object instead. Nothing is dropped: it may be
// Theia's own data. ForeignViews lists them for the caller.
func (w *Writer) checkViews(ctx context.Context) error {
	rows, err := w.conn.Query(ctx, ExistingViewsSQL(w.cfg.Database, w.cfg.Table))
	if err != nil {
		return classify(fmt.Errorf("list views of %s.%s: %w", w.cfg.Database, w.cfg.Table, err))
	}
	defer rows.Close()
	var foreign []string
	for rows.Next() {
		var name, engine, create string
		if err := rows.Scan(&name, &engine, &create); err != nil {
			return classify(fmt.Errorf("list views of %s.%s: %w", w.cfg.Database, w.cfg.Table, err))
		}
		if !ViewReadsTable(engine, create, w.cfg.Database, w.cfg.Table) {
			foreign = append(foreign, w.cfg.Database+"."+name)
			klog.ErrorS(nil, "A Theia view name is taken by an object that does not read flowlens's table; Theia's dashboards read it instead of flowlens's records. Rename or drop it to let flowlens create the view",
				"addr", w.cfg.Addr, "object", w.cfg.Database+"."+name, "engine", engine, "table", w.cfg.Database+"."+w.cfg.Table)
		}
	}
	if err := rows.Err(); err != nil {
		return classify(fmt.Errorf("list views of %s.%s: %w", w.cfg.Database, w.cfg.Table, err))
	}
	w.foreignViews = foreign
	return nil
}

// ForeignViews are the Theia view names EnsureSchema found held by an
// object that does not read the flows table (database.name).
func (w *Writer) ForeignViews() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.foreignViews)
}

// ensureTable runs create, then adds the columns the table lacks.
func (w *Writer) ensureTable(ctx context.Context, name, create string, v Version) error {
	table := w.cfg.Database + "." + name
	if err := w.conn.Exec(ctx, create); err != nil {
		return classify(fmt.Errorf("create table %s: %w", table, err))
	}
	have, err := w.existingColumns(ctx, name)
	if err != nil {
		return classify(err)
	}
	var mismatched []string
	columns := sink.Columns()
	for i := range columns {
		c := &columns[i]
		typ := typeFor(c, v)
		got, ok := have[c.Name]
		switch {
		case !ok:
			added, err := w.addColumn(ctx, name, c, typ)
			if err != nil {
				return err
			}
			if added {
				klog.InfoS("Added ClickHouse column", "table", table, "addr", w.cfg.Addr, "column", c.Name, "type", typ)
			}
		case !compatible(c, got):
			mismatched = append(mismatched, fmt.Sprintf("%s is %s, want %s", c.Name, got, typ))
		}
	}
	if len(mismatched) > 0 {
		return sink.Permanent(fmt.Errorf("table %s on %s has columns of another type than flowlens writes (%s): "+
			"change them back (ALTER TABLE ... MODIFY COLUMN) or point the sink at another table", table, w.cfg.Addr, strings.Join(mismatched, "; ")))
	}
	return nil
}

// addColumn adds c to the table. Another aggregator upgrading the same
// table may add it between our look at the table and the ALTER (18.16
// has no ADD COLUMN IF NOT EXISTS; the second ALTER fails with
// ILLEGAL_COLUMN, "column with this name already exists"): a column that
// exists with a compatible type afterwards is no failure, only added
// false. Any other failure is returned classified.
func (w *Writer) addColumn(ctx context.Context, table string, c *sink.Column, typ string) (added bool, err error) {
	addErr := w.conn.Exec(ctx, AddColumnSQL(w.cfg.Database, table, c.Name, typ))
	if addErr == nil {
		return true, nil
	}
	have, err := w.existingColumns(ctx, table)
	if err == nil {
		if got, ok := have[c.Name]; ok && compatible(c, got) {
			klog.InfoS("ClickHouse column added meanwhile by another writer", "table", w.cfg.Database+"."+table,
				"addr", w.cfg.Addr, "column", c.Name, "type", got)
			return false, nil
		}
	}
	return false, classify(fmt.Errorf("migrate %s.%s: add column %s: %w", w.cfg.Database, table, c.Name, addErr))
}

// recheckSchema makes the next EnsureSchema look at the table again.
func (w *Writer) recheckSchema() {
	w.mu.Lock()
	w.ready = false
	w.mu.Unlock()
}

func (w *Writer) existingColumns(ctx context.Context, table string) (map[string]string, error) {
	rows, err := w.conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = ?", w.cfg.Database, table)
	if err != nil {
		return nil, fmt.Errorf("list columns of %s.%s: %w", w.cfg.Database, table, err)
	}
	defer rows.Close()
	have := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, fmt.Errorf("list columns of %s.%s: %w", w.cfg.Database, table, err)
		}
		have[name] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list columns of %s.%s: %w", w.cfg.Database, table, err)
	}
	return have, nil
}

// Write inserts the batch as one block. A retried batch is first looked up
// by its id: if the failed attempt was committed after all (the server
// stored the block but the acknowledgement was lost), it is not inserted
// again. An insert the table's schema refuses (a column dropped, retyped,
// or the table dropped while running) makes it check the schema again,
// repair what adding can, and insert once more; what still fails on the
// schema then is permanent. Errors are classified for the sink: see
// classify.
func (w *Writer) Write(ctx context.Context, b *sink.Batch) (int, error) {
	if err := w.EnsureSchema(ctx); err != nil {
		return 0, err
	}
	if b.Attempt > 0 {
		n, err := w.countBatch(ctx, b.ID)
		if err != nil {
			if isSchemaError(err) {
				// The table went away since the failed attempt, and with
				// it that attempt's rows: check the schema (re-creating
				// it) and retry.
				w.recheckSchema()
				return 0, err
			}
			return 0, classify(err)
		}
		if n > 0 {
			if n != uint64(len(b.Records)) {
				klog.InfoS("Retried batch was partly stored before; not inserting again", "batchId", b.ID, "stored", n, "records", len(b.Records))
			}
			return len(b.Records), nil
		}
	}
	err := w.insert(ctx, b)
	if err == nil {
		w.pruneRollupIfDue(ctx, time.Now())
		return len(b.Records), nil
	}
	if !isSchemaError(err) {
		return 0, classify(err)
	}
	klog.ErrorS(err, "ClickHouse insert refused by the table's schema; checking it again", "table", w.cfg.Database+"."+w.table, "addr", w.cfg.Addr, "batchId", b.ID)
	w.recheckSchema()
	if err := w.EnsureSchema(ctx); err != nil {
		return 0, err
	}
	if err := w.insert(ctx, b); err != nil {
		if isSchemaError(err) {
			return 0, sink.Permanent(fmt.Errorf("after checking the schema again: %w", err))
		}
		return 0, classify(err)
	}
	return len(b.Records), nil
}

// appendError is a column the insert block would not take: its type in the
// table is not the one flowlens writes.
type appendError struct {
	column string
	err    error
}

func (e *appendError) Error() string { return fmt.Sprintf("append column %s: %v", e.column, e.err) }
func (e *appendError) Unwrap() error { return e.err }

func (w *Writer) insert(ctx context.Context, b *sink.Batch) error {
	batch, err := w.conn.PrepareBatch(ctx, w.insertSQL)
	if err != nil {
		return fmt.Errorf("prepare insert: %w", err)
	}
	m := &sink.Meta{Aggregator: w.cfg.Aggregator, BatchID: b.ID}
	columns := sink.Columns()
	for i := range columns {
		c := &columns[i]
		if err := batch.Column(i).Append(columnValues(c, b.Records, m)); err != nil {
			_ = batch.Abort()
			return &appendError{column: c.Name, err: err}
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("send %d rows: %w", len(b.Records), err)
	}
	return nil
}

func (w *Writer) countBatch(ctx context.Context, id uint64) (uint64, error) {
	rows, err := w.conn.Query(ctx, fmt.Sprintf("SELECT count() FROM %s.%s WHERE aggregator = ? AND batchId = %d",
		quoteIdent(w.cfg.Database), quoteIdent(w.table), id), w.cfg.Aggregator)
	if err != nil {
		return 0, fmt.Errorf("look up batch %d: %w", id, err)
	}
	defer rows.Close()
	var n uint64
	if rows.Next() {
		if err := rows.Scan(&n); err != nil {
			return 0, fmt.Errorf("look up batch %d: %w", id, err)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("look up batch %d: %w", id, err)
	}
	return n, nil
}

// storedBatchesChunk bounds the ids of one lookup query, keeping it far
// below the server's max_query_size (256 KiB by default).
const storedBatchesChunk = 5000

// StoredBatches returns, for each of ids that this aggregator's rows in
// the writer's table carry as batchId, how many rows carry it. After a
// crash this tells which batches the server stored although their
// delivery was never recorded (see wal.Log.Intend); the upper half of a
// batch id is random per process (sink.Batch), so another process's batch
// is practically never taken for one of them. It relies on
// Config.Aggregator being the name the batches were written under.
func (w *Writer) StoredBatches(ctx context.Context, ids []uint64) (map[uint64]uint64, error) {
	if err := w.EnsureSchema(ctx); err != nil {
		return nil, err
	}
	ids = slices.Compact(slices.Sorted(slices.Values(ids)))
	out := map[uint64]uint64{}
	var sb strings.Builder
	for start := 0; start < len(ids); start += storedBatchesChunk {
		chunk := ids[start:min(len(ids), start+storedBatchesChunk)]
		sb.Reset()
		for i, id := range chunk {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(strconv.FormatUint(id, 10))
		}
		// The ids are numbers this process formats; the name is bound.
		q := fmt.Sprintf("SELECT batchId, count() FROM %s.%s WHERE aggregator = ? AND batchId IN (%s) GROUP BY batchId",
			quoteIdent(w.cfg.Database), quoteIdent(w.table), sb.String())
		if err := w.scanCounts(ctx, q, out); err != nil {
			return nil, classify(fmt.Errorf("look up %d batches in %s.%s on %s: %w", len(chunk), w.cfg.Database, w.table, w.cfg.Addr, err))
		}
	}
	return out, nil
}

func (w *Writer) scanCounts(ctx context.Context, q string, out map[uint64]uint64) error {
	rows, err := w.conn.Query(ctx, q, w.cfg.Aggregator)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, n uint64
		if err := rows.Scan(&id, &n); err != nil {
			return err
		}
		out[id] = n
	}
	return rows.Err()
}

// Close closes the connection pool.
func (w *Writer) Close() error {
	if err := w.conn.Close(); err != nil {
		return fmt.Errorf("close clickhouse: %w", err)
	}
	return nil
}
