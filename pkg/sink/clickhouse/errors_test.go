package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/flowlens/flowlens/pkg/sink"
)

func TestErrorClassification(t *testing.T) {
	ex := func(code int32) error {
		return fmt.Errorf("send 3 rows: %w", &proto.Exception{Code: code, Message: "x"})
	}
	for _, tc := range []struct {
		name              string
		err               error
		schema, permanent bool
	}{
		{"column dropped at runtime", ex(16), true, true},
		{"table dropped at runtime", ex(60), true, true},
		{"type mismatch on the server", ex(53), true, true},
		{"column of another type (client side)", &appendError{column: "httpVals", err: &column.ColumnConverterError{Op: "Append", From: "[]string", To: "UInt64"}}, true, true},
		{"insert header differs from the column list", errors.New("block cannot be sorted - missing columns in requested order: [tlsJA4]"), true, true},
		{"wrong password", ex(516), false, true},
		{"database missing", ex(81), false, true},
		{"too many parts (server busy)", ex(252), false, false},
		{"memory limit", ex(241), false, false},
		{"connection refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), false, false},
		{"connection cut", io.ErrUnexpectedEOF, false, false},
		{"timeout", context.DeadlineExceeded, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := isSchemaError(tc.err); got != tc.schema {
				t.Errorf("isSchemaError = %v, want %v", got, tc.schema)
			}
			c := classify(tc.err)
			if got := sink.IsPermanent(c); got != tc.permanent {
				t.Errorf("classify permanent = %v, want %v", got, tc.permanent)
			}
			if !errors.Is(c, tc.err) {
				t.Errorf("classify lost the error: %v", c)
			}
		})
	}
	if classify(nil) != nil {
		t.Error("classify(nil) != nil")
	}
}
