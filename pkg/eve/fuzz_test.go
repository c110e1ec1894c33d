package eve

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
	"testing/iotest"
)

func FuzzParseLine(f *testing.F) {
	// Seeds: a spread of real lines from every file, plus the edge cases.
	for _, name := range []string{
		"suricata-7.0.10/eve.json.gz", "suricata-8.0.7/eve.json.gz",
		"suricata-7.0.10/eve-http.json.gz", "suricata-8.0.7/eve-http.json.gz",
		"public/nicoaller-suricata-log-analyzer/eve.json.gz",
		"public/dcso-fever/jsonparse_eve.json", "public/dcso-fever/jsonparse_eve_broken1.json",
		"public/dcso-fever/jsonparse_eve_nulls.json", "public/dcso-fever/alertify_input.json",
	} {
		lines := bytes.Split(readTestdata(f, name), []byte{'\n'})
		step := max(1, len(lines)/40)
		for i := 0; i < len(lines); i += step {
			f.Add(lines[i])
		}
		f.Add(lines[len(lines)-1])
	}
	f.Add([]byte(`{"event_type":"http","timestamp":"2024-01-02T03:04:05Z","src_ip":"::1","dest_ip":"::1","src_port":1,"dest_port":2,"proto":"TCP","http":{"version":"2","request_headers":[{"table_size_update":1},{"name":":path","value":"/"}]}}`))
	f.Add([]byte(`{"event_type":"dns","timestamp":"2024-01-02T03:04:05Z","src_ip":"1.2.3.4","dest_ip":"1.2.3.4","src_port":1,"dest_port":2,"proto":"UDP","dns":{"grouped":{"A":[1,null,"x"]},"queries":null}}`))
	f.Add([]byte(`{}{}`))
	valid := AllReasons()
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := ParseLine(line)
		if err != nil {
			if r := ReasonOf(err); !slices.Contains(valid, r) {
				t.Fatalf("rejected with unknown reason %q: %v", r, err)
			}
			return
		}
		if !KnownEventType(ev.Type) {
			t.Fatalf("accepted unknown event type %q", ev.Type)
		}
		if ev.HTTP != nil && (ev.HTTP.Status < 0 || ev.HTTP.Status > 999 || ev.HTTP.Length < 0) {
			t.Fatalf("out-of-range HTTP fields %+v", ev.HTTP)
		}
	})
}

// FuzzLineReader checks the stream line splitter against bytes.Split: every
// line comes out once, in order and intact, or is rejected once (oversize
// when longer than max, buffer_full when the shared budget could not hold
// it), and the budget is given back when the stream ends. Seeds are the
// crafted cases of issue 9: oversized lines, unterminated lines, lines
// longer than the read buffer, and a budget mostly taken by other clients.
// `make test` runs it for a bounded time (see Makefile).
func FuzzLineReader(f *testing.F) {
	long := bytes.Repeat([]byte("a"), readBufferSize+100)
	for _, s := range []struct {
		data       []byte
		max        uint32
		taken      uint32
		oneByte    bool
		unfinished bool
	}{
		{[]byte("a\nb\n"), 10, 0, false, false},
		{[]byte("a\nb"), 10, 0, true, false},
		{[]byte("\n\n\r\na\n"), 10, 0, false, false},
		{[]byte("123456\nok\n"), 5, 0, false, false},
		{append(append([]byte("x\n"), long...), "\nok\n"...), 1000, 0, false, false},
		{append([]byte("ok\n"), long...), 1000, 0, false, false},
		{append(append([]byte{}, long...), '\n'), 1 << 20, 0, false, false},
		{append(append([]byte{}, long...), "\nnext\n"...), 1 << 20, 1<<20 - 1000, false, false},
		{append([]byte("{\"event_type\":"), long...), 1 << 20, 0, false, true},
	} {
		f.Add(s.data, s.max, s.taken, s.oneByte)
	}
	f.Fuzz(func(t *testing.T, data []byte, maxLine, taken uint32, oneByte bool) {
		max := 1 + int(maxLine%(1<<20))
		// The budget is at least one line, as New requires; taken is what
		// other clients hold.
		budget := &byteBudget{max: int64(max) + 4096}
		held := int64(taken) % budget.max
		budget.reserve(int(held))
		var src io.Reader = bytes.NewReader(data)
		if oneByte {
			src = iotest.OneByteReader(src)
		}
		lr := newLineReader(src, max, budget)
		type outcome struct {
			line   string
			reject Reason
		}
		var got []outcome
		for {
			line, reject, err := lr.next()
			if reject != "" {
				got = append(got, outcome{reject: reject})
				continue
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				if rest := lr.rest(); len(rest) > 0 {
					got = append(got, outcome{line: string(rest)})
				}
				break
			}
			got = append(got, outcome{line: string(line)})
		}
		lr.close()
		if budget.held() != held {
			t.Fatalf("budget holds %d after the stream ended, want the %d others hold", budget.held(), held)
		}
		want := bytes.Split(data, []byte{'\n'})
		if len(want[len(want)-1]) == 0 {
			want = want[:len(want)-1] // no unfinished last line
		}
		if len(got) != len(want) {
			t.Fatalf("%d outcomes for %d lines", len(got), len(want))
		}
		for i, w := range want {
			g := got[i]
			switch {
			case len(w) > max:
				if g.reject != ReasonOversize {
					t.Fatalf("line %d of %d bytes (max %d): got %+.40v, want oversize", i, len(w), max, g)
				}
			case g.reject == ReasonBufferFull:
				// Only a line that left the read buffer takes budget.
				if len(w) < readBufferSize {
					t.Fatalf("line %d of %d bytes refused for the budget", i, len(w))
				}
			case g.reject != "" || g.line != string(w):
				t.Fatalf("line %d: got %+.40v, want %.40q", i, g, w)
			}
		}
	})
}
