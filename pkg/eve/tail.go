package eve

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	"k8s.io/klog/v2"
)

// runFile tails cfg.Path. It polls rather than using inotify: polling also
// works on overlay and network filesystems and costs one stat per interval,
// and the interval bounds the added latency. Rotation (the path names a new
// file) is followed after draining the old file; truncation (the file is
// shorter than what was read, as with copytruncate) restarts at offset 0.
// Truncation followed by a rewrite past the old offset within one interval
// cannot be told from appends; that is the usual tail limitation.
func (r *Reader) runFile(ctx context.Context) error {
	var (
		f        *os.File
		lr       = newLineReader(nil, r.cfg.MaxLineBytes, nil)
		draining bool // path was rotated: finish the old file first
		waited   bool // logged that the file is missing
	)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	open := func(fromStart bool) bool {
		nf, err := os.Open(r.cfg.Path)
		if err != nil {
			if !waited {
				klog.InfoS("Waiting for EVE file", "path", r.cfg.Path, "err", err)
				waited = true
			}
			return false
		}
		waited = false
		if !fromStart {
			if _, err := nf.Seek(0, io.SeekEnd); err != nil {
				nf.Close()
				r.m.readError()
				return false
			}
		}
		if f != nil {
			f.Close()
		}
		f = nf
		lr.reset(f)
		klog.InfoS("Tailing EVE file", "path", r.cfg.Path, "fromStart", fromStart)
		return true
	}
	first := true
	ticker := time.NewTicker(r.cfg.PollInterval)
	defer ticker.Stop()
	for {
		if f == nil {
			// A file that appears after start-up is new: read all of it.
			if open(r.cfg.FromStart || !first) {
				first = false
			} else {
				first = false
				if !sleep(ctx, ticker) {
					return nil
				}
				continue
			}
		}
		// Read everything available.
		for ctx.Err() == nil {
			line, reject, err := lr.next()
			if reject != "" {
				r.obs.Rejected(reject)
				continue
			}
			if err == nil {
				handleLine(line, r.obs, r.cfg.Handler)
				continue
			}
			if !errors.Is(err, io.EOF) {
				r.m.readError()
				klog.ErrorS(err, "Read EVE file failed", "path", r.cfg.Path)
			}
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		if draining {
			// The old file is done; its unterminated tail will never
			// be completed.
			if rest := lr.rest(); len(rest) > 0 {
				handleLine(rest, r.obs, r.cfg.Handler)
			}
			draining = false
			f.Close()
			f = nil
			continue
		}
		if rotated, truncated := r.fileChanged(f); rotated {
			draining = true
			continue
		} else if truncated {
			klog.InfoS("EVE file truncated, reading from the start", "path", r.cfg.Path)
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				r.m.readError()
				f.Close()
				f = nil
				continue
			}
			lr.reset(f)
			continue
		}
		if !sleep(ctx, ticker) {
			return nil
		}
	}
}

// fileChanged reports whether the path now names another file, or whether
// the open file became shorter than the position read so far.
func (r *Reader) fileChanged(f *os.File) (rotated, truncated bool) {
	cur, err := f.Stat()
	if err != nil {
		return true, false
	}
	if st, err := os.Stat(r.cfg.Path); err == nil && !os.SameFile(st, cur) {
		return true, false
	}
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return false, false
	}
	return false, cur.Size() < pos
}

func sleep(ctx context.Context, t *time.Ticker) bool {
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
