package clickhouse

import (
	"fmt"
	"regexp"
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
	case sink.TypeUInt32:
		return fill(rs, func(r *correlate.Record) uint32 { return uint32(c.Num(r, m)) })
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
	return createSQL(database, table, v) + "ENGINE = MergeTree()\nPARTITION BY toYYYYMMDD(timeInserted)\nORDER BY (timeInserted, flowEndSeconds)"
}

// CreateDistributedTableSQL is the DDL of a cluster's Distributed table
// over every shard's localTable (CreateTableSQL), with the columns of
// the local table. Its sharding key is connectionKey, with the shard
// weights of 1 the writer checks for, so the shard it would pick for a
// row is connectionKey % shards: the one ShardFor picks.
func CreateDistributedTableSQL(database, table, cluster, localTable string, v Version) string {
	return createSQL(database, table, v) + fmt.Sprintf("ENGINE = Distributed(%s, %s, %s, %s)",
		quoteString(cluster), quoteString(database), quoteString(localTable), ShardingKey)
}

// ShardingKey is the column the Distributed table shards by.
const ShardingKey = "connectionKey"

// CreateDatabaseSQL creates the database a cluster's shard may not have
// yet (a single server's database is the operator's).
func CreateDatabaseSQL(database string) string {
	return "CREATE DATABASE IF NOT EXISTS " + quoteIdent(database)
}

func createSQL(database, table string, v Version) string {
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
	b.WriteString(") ")
	return b.String()
}

// TheiaView is a view with the name and columns of one Antrea Theia reads
// its dashboards from. Theia fills a SummingMergeTree per view from its
// flows table; a plain view over the flows table gives its panels, which
// sum or average per group, the same answers without a second copy of
// the data (docs/theia.md).
type TheiaView struct {
	// Suffix follows the flows table's name: Theia's names for the
	// default table "flows".
	Suffix  string
	Columns []string
}

// TheiaViews are the views of Theia's pod-to-pod (and pod-to-service,
// pod-to-external), node-to-node and network-policy dashboards, each with
// Theia's column list, in Theia's order.
func TheiaViews() []TheiaView {
	times := []string{"timeInserted", "flowEndSeconds", "flowEndSecondsFromSourceNode", "flowEndSecondsFromDestinationNode"}
	cols := func(names ...string) []string { return append(append([]string(nil), times...), names...) }
	return []TheiaView{
		{Suffix: "_pod_view", Columns: cols(
			"sourcePodName", "destinationPodName", "destinationIP", "destinationServicePort",
			"destinationServicePortName", "flowType", "sourcePodNamespace", "destinationPodNamespace",
			"sourceTransportPort", "destinationTransportPort", "octetDeltaCount", "reverseOctetDeltaCount",
			"throughput", "reverseThroughput", "throughputFromSourceNode", "throughputFromDestinationNode",
			"clusterUUID")},
		{Suffix: "_node_view", Columns: cols(
			"sourceNodeName", "destinationNodeName", "sourcePodNamespace", "destinationPodNamespace",
			"octetDeltaCount", "reverseOctetDeltaCount", "throughput", "reverseThroughput",
			"throughputFromSourceNode", "reverseThroughputFromSourceNode", "throughputFromDestinationNode",
			"reverseThroughputFromDestinationNode", "clusterUUID")},
		{Suffix: "_policy_view", Columns: cols(
			"egressNetworkPolicyName", "egressNetworkPolicyNamespace", "egressNetworkPolicyRuleAction",
			"ingressNetworkPolicyName", "ingressNetworkPolicyNamespace", "ingressNetworkPolicyRuleAction",
			"sourcePodName", "sourceTransportPort", "sourcePodNamespace", "destinationPodName",
			"destinationTransportPort", "destinationPodNamespace", "destinationServicePort",
			"destinationServicePortName", "destinationIP", "octetDeltaCount", "reverseOctetDeltaCount",
			"throughput", "reverseThroughput", "throughputFromSourceNode", "reverseThroughputFromSourceNode",
			"throughputFromDestinationNode", "reverseThroughputFromDestinationNode", "clusterUUID")},
	}
}

// CreateViewSQL is the DDL of one Theia view over the flows table. An
// existing object of that name (Theia's own table, an operator's view) is
// left alone; ExistingViewsSQL and ViewReadsTable tell whether it is one
// the dashboards can use.
func CreateViewSQL(database, table string, v TheiaView) string {
	return fmt.Sprintf("CREATE VIEW IF NOT EXISTS %s.%s AS SELECT %s FROM %s.%s", quoteIdent(database), quoteIdent(table+v.Suffix),
		strings.Join(v.Columns, ", "), quoteIdent(database), quoteIdent(table))
}

// ExistingViewsSQL lists what holds the Theia view names next to table:
// name, engine and create_table_query, which system.tables has since
// before 18.16 (the oldest server flowlens supports).
func ExistingViewsSQL(database, table string) string {
	names := make([]string, 0, len(TheiaViews()))
	for _, v := range TheiaViews() {
		names = append(names, quoteString(table+v.Suffix))
	}
	return fmt.Sprintf("SELECT name, engine, create_table_query FROM system.tables WHERE database = %s AND name IN (%s)",
		quoteString(database), strings.Join(names, ", "))
}

// ViewReadsTable reports whether an object found under a Theia view's
// name, with this engine and create_table_query, is a view reading
// database.table: one CreateViewSQL made, or an operator's own view of the
// flows (SELECT * FROM flows WHERE ...), either of which the dashboards
// can read. Anything else (Theia's own SummingMergeTree or Distributed
// table, a view of another table) holds the name while CREATE VIEW IF NOT
// EXISTS skips ours, and the dashboards would show its data instead.
//
// The server stores the query normalised but not canonically across
// versions (18.16: "... AS SELECT a, b FROM default.flows"; later ones
// backquote more), so this looks for a FROM of the table, qualified by
// its database or not (a view lives in the same database), quoted or not.
func ViewReadsTable(engine, createQuery, database, table string) bool {
	if engine != "View" {
		return false
	}
	q := strings.NewReplacer("`", "", `"`, "").Replace(createQuery)
	re := regexp.MustCompile(`(?i)\bFROM\s+(?:` + regexp.QuoteMeta(database) + `\.)?` + regexp.QuoteMeta(table) + `(?:[^\w.]|$)`)
	return re.MatchString(q)
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
		case sink.TypeUInt32:
			dest[i] = new(uint32)
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
		case *uint32:
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

// quoteString is a ClickHouse string literal.
func quoteString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
