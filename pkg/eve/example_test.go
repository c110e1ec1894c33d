package eve_test

import (
	"fmt"

	"github.com/flowlens/flowlens/pkg/eve"
)

func ExampleParseLine() {
	line := []byte(`{"timestamp":"2024-05-01T10:00:00.000001+0000","flow_id":7,"event_type":"http","src_ip":"10.0.1.5","src_port":40000,"dest_ip":"10.0.2.7","dest_port":80,"proto":"TCP","tx_id":0,"http":{"hostname":"web","url":"/a?b=c","http_method":"GET","protocol":"HTTP/1.1","status":200,"length":12}}`)
	ev, err := eve.ParseLine(line)
	if err != nil {
		fmt.Println("rejected:", eve.ReasonOf(err))
		return
	}
	fmt.Println(ev.Tuple, ev.AppProto, ev.HTTP.Method, ev.HTTP.Hostname, ev.HTTP.URL, ev.HTTP.Status)

	_, err = eve.ParseLine([]byte(`{"timestamp":"2024-05-01T10:00:00Z","event_type":"stats","stats":{}}`))
	fmt.Println("rejected:", eve.ReasonOf(err))
	// Output:
	// tcp 10.0.1.5:40000 -> 10.0.2.7:80 http GET web /a?b=c 200
	// rejected: no_tuple
}
