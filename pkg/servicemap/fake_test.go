package servicemap

import (
	"context"
	"errors"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// nopConn fails every query; for tests that only build SQL.
type nopConn struct{}

func (nopConn) Query(context.Context, string, ...any) (driver.Rows, error) {
	return nil, errors.New("no server")
}
