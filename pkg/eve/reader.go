package eve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// SourceKind selects where a Reader gets EVE records from; the names match
// Suricata's eve-log filetype values.
type SourceKind string

// Source kinds.
const (
	// SourceUnixStream: the agent listens on a unix stream socket and
	// Suricata (filetype: unix_stream) connects, possibly several times at
	// once and again after each restart.
	SourceUnixStream SourceKind = "unix_stream"
	// SourceUnixDgram: the agent binds a unix datagram socket; Suricata
	// (filetype: unix_dgram) sends one record per datagram.
	SourceUnixDgram SourceKind = "unix_dgram"
	// SourceFile: the agent tails eve.json (filetype: regular), following
	// rotation (rename + new file) and truncation (copytruncate).
	SourceFile SourceKind = "regular"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxLineBytes = 16 << 20
	DefaultSocketMode   = os.FileMode(0o660)
	DefaultPollInterval = 250 * time.Millisecond
	DefaultMaxClients   = 16
	// DefaultMaxBufferedBytes is used when it is larger than MaxLineBytes,
	// else MaxLineBytes is.
	DefaultMaxBufferedBytes = 64 << 20
	// maxDatagram bounds the receive buffer: the kernel's socket buffer
	// limits (wmem_max) keep real EVE datagrams far below it.
	maxDatagram = 4 << 20
)

// Config configures a Reader.
type Config struct {
	Source SourceKind
	// Path is the socket to create or the file to tail.
	Path string
	// MaxLineBytes bounds the memory one record can take; longer lines are
	// rejected as ReasonOversize. Default DefaultMaxLineBytes.
	MaxLineBytes int
	// SocketMode is the socket file's permission; it must grant nothing to
	// others. Default 0660 (Suricata runs as another user in the group).
	SocketMode os.FileMode
	// FromStart makes a file source read what the file already holds;
	// by default it starts at the end, as `tail -f` does.
	FromStart bool
	// PollInterval is how often a file source checks for new data,
	// rotation and truncation, and how often a socket source checks that
	// its socket file is still in place (it creates it again if it was
	// removed). Default DefaultPollInterval.
	PollInterval time.Duration
	// MaxClients bounds the clients connected at once to a unix_stream
	// socket (Suricata uses one per eve-log output). A client beyond it is
	// closed at once and counted (flowlens_eve_clients_refused_total).
	// Default DefaultMaxClients.
	MaxClients int
	// MaxBufferedBytes bounds the bytes all clients of a unix_stream
	// socket together hold in lines they have not finished (each client
	// also has a fixed 64 KiB read buffer, so the total is at most
	// MaxBufferedBytes + MaxClients x 64 KiB). A line that does not fit is
	// rejected as ReasonBufferFull. At least MaxLineBytes; default the
	// larger of DefaultMaxBufferedBytes and MaxLineBytes.
	MaxBufferedBytes int
	// Handler receives every parsed Event. Required. It is called from
	// several goroutines at once for a stream socket with several clients.
	Handler func(Event)
	// Observer is told every line's outcome besides the Reader's metrics;
	// optional (flowlens eve check and tests tally with it).
	Observer Observer
}

// Reader reads EVE records from one source until its context ends.
type Reader struct {
	cfg    Config
	m      *metrics
	obs    Observer
	budget *byteBudget // stream sockets' partial lines

	mu        sync.Mutex
	socketErr error // why the socket is not usable; nil when it is
}

