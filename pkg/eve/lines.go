package eve

import (
	"bufio"
	"errors"
	"io"
)

// lineReader splits a byte stream into lines of any length up to max bytes.
// Unlike bufio.Scanner it has no fixed token limit (EVE records of several
// MB exist) and it survives an oversize line: the rest of that line is
// discarded and the next one is read normally. A partial line at EOF is kept
// so that a tailed file can be read again once the writer finishes it.
type lineReader struct {
	br       *bufio.Reader
	max      int
	buf      []byte // partial line carried across calls
	skipping bool   // inside an oversize line: discard up to the newline
	handed   bool   // buf was returned as a line: clear it on the next call
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10), max: max}
}

// reset points the reader at a new source (after rotation) and forgets any
// partial line.
func (l *lineReader) reset(r io.Reader) {
	l.br.Reset(r)
	l.buf = l.buf[:0]
	l.skipping = false
}

// next returns the next complete line without its newline. oversize is true
// (and line nil) once per line longer than max. At EOF it returns io.EOF
// and keeps any partial line for the next call; the returned line is valid
// until the next call.
func (l *lineReader) next() (line []byte, oversize bool, err error) {
	if l.handed {
		l.buf, l.handed = l.buf[:0], false
	}
	if cap(l.buf) > 1<<20 && len(l.buf) == 0 {
		// Do not pin a multi-MB buffer because of one huge record.
		l.buf = nil
	}
	for {
		chunk, err := l.br.ReadSlice('\n')
		complete := err == nil
		n := len(l.buf) + len(chunk)
		if complete {
			n-- // the newline is not part of the line
		}
		if l.skipping {
			if complete {
				l.skipping = false
			}
		} else if n > l.max {
			l.buf = l.buf[:0]
			l.skipping = !complete
			return nil, true, nil
		} else if complete {
			if len(l.buf) == 0 {
				// Fast path: the whole line is in bufio's buffer.
				return chunk[:len(chunk)-1], false, nil
			}
			l.buf = append(l.buf, chunk...)
			l.handed = true
			return l.buf[:len(l.buf)-1], false, nil
		} else {
			l.buf = append(l.buf, chunk...)
		}
		if complete {
			continue
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return nil, false, err
	}
}

// rest returns the partial line left at EOF (a final line without newline)
// and forgets it.
func (l *lineReader) rest() []byte {
	if l.handed {
		l.buf, l.handed = l.buf[:0], false
	}
	if l.skipping {
		l.skipping = false
		return nil
	}
	b := l.buf
	l.buf = l.buf[:0]
	return b
}
