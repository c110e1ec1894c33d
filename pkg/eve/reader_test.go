package eve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
)

// evLine is a valid http EVE line identified by its flow_id.
func evLine(id int) string {
	return fmt.Sprintf(`{"timestamp":"2024-05-01T10:00:00.000001+0000","flow_id":%d,"event_type":"http","src_ip":"10.1.0.1","src_port":%d,"dest_ip":"10.1.0.2","dest_port":80,"proto":"TCP","tx_id":0,"http":{"hostname":"h","url":"/%d","http_method":"GET","status":200}}`, id, 1000+id, id)
}

// sockPath is a socket path short enough for sun_path: t.TempDir() names
// grow with the test name.
func sockPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "eve.sock")
}

// collector gathers the flow ids a Reader handed out.
type collector struct {
	mu  sync.Mutex
	ids []uint64
}

func (c *collector) handle(ev Event) {
	c.mu.Lock()
	c.ids = append(c.ids, ev.FlowID)
	c.mu.Unlock()
}

func (c *collector) got() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startReader runs a Reader until the test ends and returns a func that
// stops it and returns Run's error.
func startReader(t *testing.T, cfg Config) (stop func() error) {
	t.Helper()
	r, err := New(cfg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return runReader(t, r)
}

// runReader runs r until the test ends and returns a func that stops it and
// returns Run's error.
func runReader(t *testing.T, r *Reader) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(5 * time.Second):
				runErr = errors.New("Run did not return after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestLineReaderSplitsLinesOfAnyLengthAndSkipsOversizeOnes(t *testing.T) {
	long := `{"x":"` + strings.Repeat("a", 200<<10) + `"}`
	tests := []struct {
		name     string
		input    string
		max      int
		want     []string
		oversize int
	}{
		{name: "plain lines", input: "a\nb\n", max: 10, want: []string{"a", "b"}},
		{name: "final line without newline is kept", input: "a\nb", max: 10, want: []string{"a", "b"}},
		{name: "empty lines are lines", input: "\n\na\n", max: 10, want: []string{"", "", "a"}},
		{name: "line longer than bufio's buffer and 64 KiB", input: long + "\nz\n", max: 1 << 20, want: []string{long, "z"}},
		{name: "line of exactly max bytes is accepted", input: "12345\n", max: 5, want: []string{"12345"}},
		{name: "oversize line is skipped to its newline", input: "123456\nok\n", max: 5, want: []string{"ok"}, oversize: 1},
		{name: "oversize long line spanning many reads", input: "x\n" + long + "\nok\n", max: 1000, want: []string{"x", "ok"}, oversize: 1},
		{name: "oversize unterminated last line", input: "ok\n" + long, max: 1000, want: []string{"ok"}, oversize: 1},
	}
	for _, tt := range tests {
		for _, oneByte := range []bool{false, true} {
			name := tt.name
			if oneByte {
				name += " one byte per read"
			}
			t.Run(name, func(t *testing.T) {
				var src io.Reader = strings.NewReader(tt.input)
				if oneByte {
					src = iotest.OneByteReader(src)
				}
				lr := newLineReader(src, tt.max, nil)
				var got []string
				oversize := 0
				for {
					line, reject, err := lr.next()
					if reject == ReasonOversize {
						oversize++
						continue
					}
					if err != nil {
						if !errors.Is(err, io.EOF) {
							t.Fatal(err)
						}
						if rest := lr.rest(); len(rest) > 0 {
							got = append(got, string(rest))
						}
						break
					}
					got = append(got, string(line))
				}
				if !slices.Equal(got, tt.want) {
					t.Errorf("lines %d %.40q, want %d %.40q", len(got), got, len(tt.want), tt.want)
				}
				if oversize != tt.oversize {
					t.Errorf("oversize %d, want %d", oversize, tt.oversize)
				}
			})
		}
	}
}

func TestNewRejectsBadConfigNamingTheField(t *testing.T) {
	h := func(Event) {}
	tests := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"unknown source", Config{Source: "tcp", Path: "/x", Handler: h}, "Source"},
		{"no path", Config{Source: SourceFile, Handler: h}, "Path"},
		{"no handler", Config{Source: SourceFile, Path: "/x"}, "Handler"},
		{"negative max line", Config{Source: SourceFile, Path: "/x", Handler: h, MaxLineBytes: -1}, "MaxLineBytes"},
		{"world-accessible socket", Config{Source: SourceUnixStream, Path: "/x", Handler: h, SocketMode: 0o666}, "SocketMode"},
		{"negative poll interval", Config{Source: SourceFile, Path: "/x", Handler: h, PollInterval: -time.Second}, "PollInterval"},
		{"negative max clients", Config{Source: SourceUnixStream, Path: "/x", Handler: h, MaxClients: -1}, "MaxClients"},
		{"buffer smaller than a line", Config{Source: SourceUnixStream, Path: "/x", Handler: h, MaxLineBytes: 1 << 20, MaxBufferedBytes: 1 << 10}, "MaxBufferedBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("New = %v, want an error naming %s", err, tt.field)
			}
		})
	}
}