// New validates cfg and returns a Reader whose metrics are registered on
// reg (a nil reg leaves them unregistered); nothing is opened until Run.
func New(cfg Config, reg prometheus.Registerer) (*Reader, error) {
	switch cfg.Source {
	case SourceUnixStream, SourceUnixDgram, SourceFile:
	default:
		return nil, fmt.Errorf("eve: Source %q: want %q, %q or %q", cfg.Source, SourceUnixStream, SourceUnixDgram, SourceFile)
	}
	if cfg.Path == "" {
		return nil, errors.New("eve: Path is required")
	}
	if cfg.Handler == nil {
		return nil, errors.New("eve: Handler is required")
	}
	if cfg.MaxLineBytes == 0 {
		cfg.MaxLineBytes = DefaultMaxLineBytes
	}
	if cfg.MaxLineBytes < 0 {
		return nil, fmt.Errorf("eve: MaxLineBytes %d must be positive", cfg.MaxLineBytes)
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = DefaultSocketMode
	}
	if cfg.SocketMode&^os.ModePerm != 0 || cfg.SocketMode&0o007 != 0 {
		return nil, fmt.Errorf("eve: SocketMode %#o must be permission bits granting nothing to others", uint32(cfg.SocketMode))
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.PollInterval < 0 {
		return nil, fmt.Errorf("eve: PollInterval %s must be positive", cfg.PollInterval)
	}
	if cfg.MaxClients == 0 {
		cfg.MaxClients = DefaultMaxClients
	}
	if cfg.MaxClients < 0 {
		return nil, fmt.Errorf("eve: MaxClients %d must be positive", cfg.MaxClients)
	}
	if cfg.MaxBufferedBytes == 0 {
		cfg.MaxBufferedBytes = max(DefaultMaxBufferedBytes, cfg.MaxLineBytes)
	}
	if cfg.MaxBufferedBytes < cfg.MaxLineBytes {
		return nil, fmt.Errorf("eve: MaxBufferedBytes %d must be at least MaxLineBytes %d", cfg.MaxBufferedBytes, cfg.MaxLineBytes)
	}
	r := &Reader{cfg: cfg, budget: &byteBudget{max: int64(cfg.MaxBufferedBytes)}}
	var err error
	if r.m, err = newMetrics(reg, r.budget); err != nil {
		return nil, err
	}
	r.obs = r.m
	if cfg.Observer != nil {
		r.obs = teeObserver{r.m, cfg.Observer}
	}
	if cfg.Source != SourceFile {
		r.setSocketErr(fmt.Errorf("eve: socket %s not created yet", cfg.Path))
	}
	return r, nil
}

type teeObserver [2]Observer

func (t teeObserver) Parsed(ev *Event) {
	t[0].Parsed(ev)
	t[1].Parsed(ev)
}

func (t teeObserver) Rejected(r Reason) {
	t[0].Rejected(r)
	t[1].Rejected(r)
}

type nopObserver struct{}

func (nopObserver) Parsed(*Event)   {}
func (nopObserver) Rejected(Reason) {}

// Health returns nil while the source can receive records, else why not:
// for a socket source, that its socket file is missing, or that something
// that is not its socket is in its place. Run recreates a removed socket
// within PollInterval; until it can, Suricata cannot connect and Health
// says so. A file source is always healthy (the file may come later).
func (r *Reader) Health() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.socketErr
}

// setSocketErr records the socket's state for Health and the metric; it
// returns the previous state.
func (r *Reader) setSocketErr(err error) (was error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	was = r.socketErr
	r.socketErr = err
	// Under the lock, so the metric never disagrees with Health.
	if err == nil {
		r.m.socketReady.Set(1)
	} else {
		r.m.socketReady.Set(0)
	}
	return was
}

// Run reads until ctx is done, then closes the source and returns nil once
// every goroutine it started has exited. It returns an error only when the
// source cannot be set up (socket path in use, not a socket, ...).
func (r *Reader) Run(ctx context.Context) error {
	switch r.cfg.Source {
	case SourceUnixStream:
		return r.runStream(ctx)
	case SourceUnixDgram:
		return r.runDgram(ctx)
	default:
		return r.runFile(ctx)
	}
}

