package clickhouse

import (
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/sink"
)

// Version is a ClickHouse server version.
type Version struct{ Major, Minor, Patch uint64 }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// AtLeast reports whether v >= major.minor.
func (v Version) AtLeast(major, minor uint64) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// lowCardinalityFrom is the first release where LowCardinality needs no
// experimental setting; before it (Debian's 18.16) names stay String.
var lowCardinalityFrom = Version{Major: 19, Minor: 9}

// typeFor is the ClickHouse type of c on a server of version v.
func typeFor(c *sink.Column, v Version) string {
	if c.LowCardinality && v.AtLeast(lowCardinalityFrom.Major, lowCardinalityFrom.Minor) {
		return "LowCardinality(String)"
	}
	return c.Type.String()
}

// compatible reports whether an existing column of type have takes the
// values the insert sends for c: its own type on any release, and String
// and LowCardinality(String) for each other (a table created by one
// release and served by another).
func compatible(c *sink.Column, have string) bool {
	want := c.Type.String()
	return have == want || c.Type == sink.TypeString && have == "LowCardinality(String)"
}

// columnValues is c's value for every record, as the slice type
// clickhouse-go appends to a column of c's type.
func columnValues(c *sink.Column, rs []*correlate.Record, m *sink.Meta) any {
	switch c.Type {
	case sink.TypeString:
		return fill(rs, func(r *correlate.Record) string { return c.Str(r, m) })
	case sink.TypeUInt8:
		return fill(rs, func(r *correlate.Record) uint8 { return uint8(c.Num(r, m)) })
	case sink.TypeUInt16:
		return fill(rs, func(r *correlate.Record) uint16 { return uint16(c.Num(r, m)) })
	case sink.TypeDateTime:
		return fill(rs, func(r *correlate.Record) time.Time { return time.Unix(int64(c.Num(r, m)), 0).UTC() })
	default:
		return fill(rs, func(r *correlate.Record) uint64 { return c.Num(r, m) })
	}
}

func fill[T any](rs []*correlate.Record, f func(*correlate.Record) T) []T {
	out := make([]T, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

// CreateTableSQL is the DDL of the flows table for a server of version v.
// timeInserted is filled by the server, once per insert, so one batch lands
// in one partition and is committed (or not) as a whole: what the retry
// check for an ambiguous failure relies on.
func CreateTableSQL(database, table string, v Version) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s.%s (\n", quoteIdent(database), quoteIdent(table))
	b.WriteString("  timeInserted DateTime DEFAULT now(),\n")
	columns := sink.Columns()
	for i := range columns {
		c := &columns[i]
		fmt.Fprintf(&b, "  %s %s", c.Name, typeFor(c, v))
		if i < len(columns)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString(") ENGINE = MergeTree()\nPARTITION BY toYYYYMMDD(timeInserted)\nORDER BY (timeInserted, flowEndSeconds)")
	return b.String()
}

// AddColumnSQL adds a column that an older flowlens did not create.
func AddColumnSQL(database, table, name, typ string) string {
	return fmt.Sprintf("ALTER TABLE %s.%s ADD COLUMN %s %s", quoteIdent(database), quoteIdent(table), name, typ)
}

// InsertSQL names every column: clickhouse-go against 18.16 needs the
// explicit list.
func InsertSQL(database, table string) string {
	return fmt.Sprintf("INSERT INTO %s.%s (%s)", quoteIdent(database), quoteIdent(table), strings.Join(sink.ColumnNames(), ", "))
}

// SelectSQL reads every output column back, for ScanRow; tail follows
// the FROM clause (WHERE, ORDER BY).
func SelectSQL(database, table, tail string) string {
	return strings.TrimSpace(fmt.Sprintf("SELECT %s FROM %s.%s %s", strings.Join(sink.ColumnNames(), ", "), quoteIdent(database), quoteIdent(table), tail))
}

// ScanRow reads the current row of a SelectSQL query.
func ScanRow(rows driver.Rows) (sink.Row, error) {
	columns := sink.Columns()
	dest := make([]any, len(columns))
	for i := range columns {
		switch columns[i].Type {
		case sink.TypeString:
			dest[i] = new(string)
		case sink.TypeUInt8:
			dest[i] = new(uint8)
		case sink.TypeUInt16:
			dest[i] = new(uint16)
		case sink.TypeDateTime:
			dest[i] = new(time.Time)
		default:
			dest[i] = new(uint64)
		}
	}
	if err := rows.Scan(dest...); err != nil {
		return sink.Row{}, fmt.Errorf("scan row: %w", err)
	}
	row := sink.NewRow()
	for i, c := range columns {
		var err error
		switch d := dest[i].(type) {
		case *string:
			err = row.SetStr(c.Name, *d)
		case *uint8:
			err = row.SetNum(c.Name, uint64(*d))
		case *uint16:
			err = row.SetNum(c.Name, uint64(*d))
		case *time.Time:
			err = row.SetNum(c.Name, uint64(max(d.Unix(), 0)))
		case *uint64:
			err = row.SetNum(c.Name, *d)
		}
		if err != nil {
			return sink.Row{}, err
		}
	}
	return row, nil
}

func quoteIdent(s string) string {
	return "`" + strings.ReplaceAll(s, "`", "\\`") + "`"
}