func TestUnixStreamServesConcurrentClientsAndReconnects(t *testing.T) {
	path := sockPath(t)
	var c collector
	var tally Tally
	stop := startReader(t, Config{Source: SourceUnixStream, Path: path, Handler: c.handle, Observer: &tally})
	dial := func() net.Conn {
		t.Helper()
		var conn net.Conn
		waitFor(t, "socket to accept", func() bool {
			var err error
			conn, err = net.Dial("unix", path)
			return err == nil
		})
		return conn
	}
	a, b := dial(), dial()
	// Interleave: a's line arrives in two writes around b's complete line,
	// so the per-connection buffers must not mix.
	line1 := evLine(1)
	mustWrite(t, a, line1[:40])
	mustWrite(t, b, evLine(2)+"\n")
	waitFor(t, "b's event", func() bool { return len(c.got()) == 1 })
	mustWrite(t, a, line1[40:]+"\n"+"not json\n")
	waitFor(t, "a's event", func() bool { return len(c.got()) == 2 })
	a.Close()
	// Suricata reconnects after a restart.
	a2 := dial()
	mustWrite(t, a2, evLine(3)+"\n")
	waitFor(t, "event after reconnect", func() bool { return len(c.got()) == 3 })
	b.Close()
	a2.Close()

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := c.got()
	slices.Sort(got)
	if !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("flow ids %v, want [1 2 3]", got)
	}
	if _, rej := tally.Totals(); rej != 1 {
		t.Errorf("rejected %d lines, want the 1 invalid one", rej)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left behind after stop: %v", err)
	}
}

func TestUnixStreamStopsWhileClientsStayConnected(t *testing.T) {
	path := sockPath(t)
	var c collector
	stop := startReader(t, Config{Source: SourceUnixStream, Path: path, Handler: c.handle})
	waitFor(t, "socket", func() bool { _, err := os.Stat(path); return err == nil })
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mustWrite(t, conn, evLine(9)+"\n")
	waitFor(t, "event", func() bool { return len(c.got()) == 1 })
	if err := stop(); err != nil {
		t.Fatalf("Run with a client still connected: %v", err)
	}
}

func mustWrite(t *testing.T, w io.Writer, s string) {
	t.Helper()
	if _, err := io.WriteString(w, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func TestSocketModeIsSetWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0) // without the chmod the socket would be 0777
	t.Cleanup(func() { syscall.Umask(old) })
	for _, tt := range []struct {
		source SourceKind
		mode   os.FileMode
		want   os.FileMode
	}{
		{SourceUnixStream, 0, 0o660},
		{SourceUnixStream, 0o600, 0o600},
		{SourceUnixDgram, 0, 0o660},
	} {
		t.Run(fmt.Sprintf("%s %#o", tt.source, uint32(tt.mode)), func(t *testing.T) {
			path := sockPath(t)
			startReader(t, Config{Source: tt.source, Path: path, SocketMode: tt.mode, Handler: func(Event) {}})
			var fi os.FileInfo
			waitFor(t, "socket", func() bool {
				var err error
				fi, err = os.Lstat(path)
				return err == nil
			})
			if fi.Mode()&os.ModeSocket == 0 {
				t.Fatalf("%s is %v, not a socket", path, fi.Mode())
			}
			if got := fi.Mode().Perm(); got != tt.want {
				t.Errorf("socket mode %#o, want %#o", uint32(got), uint32(tt.want))
			}
		})
	}
}

