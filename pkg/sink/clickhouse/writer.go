// Package clickhouse writes aggregated records into a ClickHouse table over
// the native protocol (clickhouse-go/v2), creating or migrating the table
// first. It is a sink.Writer; batching, buffering and retries are the
// sink package's.
package clickhouse

import (
	"context"
	"errors"
	"fmt"
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
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.Addr == "":
		return errors.New("addr: must be set")
	case c.Aggregator == "":
		return errors.New("aggregator: must be set")
	case c.DialTimeout < 0:
		return fmt.Errorf("dialTimeout: must be positive, got %s", c.DialTimeout)
	}
	return nil
}

// Writer inserts batches into the flows table.
type Writer struct {
	cfg       Config
	conn      driver.Conn
	insertSQL string

	mu      sync.Mutex
	ready   bool
	version Version
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
	opts := &ch.Options{
		Addr:         []string{cfg.Addr},
		Auth:         ch.Auth{Database: cfg.Database, Username: cfg.Username, Password: cfg.Password},
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
	return &Writer{cfg: cfg, conn: conn, insertSQL: InsertSQL(cfg.Database, cfg.Table)}, nil
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
	if err := w.conn.Exec(ctx, CreateTableSQL(w.cfg.Database, w.cfg.Table, v)); err != nil {
		return classify(fmt.Errorf("create table %s: %w", table, err))
	}
	have, err := w.existingColumns(ctx)
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
			if err := w.conn.Exec(ctx, AddColumnSQL(w.cfg.Database, w.cfg.Table, c.Name, typ)); err != nil {
				return classify(fmt.Errorf("migrate %s: add column %s: %w", table, c.Name, err))
			}
			klog.InfoS("Added ClickHouse column", "table", table, "column", c.Name, "type", typ)
		case !compatible(c, got):
			mismatched = append(mismatched, fmt.Sprintf("%s is %s, want %s", c.Name, got, typ))
		}
	}
	if len(mismatched) > 0 {
		return sink.Permanent(fmt.Errorf("table %s has columns of another type than flowlens writes (%s): "+
			"change them back (ALTER TABLE ... MODIFY COLUMN) or point the sink at another table", table, strings.Join(mismatched, "; ")))
	}
	w.version, w.ready = v, true
	klog.InfoS("ClickHouse schema ready", "addr", w.cfg.Addr, "version", v, "table", table)
	return nil
}

// recheckSchema makes the next EnsureSchema look at the table again.
func (w *Writer) recheckSchema() {
	w.mu.Lock()
	w.ready = false
	w.mu.Unlock()
}

func (w *Writer) existingColumns(ctx context.Context) (map[string]string, error) {
	rows, err := w.conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = ?", w.cfg.Database, w.cfg.Table)
	if err != nil {
		return nil, fmt.Errorf("list columns of %s.%s: %w", w.cfg.Database, w.cfg.Table, err)
	}
	defer rows.Close()
	have := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, fmt.Errorf("list columns of %s.%s: %w", w.cfg.Database, w.cfg.Table, err)
		}
		have[name] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list columns of %s.%s: %w", w.cfg.Database, w.cfg.Table, err)
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
		return len(b.Records), nil
	}
	if !isSchemaError(err) {
		return 0, classify(err)
	}
	klog.ErrorS(err, "ClickHouse insert refused by the table's schema; checking it again", "table", w.cfg.Database+"."+w.cfg.Table, "batchId", b.ID)
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
		quoteIdent(w.cfg.Database), quoteIdent(w.cfg.Table), id), w.cfg.Aggregator)
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

// Close closes the connection pool.
func (w *Writer) Close() error {
	if err := w.conn.Close(); err != nil {
		return fmt.Errorf("close clickhouse: %w", err)
	}
	return nil
}