// watchSocket checks every PollInterval until ctx ends that the path still
// names the socket id, and when it does not, binds a new one with rebind:
// a removed socket file (a tmp cleaner, an operator) would otherwise leave
// Suricata unable to connect while nothing tells. A path taken by a file
// that is not ours is left alone and reported by Health. It returns the
// identity of the last socket bound.
func (r *Reader) watchSocket(ctx context.Context, id os.FileInfo, rebind func() (os.FileInfo, error)) os.FileInfo {
	t := time.NewTicker(r.cfg.PollInterval)
	defer t.Stop()
	for sleep(ctx, t) {
		if fi, err := os.Lstat(r.cfg.Path); err == nil && os.SameFile(fi, id) {
			continue
		}
		nid, err := rebind()
		if err != nil {
			err = fmt.Errorf("eve: socket %s was removed or replaced and cannot be created again: %w", r.cfg.Path, err)
			if was := r.setSocketErr(err); was == nil {
				klog.ErrorS(err, "EVE socket unusable; Suricata cannot connect until it is fixed", "path", r.cfg.Path)
			}
			continue
		}
		id = nid
		r.m.socketRecreated.Inc()
		klog.InfoS("EVE socket file was removed; created it again", "path", r.cfg.Path)
		r.setSocketErr(nil)
	}
	return id
}

// handleLine parses one line and hands the outcome on.
func handleLine(line []byte, obs Observer, h func(Event)) {
	ev, err := ParseLine(line)
	if err != nil {
		obs.Rejected(ReasonOf(err))
		return
	}
	obs.Parsed(&ev)
	h(ev)
}

// ReadAll reads EVE lines from src until EOF, handing each parsed Event to h
// and every outcome to obs (which may be nil). A final line without newline
// is parsed too. Only a read error from src is returned.
func ReadAll(src io.Reader, maxLineBytes int, obs Observer, h func(Event)) error {
	if maxLineBytes <= 0 {
		maxLineBytes = DefaultMaxLineBytes
	}
	if obs == nil {
		obs = nopObserver{}
	}
	return readLines(src, maxLineBytes, nil, obs, h)
}

// readLines is ReadAll with partial lines held within budget.
func readLines(src io.Reader, maxLineBytes int, budget *byteBudget, obs Observer, h func(Event)) error {
	lr := newLineReader(src, maxLineBytes, budget)
	defer lr.close()
	for {
		line, reject, err := lr.next()
		switch {
		case reject != "":
			obs.Rejected(reject)
		case err == nil:
			handleLine(line, obs, h)
		case errors.Is(err, io.EOF):
			if rest := lr.rest(); len(rest) > 0 {
				handleLine(rest, obs, h)
			}
			return nil
		default:
			return err
		}
	}
}

func (r *Reader) runStream(ctx context.Context) error {
	ln, id, err := listenUnix(r.cfg.Path, r.cfg.SocketMode)
	if err != nil {
		return err
	}
	r.setSocketErr(nil)
	klog.InfoS("Listening for Suricata EVE", "source", r.cfg.Source, "path", r.cfg.Path)
	srv := &streamServer{r: r, ctx: ctx, slots: make(chan struct{}, r.cfg.MaxClients), conns: map[net.Conn]struct{}{}}
	srv.listen(ln)
	id = r.watchSocket(ctx, id, func() (os.FileInfo, error) {
		ln, id, err := listenUnix(r.cfg.Path, r.cfg.SocketMode)
		if err != nil {
			return nil, err
		}
		srv.listen(ln)
		return id, nil
	})
	srv.stop()
	srv.wg.Wait()
	removeSocket(r.cfg.Path, id)
	r.setSocketErr(errors.New("eve: reader stopped"))
	return nil
}

// streamServer accepts clients on the current listener (a new one replaces
// it when the socket file had to be created again; clients already
// connected stay) and reads each client's lines until it disconnects.
type streamServer struct {
	r     *Reader
	ctx   context.Context
	slots chan struct{} // one per client, MaxClients in all
	wg    sync.WaitGroup

	mu      sync.Mutex
	ln      *net.UnixListener
	conns   map[net.Conn]struct{}
	stopped bool
}

