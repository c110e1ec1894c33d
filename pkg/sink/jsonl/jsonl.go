// Package jsonl writes aggregated records as JSON lines to stdout or to a
// file rotated by size. It is a sink.Writer. Each line is one flat object
// of the output columns (sink.Columns), named and typed as the ClickHouse
// table's, so a file loads into that table with FORMAT JSONEachRow and
// sink.ParseJSONRow reads it back.
package jsonl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/flowlens/flowlens/pkg/sink"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxBytes = 100 << 20
	DefaultMaxFiles = 5
)

// Config configures a Writer.
type Config struct {
	// Path is the file to append to; "" or "-" is standard output, which
	// is never rotated.
	Path string
	// MaxBytes rotates the file before it would grow past this size:
	// Path becomes Path.1, Path.1 becomes Path.2, ... up to MaxFiles old
	// files.
	MaxBytes int64
	MaxFiles int
	// FileMode is the mode of the files it creates, on start and on
	// rotation (default 0600: rows hold URLs, hosts and pod names). An
	// existing file keeps its mode.
	FileMode os.FileMode
	// Aggregator is stored in every row's aggregator column.
	Aggregator string
	// Stdout replaces os.Stdout (tests).
	Stdout io.Writer
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.MaxBytes < 0:
		return fmt.Errorf("maxBytes: must be positive, got %d", c.MaxBytes)
	case c.MaxFiles < 0:
		return fmt.Errorf("maxFiles: must be positive, got %d", c.MaxFiles)
	case c.FileMode&^os.ModePerm != 0:
		return fmt.Errorf("fileMode: only permission bits are allowed, got %v", c.FileMode)
	}
	return nil
}

// Writer appends one JSON object per record.
type Writer struct {
	cfg     Config
	out     io.Writer
	file    *os.File
	size    int64
	rotates bool
	buf     []byte
	line    []byte
}

var _ sink.Writer = (*Writer)(nil)

// New validates cfg and opens the file (created if missing, appended to).
func New(cfg Config) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("jsonl sink config: %w", err)
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MaxFiles == 0 {
		cfg.MaxFiles = DefaultMaxFiles
	}
	if cfg.FileMode == 0 {
		cfg.FileMode = sink.DefaultFileMode
	}
	w := &Writer{cfg: cfg}
	if cfg.Path == "" || cfg.Path == "-" {
		w.out = cfg.Stdout
		if w.out == nil {
			w.out = os.Stdout
		}
		return w, nil
	}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.cfg.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, w.cfg.FileMode)
	if err != nil {
		return fmt.Errorf("open %s: %w", w.cfg.Path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat %s: %w", w.cfg.Path, err)
	}
	w.file, w.out, w.size = f, f, st.Size()
	// Rotating renames the path: never do that to a device such as
	// /dev/null or /dev/stderr.
	w.rotates = st.Mode().IsRegular()
	return nil
}

func (w *Writer) rotate() error {
	if err := w.file.Close(); err != nil {
		return fmt.Errorf("close %s: %w", w.cfg.Path, err)
	}
	w.file = nil
	for i := w.cfg.MaxFiles - 1; i >= 1; i-- {
		old := fmt.Sprintf("%s.%d", w.cfg.Path, i)
		if err := os.Rename(old, fmt.Sprintf("%s.%d", w.cfg.Path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate %s: %w", old, err)
		}
	}
	if err := os.Rename(w.cfg.Path, w.cfg.Path+".1"); err != nil {
		return fmt.Errorf("rotate %s: %w", w.cfg.Path, err)
	}
	return w.open()
}

// Write appends the batch. Records already written when an error occurs
// are reported in n so the sink retries only the rest.
func (w *Writer) Write(_ context.Context, b *sink.Batch) (int, error) {
	if w.out == nil {
		if err := w.open(); err != nil {
			return 0, err
		}
	}
	done, pending := 0, 0
	w.buf = w.buf[:0]
	flush := func() error {
		if len(w.buf) == 0 {
			return nil
		}
		n, err := w.out.Write(w.buf)
		w.size += int64(n)
		if err != nil {
			return fmt.Errorf("write %s: %w", w.name(), err)
		}
		w.buf = w.buf[:0]
		done += pending
		pending = 0
		return nil
	}
	m := &sink.Meta{Aggregator: w.cfg.Aggregator, BatchID: b.ID}
	for _, r := range b.Records {
		w.line = append(sink.AppendJSON(w.line[:0], r, m), '\n')
		line := w.line
		if w.rotates && w.size+int64(len(w.buf)+len(line)) > w.cfg.MaxBytes && w.size+int64(len(w.buf)) > 0 {
			if err := flush(); err != nil {
				return done, err
			}
			if err := w.rotate(); err != nil {
				w.out = nil // reopen on the next attempt
				return done, err
			}
		}
		w.buf = append(w.buf, line...)
		pending++
	}
	if err := flush(); err != nil {
		return done, err
	}
	return done, nil
}

func (w *Writer) name() string {
	if w.file == nil {
		return "stdout"
	}
	return w.cfg.Path
}

// Close closes the file (standard output is left open).
func (w *Writer) Close() error {
	if w.file == nil {
		return nil
	}
	if err := w.file.Close(); err != nil {
		return fmt.Errorf("close %s: %w", w.cfg.Path, err)
	}
	return nil
}
