package l7_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/flowlens/flowlens/pkg/eve"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/l7"
)

type oneConn struct{ c flow.Conn }

func (o oneConn) LookupConn(t flow.Tuple) (flow.Conn, bool) {
	if t == o.c.Tuple || t == o.c.Tuple.Reverse() {
		return o.c, true
	}
	return flow.Conn{}, false
}

type ingress struct{}

func (ingress) L7Want(*flow.Conn) flow.L7Want { return flow.L7Destination }

// The agent's loop calls Ingest for each EVE event and Enrich on each record just
// before it is exported.
func ExampleEnricher() {
	t := flow.NewTuple(netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("10.0.2.7"), 40000, 80, flow.ProtoTCP)
	e, err := l7.New(l7.Config{Connections: oneConn{flow.Conn{Tuple: t}}, Policy: ingress{}}, nil)
	if err != nil {
		panic(err)
	}
	line := `{"timestamp":"2024-05-01T10:00:00Z","event_type":"http","src_ip":"10.0.2.7","src_port":80,"dest_ip":"10.0.1.5","dest_port":40000,"proto":"TCP","tx_id":0,"http":{"hostname":"web","url":"/a?token=x","http_method":"GET","protocol":"HTTP/1.1","status":200,"length":12}}`
	ev, err := eve.ParseLine([]byte(line))
	if err != nil {
		panic(err)
	}
	e.Ingest(ev, time.Now())

	rec := flow.Record{Conn: flow.Conn{Tuple: t}, EndReason: flow.EndActiveTimeout}
	e.Enrich(&rec)
	fmt.Println(rec.L7.AppProtocolName)
	fmt.Println(rec.L7.HTTPVals)
	// Output:
	// http
	// {"0":{"hostname":"web","url":"/a","http_user_agent":"","http_content_type":"","http_method":"GET","protocol":"HTTP/1.1","status":200,"length":12}}
}