func TestExistingSocketPath(t *testing.T) {
	t.Run("stale socket left by a crashed run is replaced", func(t *testing.T) {
		path := sockPath(t)
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close()
		var c collector
		stop := startReader(t, Config{Source: SourceUnixStream, Path: path, Handler: c.handle})
		t.Cleanup(func() {
			if err := stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		var conn net.Conn
		waitFor(t, "new socket to accept", func() bool {
			conn, err = net.Dial("unix", path)
			return err == nil
		})
		defer conn.Close()
		mustWrite(t, conn, evLine(5)+"\n")
		waitFor(t, "event through the new socket", func() bool { return len(c.got()) == 1 })
	})
	t.Run("regular file is not removed and is an error", func(t *testing.T) {
		path := sockPath(t)
		if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := New(Config{Source: SourceUnixStream, Path: path, Handler: func(Event) {}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = r.Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("Run = %v, want a 'not a socket' error", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "keep me" {
			t.Errorf("file content %q changed", b)
		}
	})
	t.Run("socket another process listens on is an error", func(t *testing.T) {
		path := sockPath(t)
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		r, err := New(Config{Source: SourceUnixStream, Path: path, Handler: func(Event) {}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("Run = %v, want an 'in use' error", err)
		}
	})
}

func TestUnixDatagramOneRecordPerDatagram(t *testing.T) {
	path := sockPath(t)
	var c collector
	var tally Tally
	startReader(t, Config{Source: SourceUnixDgram, Path: path, Handler: c.handle, Observer: &tally, MaxLineBytes: 1024})
	var conn net.Conn
	waitFor(t, "datagram socket", func() bool {
		var err error
		conn, err = net.Dial("unixgram", path)
		return err == nil
	})
	defer conn.Close()
	for _, d := range []string{
		evLine(1),                            // no newline, as Suricata sends
		evLine(2) + "\n",                     // trailing newline tolerated
		`{"x":"` + strings.Repeat("a", 2000), // over MaxLineBytes
		"garbage",
		evLine(3) + "\n" + evLine(4) + "\n", // a batching sender
	} {
		mustWrite(t, conn, d)
	}
	waitFor(t, "all datagrams", func() bool {
		p, r := tally.Totals()
		return p+r == 6
	})
	got := c.got()
	if !slices.Equal(got, []uint64{1, 2, 3, 4}) {
		t.Errorf("flow ids %v, want [1 2 3 4]", got)
	}
	rej := map[string]int{}
	for _, r := range tally.RejectedCounts() {
		rej[r.Key] = r.N
	}
	if rej["oversize"] != 1 || rej["invalid_json"] != 1 {
		t.Errorf("rejected %v, want 1 oversize and 1 invalid_json", rej)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mustWrite(t, f, s)
}

func TestFileTailFollowsAppendsRotationAndTruncation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "eve.json")
	appendFile(t, path, evLine(1)+"\n") // before start: skipped by default
	var c collector
	startReader(t, Config{Source: SourceFile, Path: path, Handler: c.handle, PollInterval: 10 * time.Millisecond})
	// The reader seeks to the end once it opened the file; give it a
	// moment, then append a line in two writes (a writer mid-line).
	time.Sleep(100 * time.Millisecond)
	l2 := evLine(2)
	appendFile(t, path, l2[:30])
	time.Sleep(50 * time.Millisecond)
	appendFile(t, path, l2[30:]+"\n")
	waitFor(t, "appended line", func() bool { return len(c.got()) == 1 })

	// Rotation: rename, a last line into the old file, then a new file.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, path+".1", evLine(3)+"\n")
	appendFile(t, path, evLine(4)+"\n"+evLine(5)+"\n")
	waitFor(t, "lines after rotation", func() bool { return len(c.got()) == 4 })

	// copytruncate: the file shrinks to zero, then grows again.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	appendFile(t, path, evLine(6)+"\n")
	waitFor(t, "line after truncation", func() bool { return len(c.got()) == 5 })

	if got, want := c.got(), []uint64{2, 3, 4, 5, 6}; !slices.Equal(got, want) {
		t.Errorf("flow ids %v, want %v", got, want)
	}
}

func TestFileTailFromStartReadsExistingContent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eve.json")
	appendFile(t, path, evLine(1)+"\n"+evLine(2)+"\n")
	var c collector
	startReader(t, Config{Source: SourceFile, Path: path, FromStart: true, Handler: c.handle, PollInterval: 10 * time.Millisecond})
	waitFor(t, "existing lines", func() bool { return len(c.got()) == 2 })
}

func TestFileTailWaitsForAFileThatDoesNotExistYet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eve.json")
	var c collector
	startReader(t, Config{Source: SourceFile, Path: path, Handler: c.handle, PollInterval: 10 * time.Millisecond})
	time.Sleep(50 * time.Millisecond)
	// A file created after start-up is read from its beginning.
	appendFile(t, path, evLine(7)+"\n")
	waitFor(t, "line of the new file", func() bool { return len(c.got()) == 1 })
	if got := c.got(); got[0] != 7 {
		t.Errorf("flow id %d, want 7", got[0])
	}
}

func TestReadAllCountsEveryLine(t *testing.T) {
	input := evLine(1) + "\n\nnot json\n" + evLine(2)
	var tally Tally
	var c collector
	if err := ReadAll(bytes.NewReader([]byte(input)), 0, &tally, c.handle); err != nil {
		t.Fatal(err)
	}
	p, r := tally.Totals()
	if p != 2 || r != 2 {
		t.Errorf("parsed %d rejected %d, want 2 and 2 (empty + invalid)", p, r)
	}
}
