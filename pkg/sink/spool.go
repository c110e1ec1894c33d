package sink

import (
	"errors"
	"fmt"
	"os"

	"github.com/flowlens/flowlens/pkg/correlate"
)

// DefaultSpoolMaxBytes bounds a spool file left at zero size.
const DefaultSpoolMaxBytes = 1 << 30

// SpoolConfig configures where a sink parks records its destination
// rejects. The file holds JSON lines of the output columns (AppendJSON),
// so once the cause is fixed it can be loaded as it is, e.g.
// `clickhouse-client --query "INSERT INTO flows FORMAT JSONEachRow" < spool`.
type SpoolConfig struct {
	// Path of the spool file, appended to; "" disables parking (such
	// records are dropped and counted).
	Path string
	// MaxBytes bounds the file; records that do not fit are dropped and
	// counted (never rotated away: what is parked stays until an
	// operator removes it).
	MaxBytes int64
	// FileMode of a created file (default 0600).
	FileMode os.FileMode
	// Aggregator is stored in the aggregator column of parked rows.
	Aggregator string
}

func (c SpoolConfig) validate() error {
	switch {
	case c.MaxBytes < 0:
		return fmt.Errorf("maxBytes: must be positive, got %d", c.MaxBytes)
	case c.FileMode&^os.ModePerm != 0:
		return fmt.Errorf("fileMode: only permission bits are allowed, got %v", c.FileMode)
	}
	return nil
}

var errSpoolFull = errors.New("spool full")

// spool appends parked records; only the sink's Run goroutine uses it.
type spool struct {
	cfg  SpoolConfig
	f    *os.File
	size int64
	buf  []byte
}

// write appends as many of rs as fit and reports how many it kept.
func (s *spool) write(rs []*correlate.Record, batchID uint64) (int, error) {
	if s.f == nil {
		f, err := os.OpenFile(s.cfg.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, s.cfg.FileMode)
		if err != nil {
			return 0, fmt.Errorf("open spool %s: %w", s.cfg.Path, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return 0, fmt.Errorf("stat spool %s: %w", s.cfg.Path, err)
		}
		s.f, s.size = f, st.Size()
	}
	m := &Meta{Aggregator: s.cfg.Aggregator, BatchID: batchID}
	s.buf = s.buf[:0]
	kept := 0
	var err error
	for _, r := range rs {
		before := len(s.buf)
		s.buf = append(AppendJSON(s.buf, r, m), '\n')
		if s.size+int64(len(s.buf)) > s.cfg.MaxBytes {
			s.buf = s.buf[:before]
			err = fmt.Errorf("%s: %d bytes limit: %w", s.cfg.Path, s.cfg.MaxBytes, errSpoolFull)
			break
		}
		kept++
	}
	if kept == 0 {
		return 0, err
	}
	n, werr := s.f.Write(s.buf)
	s.size += int64(n)
	if werr != nil {
		// Lines cut short are not counted as parked.
		return countLines(s.buf[:n]), fmt.Errorf("write spool %s: %w", s.cfg.Path, werr)
	}
	// Parked records have nowhere else to be: make them survive a crash.
	if serr := s.f.Sync(); serr != nil {
		// Written, so counted as parked; the error is still logged.
		return kept, fmt.Errorf("sync spool %s: %w", s.cfg.Path, serr)
	}
	return kept, err
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}

func (s *spool) close() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
