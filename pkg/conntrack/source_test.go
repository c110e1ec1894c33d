package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
	"github.com/flowlens/flowlens/pkg/flow"
)

// fakeSocket replays queued datagrams or errors, then blocks until a past
// deadline is set, as a real socket with nothing to read does.
type fakeSocket struct {
	mu     sync.Mutex
	queue  []any // []byte or error
	sent   [][]byte
	closed bool
	wake   chan struct{}
}

func newFakeSocket(queue ...any) *fakeSocket {
	return &fakeSocket{queue: queue, wake: make(chan struct{})}
}

func (f *fakeSocket) send(b []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, append([]byte(nil), b...))
	return nil
}

func (f *fakeSocket) recv(b []byte) (int, error) {
	f.mu.Lock()
	if len(f.queue) == 0 {
		f.mu.Unlock()
		<-f.wake
		return 0, os.ErrDeadlineExceeded
	}
	next := f.queue[0]
	f.queue = f.queue[1:]
	f.mu.Unlock()
	if err, ok := next.(error); ok {
		return 0, err
	}
	return copy(b, next.([]byte)), nil
}

func (f *fakeSocket) tryRecv(b []byte) (int, bool, error) {
	f.mu.Lock()
	empty := len(f.queue) == 0
	f.mu.Unlock()
	if empty {
		return 0, false, nil
	}
	n, err := f.recv(b)
	return n, true, err
}

func (f *fakeSocket) setDeadline(t time.Time) error {
	if t.Before(time.Now()) {
		f.mu.Lock()
		defer f.mu.Unlock()
		select {
		case <-f.wake:
		default:
			close(f.wake)
		}
	}
	return nil
}

func (f *fakeSocket) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// fakeSource is a Source whose sockets are the given fakes, in order.
func fakeSource(t *testing.T, cfg Config, socks ...*fakeSocket) (*Source, *metrics, *int) {
	t.Helper()
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := s.m
	opened := 0
	next := func() (*fakeSocket, error) {
		if opened == len(socks) {
			return nil, errors.New("no more fake sockets")
		}
		opened++
		return socks[opened-1], nil
	}
	s.open = func(uint32, int) (socket, error) { return next() }
	s.openEvents = func(uint32, int) (eventSocket, error) { return next() }
	return s, m, &opened
}

func entryWithZone(i int, zone uint16) conntracktest.Entry {
	e := conntracktest.SyntheticEntry(i)
	e.Zone = zone
	return e
}

func ctMsg(seq uint32, e conntracktest.Entry) []byte {
	return conntracktest.AppendMessage(nil, ipctnlMsgCTNew, nlmFMulti, seq, e)
}

// ctlMsg builds an NLMSG_DONE or NLMSG_ERROR message carrying -errno.
func ctlMsg(typ uint16, seq uint32, errno syscall.Errno) []byte {
	b := binary.NativeEndian.AppendUint32(nil, nlmsgHdrLen+4)
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, nlmFMulti)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	return binary.NativeEndian.AppendUint32(b, uint32(-int32(errno)))
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestDumpOverFakeSocket(t *testing.T) {
	garbage := cat(ctMsg(1, conntracktest.SyntheticEntry(9))[:nlmsgHdrLen+nfgenHdrLen], []byte{3, 0, 1, 0})
	binary.NativeEndian.PutUint32(garbage, uint32(len(garbage)))
	tests := []struct {
		name        string
		cfg         Config
		queue       []any
		wantPorts   []uint16 // Tuple.SrcPort of delivered entries
		wantErr     error
		wantDecErrs float64
		wantFilter  float64
	}{
		{
			name: "entries of this request are delivered and stale ones skipped",
			queue: []any{
				cat(ctMsg(0, entryWithZone(1, 0)), ctMsg(1, entryWithZone(2, 0))),
				cat(ctMsg(1, entryWithZone(3, 0)), ctlMsg(nlmsgDone, 1, 0)),
			},
			wantPorts: []uint16{1026, 1027},
		},
		{
			name: "an undecodable entry is counted and the dump goes on",
			queue: []any{
				cat(ctMsg(1, entryWithZone(1, 0)), garbage, ctMsg(1, entryWithZone(2, 0)), ctlMsg(nlmsgDone, 1, 0)),
			},
			wantPorts:   []uint16{1025, 1026},
			wantDecErrs: 1,
		},
		{
			name:       "zones the kernel cannot filter are dropped in user space",
			cfg:        Config{Zones: []uint16{1, 2}},
			queue:      []any{cat(ctMsg(1, entryWithZone(1, 1)), ctMsg(1, entryWithZone(2, 3)), ctMsg(1, entryWithZone(3, 2)), ctlMsg(nlmsgDone, 1, 0))},
			wantPorts:  []uint16{1025, 1027},
			wantFilter: 1,
		},
		{
			name:    "a kernel error message fails the dump with its errno",
			queue:   []any{ctlMsg(nlmsgError, 1, syscall.EPERM)},
			wantErr: syscall.EPERM,
		},
		{
			name:      "DONE carrying an error fails the dump after delivering what came",
			queue:     []any{cat(ctMsg(1, entryWithZone(1, 0)), ctlMsg(nlmsgDone, 1, syscall.ENOMEM))},
			wantPorts: []uint16{1025},
			wantErr:   syscall.ENOMEM,
		},
		{
			name:    "a read timeout fails the dump",
			queue:   []any{ctMsg(1, entryWithZone(1, 0)), os.ErrDeadlineExceeded},
			wantErr: os.ErrDeadlineExceeded,
			// the entry before the timeout was still delivered
			wantPorts: []uint16{1025},
		},
		{
			name:    "a message longer than its datagram fails the dump",
			queue:   []any{ctMsg(1, entryWithZone(1, 0))[:40]},
			wantErr: errMessageTruncated,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := newFakeSocket(tt.queue...)
			s, m, _ := fakeSource(t, tt.cfg, sock)
			var ports []uint16
			err := s.Dump(func(c *flow.Conn) { ports = append(ports, c.Tuple.SrcPort) })
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Dump error = %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(ports, tt.wantPorts) {
				t.Errorf("delivered source ports %v, want %v", ports, tt.wantPorts)
			}
			if got := value(t, m.decodeErrors); got != tt.wantDecErrs {
				t.Errorf("decode errors = %v, want %v", got, tt.wantDecErrs)
			}
			if got := value(t, m.entriesFiltered); got != tt.wantFilter {
				t.Errorf("filtered = %v, want %v", got, tt.wantFilter)
			}
			wantDumpErrs := 0.0
			if tt.wantErr != nil {
				wantDumpErrs = 1
			}
			if got := value(t, m.dumpErrors); got != wantDumpErrs {
				t.Errorf("dump errors = %v, want %v", got, wantDumpErrs)
			}
			if sock.closed != (tt.wantErr != nil) {
				t.Errorf("socket closed = %v; want it closed only after a failed dump", sock.closed)
			}
			if len(sock.sent) != 1 || binary.NativeEndian.Uint32(sock.sent[0][8:]) != 1 {
				t.Errorf("sent %d requests, want one dump request with sequence 1", len(sock.sent))
			}
		})
	}
}

