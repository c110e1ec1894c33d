package eve

import (
	"bufio"
	"errors"
	"io"
	"sync/atomic"
)

// readBufferSize is each stream's bufio buffer: a line shorter than this
// waits there for its newline, a longer one is copied into lineReader.buf.
const readBufferSize = 64 << 10

// keepLineBuffer is the largest line buffer kept between lines; a larger
// one (a huge record) is freed, and its budget returned, once the line is
// done.
const keepLineBuffer = 256 << 10

// byteBudget bounds the bytes held in partial lines over all the streams
// of one Reader, so many clients with long unterminated lines cannot
// together take MaxClients x MaxLineBytes. A nil budget is unbounded.
type byteBudget struct {
	max  int64
	used atomic.Int64
}

func (b *byteBudget) reserve(n int) bool {
	if b == nil {
		return true
	}
	if b.used.Add(int64(n)) > b.max {
		b.used.Add(-int64(n))
		return false
	}
	return true
}

func (b *byteBudget) release(n int) {
	if b != nil && n > 0 {
		b.used.Add(-int64(n))
	}
}

func (b *byteBudget) held() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

// lineReader splits a byte stream into lines of any length up to max bytes.
// Unlike bufio.Scanner it has no fixed token limit (EVE records of several
// MB exist) and it survives a line it cannot hold: the rest of that line is
// discarded and the next one is read normally. A partial line at EOF is kept
// so that a tailed file can be read again once the writer finishes it.
type lineReader struct {
	br       *bufio.Reader
	max      int
	budget   *byteBudget // charged with cap(buf)
	buf      []byte      // partial line carried across calls
	skipping bool        // inside a dropped line: discard up to the newline
	handed   bool        // buf was returned as a line: clear it on the next call
}

func newLineReader(r io.Reader, max int, budget *byteBudget) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, readBufferSize), max: max, budget: budget}
}

// reset points the reader at a new source (after rotation) and forgets any
// partial line.
func (l *lineReader) reset(r io.Reader) {
	l.br.Reset(r)
	l.buf = l.buf[:0]
	l.skipping = false
}

// close returns the line buffer's budget; the reader is not used after.
func (l *lineReader) close() { l.free() }

func (l *lineReader) free() {
	l.budget.release(cap(l.buf))
	l.buf = nil
}

// next returns the next complete line without its newline. Once per line
// it cannot return it sets reject (and line is nil): ReasonOversize for a
// line longer than max, ReasonBufferFull when the budget could not hold
// it. At EOF it returns io.EOF and keeps any partial line for the next
// call; the returned line is valid until the next call.
func (l *lineReader) next() (line []byte, reject Reason, err error) {
	if l.handed {
		l.buf, l.handed = l.buf[:0], false
	}
	if len(l.buf) == 0 && cap(l.buf) > keepLineBuffer {
		l.free()
	}
	for {
		chunk, err := l.br.ReadSlice('\n')
		complete := err == nil
		n := len(l.buf) + len(chunk)
		if complete {
			n-- // the newline is not part of the line
		}
		switch {
		case l.skipping:
			if complete {
				l.skipping = false
			}
		case n > l.max:
			l.buf = l.buf[:0]
			l.skipping = !complete
			return nil, ReasonOversize, nil
		case complete && len(l.buf) == 0:
			// Fast path: the whole line is in bufio's buffer.
			return chunk[:len(chunk)-1], "", nil
		case !l.hold(chunk, complete):
			l.skipping = !complete
			return nil, ReasonBufferFull, nil
		case complete:
			l.handed = true
			return l.buf, "", nil
		}
		if complete || errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return nil, "", err
	}
}

// hold appends chunk (without its newline if complete) to the partial
// line, growing buf within the budget; if the budget cannot cover it, the
// partial line is dropped and false returned. The caller made sure the
// line stays within max bytes.
func (l *lineReader) hold(chunk []byte, complete bool) bool {
	if complete {
		chunk = chunk[:len(chunk)-1]
	}
	need := len(l.buf) + len(chunk)
	if need > cap(l.buf) {
		c := min(max(need, 2*cap(l.buf), 4096), l.max)
		if !l.budget.reserve(c - cap(l.buf)) {
			l.free()
			return false
		}
		nb := make([]byte, len(l.buf), c)
		copy(nb, l.buf)
		l.buf = nb
	}
	l.buf = append(l.buf, chunk...)
	return true
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
