package clickhouse

import (
	"errors"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/flowlens/flowlens/pkg/sink"
)

// ClickHouse error codes (the server's ErrorCodes) that say the insert
// and the table disagree: checking the schema again may repair them.
var schemaCodes = map[int32]string{
	8:  "THERE_IS_NO_COLUMN",
	10: "NOT_FOUND_COLUMN_IN_BLOCK",
	16: "NO_SUCH_COLUMN_IN_TABLE",
	20: "NUMBER_OF_COLUMNS_DOESNT_MATCH",
	44: "ILLEGAL_COLUMN",
	47: "UNKNOWN_IDENTIFIER",
	53: "TYPE_MISMATCH",
	60: "UNKNOWN_TABLE",
	70: "CANNOT_CONVERT_TYPE",
}

// permanentCodes are refusals that retrying the same rows cannot change:
// the data, the database or the credentials need an operator.
var permanentCodes = map[int32]string{
	6:   "CANNOT_PARSE_TEXT",
	27:  "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
	62:  "SYNTAX_ERROR",
	69:  "ARGUMENT_OUT_OF_BOUND",
	81:  "UNKNOWN_DATABASE",
	117: "INCORRECT_DATA",
	164: "READONLY",
	192: "UNKNOWN_USER",
	193: "WRONG_PASSWORD",
	194: "REQUIRED_PASSWORD",
	195: "IP_ADDRESS_NOT_ALLOWED",
	497: "ACCESS_DENIED",
	516: "AUTHENTICATION_FAILED",
}

func exceptionCode(err error) (int32, bool) {
	var ex *proto.Exception
	if errors.As(err, &ex) {
		return ex.Code, true
	}
	return 0, false
}

// isSchemaError reports whether err says the table does not have the
// columns, or the types, the insert sends.
func isSchemaError(err error) bool {
	if code, ok := exceptionCode(err); ok {
		_, schema := schemaCodes[code]
		return schema
	}
	var ae *appendError
	if errors.As(err, &ae) {
		return true
	}
	// clickhouse-go matches the server's insert header against the column
	// list itself and reports a difference as a plain error.
	msg := err.Error()
	return strings.Contains(msg, "block cannot be sorted") || strings.Contains(msg, "requested column order")
}

// classify marks errors that retrying cannot fix as sink.Permanent: the
// codes above, and schema errors that reach it (after the schema was
// checked again). Everything else (the network, a server restarting or
// overloaded, timeouts, unknown codes) is retried.
func classify(err error) error {
	if err == nil || sink.IsPermanent(err) {
		return err
	}
	if code, ok := exceptionCode(err); ok {
		if _, p := permanentCodes[code]; p {
			return sink.Permanent(err)
		}
	}
	if isSchemaError(err) {
		return sink.Permanent(err)
	}
	return err
}