func TestDumpReopensTheSocketAfterAFailure(t *testing.T) {
	first := newFakeSocket(ctlMsg(nlmsgError, 1, syscall.EBUSY))
	second := newFakeSocket(cat(ctMsg(2, entryWithZone(1, 0)), ctlMsg(nlmsgDone, 2, 0)))
	s, m, opened := fakeSource(t, Config{}, first, second)
	if err := s.Dump(func(*flow.Conn) {}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("first dump: %v, want EBUSY", err)
	}
	n := 0
	if err := s.Dump(func(*flow.Conn) { n++ }); err != nil {
		t.Fatalf("second dump: %v", err)
	}
	if *opened != 2 || n != 1 || !first.closed || second.closed {
		t.Errorf("opened %d sockets, delivered %d, first closed %v, second closed %v; want 2, 1, true, false",
			*opened, n, first.closed, second.closed)
	}
	if got := value(t, m.dumps); got != 2 {
		t.Errorf("dumps = %v, want 2", got)
	}
	if err := s.Close(); err != nil || !second.closed {
		t.Errorf("Close: %v, socket closed %v", err, second.closed)
	}
}

func TestListenOverFakeSocket(t *testing.T) {
	newMsg := conntracktest.AppendMessage(nil, ipctnlMsgCTNew, nlmFCreate|nlmFExcl, 0, entryWithZone(1, 0))
	destroy := conntracktest.AppendMessage(nil, ipctnlMsgCTDelete, 0, 0, entryWithZone(2, 0))
	tests := []struct {
		name      string
		queue     []any
		want      []EventType
		wantErr   error
		overruns  float64
		errsCount float64
	}{
		{
			name:     "an overrun is reported to the caller and listening goes on",
			queue:    []any{syscall.ENOBUFS, cat(newMsg, destroy)},
			want:     []EventType{EventOverrun, EventNew, EventDestroy},
			overruns: 1,
		},
		{
			name:      "another socket error ends Listen with it",
			queue:     []any{newMsg, syscall.EBADF},
			want:      []EventType{EventNew},
			wantErr:   syscall.EBADF,
			errsCount: 1,
		},
	}
	// Read one by one, and in batches: the same events, in order, with
	// the same overruns and errors.
	for _, batch := range []time.Duration{0, 5 * time.Millisecond} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/batch=%s", tt.name, batch), func(t *testing.T) {
				sock := newFakeSocket(tt.queue...)
				s, m, _ := fakeSource(t, Config{EventBatchDelay: batch}, sock)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var mu sync.Mutex
				var got []EventType
				// batchEndsAfterAll: the count of batch ends when the first
				// came after the last event.
				var batchEnds, batchEndsAfterAll int
				allSeen := make(chan struct{})
				done := make(chan error, 1)
				go func() {
					done <- s.Listen(ctx, func(ev Event) {
						if (ev.Conn == nil) != (ev.Type == EventOverrun || ev.Type == EventBatchEnd) {
							t.Errorf("event %v with Conn %v", ev.Type, ev.Conn)
						}
						mu.Lock()
						if ev.Type == EventBatchEnd {
							batchEnds++
							if len(got) == len(tt.want) && batchEndsAfterAll == 0 {
								batchEndsAfterAll = batchEnds
							}
							mu.Unlock()
							return
						}
						got = append(got, ev.Type)
						if len(got) == len(tt.want) {
							close(allSeen)
						}
						mu.Unlock()
					})
				}()
				if tt.wantErr == nil {
					select {
					case <-allSeen:
					case <-time.After(5 * time.Second):
						t.Fatal("events did not all arrive")
					}
					cancel()
				}
				select {
				case err := <-done:
					if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
						t.Errorf("Listen = %v, want %v", err, tt.wantErr)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("Listen did not return")
				}
				mu.Lock()
				defer mu.Unlock()
				if !slices.Equal(got, tt.want) {
					t.Fatalf("events %v, want %v", got, tt.want)
				}
				switch {
				case batch == 0 && batchEnds != 0:
					t.Errorf("%d batch ends without batching", batchEnds)
				case batch > 0 && tt.wantErr == nil && batchEndsAfterAll == 0:
					t.Errorf("no batch end after the last event (%d batch ends)", batchEnds)
				}
				if v := value(t, m.eventOverruns); v != tt.overruns {
					t.Errorf("overruns = %v, want %v", v, tt.overruns)
				}
				if v := value(t, m.eventErrors); v != tt.errsCount {
					t.Errorf("event errors = %v, want %v", v, tt.errsCount)
				}
				if !sock.closed {
					t.Error("Listen left its socket open")
				}
			})
		}
	}
}