// listen makes ln the listener, closing the one it replaces.
func (s *streamServer) listen(ln *net.UnixListener) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		ln.Close()
		return
	}
	old := s.ln
	s.ln = ln
	s.wg.Add(1)
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	go s.accept(ln)
}

// stop closes the listener and every client.
func (s *streamServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
}

func (s *streamServer) accept(ln *net.UnixListener) {
	defer s.wg.Done()
	r := s.r
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			r.m.readError()
			klog.ErrorS(err, "Accept on EVE socket failed", "path", r.cfg.Path)
			// Avoid spinning on a persistent error such as EMFILE.
			select {
			case <-s.ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case s.slots <- struct{}{}:
		default:
			r.m.clientsRefused.Inc()
			klog.V(2).InfoS("EVE client refused: MaxClients reached", "path", r.cfg.Path, "maxClients", r.cfg.MaxClients)
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			c.Close()
			<-s.slots
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		r.m.connections.Inc()
		r.m.clients.Inc()
		go s.serve(c)
	}
}

func (s *streamServer) serve(c net.Conn) {
	defer s.wg.Done()
	r := s.r
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
		// The gauge drops once the slot is free: a client connecting
		// after it shows one fewer is accepted.
		<-s.slots
		r.m.clients.Dec()
	}()
	if err := readLines(c, r.cfg.MaxLineBytes, r.budget, r.obs, r.cfg.Handler); err != nil && s.ctx.Err() == nil {
		r.m.readError()
		klog.V(2).InfoS("EVE connection ended with error", "path", r.cfg.Path, "err", err)
	}
}

func (r *Reader) runDgram(ctx context.Context) error {
	conn, id, err := listenUnixgram(r.cfg.Path, r.cfg.SocketMode)
	if err != nil {
		return err
	}
	r.setSocketErr(nil)
	klog.InfoS("Listening for Suricata EVE", "source", r.cfg.Source, "path", r.cfg.Path)
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		cur *net.UnixConn
	)
	// use makes c the socket read. The one it replaces is closed: a
	// client still connected to it gets ECONNREFUSED on its next send and
	// connects again to the path (Suricata retries the write once it has).
	use := func(c *net.UnixConn) {
		mu.Lock()
		old := cur
		cur = c
		mu.Unlock()
		if old != nil {
			old.Close()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.readDgram(ctx, c)
		}()
	}
	use(conn)
	id = r.watchSocket(ctx, id, func() (os.FileInfo, error) {
		c, id, err := listenUnixgram(r.cfg.Path, r.cfg.SocketMode)
		if err != nil {
			return nil, err
		}
		use(c)
		return id, nil
	})
	mu.Lock()
	cur.Close()
	mu.Unlock()
	wg.Wait()
	removeSocket(r.cfg.Path, id)
	r.setSocketErr(errors.New("eve: reader stopped"))
	return nil
}

// readDgram reads conn until it is closed.
func (r *Reader) readDgram(ctx context.Context, conn *net.UnixConn) {
	buf := make([]byte, min(r.cfg.MaxLineBytes+1, maxDatagram))
	for {
		n, _, flags, _, err := conn.ReadMsgUnix(buf, nil)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			r.m.readError()
			klog.ErrorS(err, "Read on EVE datagram socket failed", "path", r.cfg.Path)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if flags&msgTrunc != 0 || n > r.cfg.MaxLineBytes {
			r.obs.Rejected(ReasonOversize)
			continue
		}
		// One record per datagram, but tolerate a sender that batches
		// several newline-separated records.
		data := buf[:n]
		for len(data) > 0 {
			line := data
			if i := bytes.IndexByte(data, '\n'); i >= 0 {
				line, data = data[:i], data[i+1:]
			} else {
				data = nil
			}
			handleLine(line, r.obs, r.cfg.Handler)
		}
	}
}
