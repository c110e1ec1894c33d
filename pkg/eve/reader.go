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
	// rotation and truncation. Default DefaultPollInterval.
	PollInterval time.Duration
	// Handler receives every parsed Event. Required. It is called from
	// several goroutines at once for a stream socket with several clients.
	Handler func(Event)
	// Observer counts line outcomes; optional, Metrics when nil.
	Observer Observer
	// Metrics counts connections and read errors; optional.
	Metrics *Metrics
}

// Reader reads EVE records from one source until its context ends.
type Reader struct {
	cfg Config
}

// New validates cfg and returns a Reader; nothing is opened until Run.
func New(cfg Config) (*Reader, error) {
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
	if cfg.Observer == nil {
		if cfg.Metrics != nil {
			cfg.Observer = cfg.Metrics
		} else {
			cfg.Observer = nopObserver{}
		}
	}
	return &Reader{cfg: cfg}, nil
}

type nopObserver struct{}

func (nopObserver) Parsed(*Event)   {}
func (nopObserver) Rejected(Reason) {}

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
	lr := newLineReader(src, maxLineBytes)
	for {
		line, oversize, err := lr.next()
		switch {
		case oversize:
			obs.Rejected(ReasonOversize)
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
	ln, err := listenUnix(r.cfg.Path, r.cfg.SocketMode)
	if err != nil {
		return err
	}
	defer removeSocket(r.cfg.Path)
	klog.InfoS("Listening for Suricata EVE", "source", r.cfg.Source, "path", r.cfg.Path)

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			r.cfg.Metrics.readError()
			klog.ErrorS(err, "Accept on EVE socket failed", "path", r.cfg.Path)
			// Avoid spinning on a persistent error such as EMFILE.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		r.cfg.Metrics.connection()
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			break
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			if err := ReadAll(c, r.cfg.MaxLineBytes, r.cfg.Observer, r.cfg.Handler); err != nil && ctx.Err() == nil {
				r.cfg.Metrics.readError()
				klog.V(2).InfoS("EVE connection ended with error", "path", r.cfg.Path, "err", err)
			}
		}()
	}
	wg.Wait()
	return nil
}

func (r *Reader) runDgram(ctx context.Context) error {
	conn, err := listenUnixgram(r.cfg.Path, r.cfg.SocketMode)
	if err != nil {
		return err
	}
	defer removeSocket(r.cfg.Path)
	klog.InfoS("Listening for Suricata EVE", "source", r.cfg.Source, "path", r.cfg.Path)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()

	buf := make([]byte, min(r.cfg.MaxLineBytes+1, maxDatagram))
	for {
		n, _, flags, _, err := conn.ReadMsgUnix(buf, nil)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.cfg.Metrics.readError()
			klog.ErrorS(err, "Read on EVE datagram socket failed", "path", r.cfg.Path)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if flags&msgTrunc != 0 || n > r.cfg.MaxLineBytes {
			r.cfg.Observer.Rejected(ReasonOversize)
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
			handleLine(line, r.cfg.Observer, r.cfg.Handler)
		}
	}
}