// An EventStream reads what is queued and returns: an overrun is reported
// in its place and reading goes on; another socket error ends the Drain.
func TestEventStreamDrainsWhatIsQueued(t *testing.T) {
	newMsg := conntracktest.AppendMessage(nil, ipctnlMsgCTNew, nlmFCreate|nlmFExcl, 0, entryWithZone(1, 0))
	destroy := conntracktest.AppendMessage(nil, ipctnlMsgCTDelete, 0, 0, entryWithZone(2, 0))
	sock := newFakeSocket(syscall.ENOBUFS, cat(newMsg, destroy), newMsg)
	s, m, _ := fakeSource(t, Config{}, sock)
	es, err := s.OpenEvents()
	if err != nil {
		t.Fatal(err)
	}
	var got []EventType
	collect := func(ev Event) {
		if (ev.Conn == nil) != (ev.Type == EventOverrun) {
			t.Errorf("event %v with Conn %v", ev.Type, ev.Conn)
		}
		got = append(got, ev.Type)
	}
	if err := es.Drain(0, collect); err != nil {
		t.Fatal(err)
	}
	if want := []EventType{EventOverrun, EventNew, EventDestroy, EventNew}; !slices.Equal(got, want) {
		t.Errorf("first Drain: %v, want %v", got, want)
	}
	if v := value(t, m.eventOverruns); v != 1 {
		t.Errorf("overruns counted %v, want 1", v)
	}
	got = nil
	if err := es.Drain(0, collect); err != nil || len(got) != 0 {
		t.Errorf("Drain of an empty socket: %v, %v", got, err)
	}
	// max bounds the datagrams one Drain reads; the rest waits.
	sock.mu.Lock()
	sock.queue = append(sock.queue, newMsg, destroy, newMsg)
	sock.mu.Unlock()
	if err := es.Drain(2, collect); err != nil {
		t.Fatal(err)
	}
	if want := []EventType{EventNew, EventDestroy}; !slices.Equal(got, want) {
		t.Errorf("Drain of at most 2 datagrams: %v, want %v", got, want)
	}
	got = nil
	if err := es.Drain(0, collect); err != nil || !slices.Equal(got, []EventType{EventNew}) {
		t.Errorf("Drain after it: %v, %v; want the third datagram's NEW", got, err)
	}
	got = nil
	sock.mu.Lock()
	sock.queue = append(sock.queue, newMsg, syscall.EBADF, newMsg)
	sock.mu.Unlock()
	if err := es.Drain(0, collect); !errors.Is(err, syscall.EBADF) {
		t.Errorf("Drain over a failing socket: %v, want EBADF", err)
	}
	if want := []EventType{EventNew}; !slices.Equal(got, want) {
		t.Errorf("Drain over a failing socket reported %v, want %v before the error", got, want)
	}
	if v := value(t, m.eventErrors); v != 1 {
		t.Errorf("event errors counted %v, want 1", v)
	}
	if err := es.Close(); err != nil || !sock.closed {
		t.Errorf("Close: %v, socket closed %v", err, sock.closed)
	}
}
