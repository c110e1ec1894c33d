// Package wal is the aggregator's write-ahead log: every decoded record is
// appended (and numbered) before the correlator takes it in, and stays on
// disk until every sink has written the rows that include it. After a crash
// the records some sink had not committed are replayed, each with the set
// of sinks still owed it, so a sink never receives a record twice on account
// of the log.
//
// Commits are frames of the log itself: when a sink has written a batch,
// the aggregator appends one commit frame naming the sink and the sequence
// numbers of the records in that batch's rows. Records are numbered in the
// order they are appended and a segment holds a contiguous range of them, so
// the oldest segments are removed once every record in them is committed by
// every configured sink; a commit frame only ever names records of its own
// or older segments, so removing a prefix of segments never loses a commit
// that a kept record needs.
//
// What is not exact (see Commit): a crash after a sink's destination took a
// batch and before its commit frame reached the kernel replays that batch's
// records to that sink once more; with Sync "interval" a machine crash can
// lose up to SyncInterval of commit frames the same way. A sink whose
// destination can tell whether it stored a batch (ClickHouse, by batch id)
// closes that window with an intent frame, written before the batch is
// sent: it names the batch and its records, and after a crash Intents
// returns the batches whose records are still uncommitted, so the caller
// can ask the destination and commit those it has.
package wal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// SyncPolicy says when appended bytes are forced to stable storage. Every
// append is written to the kernel before Append returns, so a killed
// process loses nothing whatever the policy; the policy only matters when
// the machine itself fails.
type SyncPolicy string

// Sync policies.
const (
	// SyncAlways fsyncs after every append and commit.
	SyncAlways SyncPolicy = "always"
	// SyncInterval fsyncs every SyncInterval when something was written.
	SyncInterval SyncPolicy = "interval"
	// SyncNever leaves write-back to the kernel.
	SyncNever SyncPolicy = "never"
)

// Defaults for Config fields left zero.
const (
	DefaultSegmentBytes = 64 << 20
	DefaultMaxBytes     = 1 << 30
	DefaultSync         = SyncInterval
	DefaultSyncInterval = time.Second
	// MaxSinks is how many sinks the log tracks commits for.
	MaxSinks = 8
)

// Config configures a Log. Field names in errors are the YAML names of the
// aggregator's `wal:` block.
type Config struct {
	// Dir holds the segment files (created 0700, files 0600).
	Dir string
	// SegmentBytes is the size at which a new segment is started.
	SegmentBytes int64
	// MaxBytes bounds the log; past it the oldest segments are removed even
	// if some sink has not committed their records (counted).
	MaxBytes     int64
	Sync         SyncPolicy
	SyncInterval time.Duration
	// Sinks names the consumers that must commit a record before it may be
	// removed; commits of names not listed (a sink since removed from the
	// configuration) are ignored.
	Sinks []string
}

func (c *Config) setDefaults() {
	if c.SegmentBytes == 0 {
		c.SegmentBytes = DefaultSegmentBytes
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = max(DefaultMaxBytes, 2*c.SegmentBytes)
	}
	if c.Sync == "" {
		c.Sync = DefaultSync
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = DefaultSyncInterval
	}
}

// Validate reports the first invalid field after defaults are applied.
func (c Config) Validate() error {
	c.setDefaults()
	switch {
	case c.Dir == "":
		return errors.New("dir: must be set")
	case c.SegmentBytes < 4096:
		return fmt.Errorf("segmentBytes: must be at least 4096, got %d", c.SegmentBytes)
	case c.SegmentBytes > 1<<40:
		return fmt.Errorf("segmentBytes: must be at most 1 TiB, got %d", c.SegmentBytes)
	case c.MaxBytes < 2*c.SegmentBytes:
		return fmt.Errorf("maxBytes: must be at least twice segmentBytes (%d), got %d", 2*c.SegmentBytes, c.MaxBytes)
	case c.SyncInterval < 0:
		return fmt.Errorf("syncInterval: must be positive, got %s", c.SyncInterval)
	case len(c.Sinks) > MaxSinks:
		return fmt.Errorf("sinks: at most %d, got %d", MaxSinks, len(c.Sinks))
	}
	switch c.Sync {
	case SyncAlways, SyncInterval, SyncNever:
	default:
		return fmt.Errorf("sync: must be always, interval or never, got %q", c.Sync)
	}
	seen := map[string]bool{}
	for i, s := range c.Sinks {
		if s == "" || len(s) > 255 || seen[s] {
			return fmt.Errorf("sinks[%d]: must be a unique non-empty name of at most 255 bytes, got %q", i, s)
		}
		seen[s] = true
	}
	return nil
}

// segment is one file. Its records are the sequence numbers first ..
// first+len(need)-1; need holds, per record, the bits of the sinks that
// have not committed it.
type segment struct {
	num     uint64
	path    string
	size    int64
	first   uint64 // 0 until the segment holds a record
	need    []uint8
	pending int // records with need != 0
	removed bool
}

// Log is the write-ahead log. Its methods are safe for concurrent use.
type Log struct {
	cfg     Config
	m       *metrics
	all     uint8 // bits of every configured sink
	sinkIdx map[string]int

	mu        sync.Mutex
	segs      []*segment // oldest first; the last is the one appended to
	f         *os.File   // the last segment's file
	nextSeq   uint64
	nextNum   uint64
	openNum   uint64 // the segment Open started: Replay reads those before it
	total     int64
	buf       []byte
	scratch   []uint64
	broken    bool // the last write failed: start a new segment
	closed    bool
	dataDirty bool
	dirDirty  bool

	// intents are the intent frames of the segments Open read, kept
	// until Intents hands them out.
	intents []Intent

	// syncMu orders fsyncs with closing a rotated file; taken after mu,
	// never the other way round.
	syncMu sync.Mutex
	stop   chan struct{}
	done   chan struct{}
}

// ErrClosed is returned by operations on a closed Log.
var ErrClosed = errors.New("write-ahead log closed")

// Open validates cfg, reads the segments in cfg.Dir (checking every frame,
// truncating a torn tail), removes those every sink has committed, and
// starts a new segment for appends. Call Replay before appending to get
// back what was not committed.
func Open(cfg Config, reg prometheus.Registerer) (*Log, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("wal config: %w", err)
	}
	cfg.setDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	l := &Log{cfg: cfg, m: m, sinkIdx: map[string]int{}, nextSeq: 1, nextNum: 1}
	for i, s := range cfg.Sinks {
		l.all |= 1 << i
		l.sinkIdx[s] = i
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("wal dir %s: %w", cfg.Dir, err)
	}
	// Records hold connection details: keep them from other users even if
	// the directory existed with wider permissions.
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("wal dir %s: %w", cfg.Dir, err)
	}
	if err := l.load(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.trimLocked()
	l.openNum = l.nextNum
	err = l.rotateLocked()
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if cfg.Sync == SyncInterval {
		l.stop, l.done = make(chan struct{}), make(chan struct{})
		go l.syncLoop()
	}
	return l, nil
}

func segmentName(num uint64) string { return fmt.Sprintf("%020d.wal", num) }

// load reads every existing segment, oldest first.
func (l *Log) load() error {
	ents, err := os.ReadDir(l.cfg.Dir)
	if err != nil {
		return fmt.Errorf("read wal dir %s: %w", l.cfg.Dir, err)
	}
	var nums []uint64
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(name, ".wal") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(name, ".wal"), 10, 64)
		if err != nil {
			klog.InfoS("Ignoring file in the WAL directory", "dir", l.cfg.Dir, "file", name)
			continue
		}
		nums = append(nums, n)
	}
	slices.Sort(nums)
	var maxSeq uint64
	for _, n := range nums {
		l.nextNum = n + 1
		s := &segment{num: n, path: filepath.Join(l.cfg.Dir, segmentName(n))}
		b, err := os.ReadFile(s.path)
		if err != nil {
			return fmt.Errorf("read wal segment %s: %w", s.path, err)
		}
		start, err := l.checkHeader(s, b)
		if err != nil {
			return err
		}
		if start < 0 {
			continue // removed: torn at creation
		}
		// Listed before its frames are read: a commit may name records of
		// its own segment.
		l.segs = append(l.segs, s)
		st := scan(b, start, func(f *frame) {
			switch f.typ {
			case typeRecord:
				if f.seq <= maxSeq {
					// Out of order: only a damaged log does this.
					l.m.droppedCorr.Inc()
					return
				}
				if maxSeq != 0 && f.seq > maxSeq+1 {
					l.m.droppedCorr.Add(float64(f.seq - maxSeq - 1))
				}
				if s.first == 0 {
					s.first = f.seq
				}
				for next := s.first + uint64(len(s.need)); next < f.seq; next++ {
					s.need = append(s.need, 0) // unreadable: nothing to wait for
				}
				s.need = append(s.need, l.all)
				if l.all != 0 {
					s.pending++
				}
				maxSeq = f.seq
			case typeCommit:
				if i, ok := l.sinkIdx[f.sink]; ok {
					for _, q := range f.seqs {
						l.clearLocked(i, q)
					}
				}
			case typeIntent:
				if i, ok := l.sinkIdx[f.sink]; ok {
					in := Intent{Sink: i, Batch: f.batch, Seqs: slices.Clone(f.seqs)}
					if f.dest >= 0 {
						in.Dest, in.HasDest = f.dest, true
					}
					l.intents = append(l.intents, in)
				}
			}
		})
		l.m.corruptBytes.Add(float64(st.corrupt))
		s.size = int64(len(b))
		if st.torn {
			l.m.tornTails.Inc()
			l.m.corruptBytes.Add(float64(int64(len(b)) - st.goodEnd))
			klog.InfoS("Truncating torn WAL segment tail", "segment", s.path, "from", len(b), "to", st.goodEnd)
			if err := os.Truncate(s.path, st.goodEnd); err != nil {
				return fmt.Errorf("truncate torn wal segment %s: %w", s.path, err)
			}
			s.size = st.goodEnd
		}
		if st.corrupt > 0 {
			klog.ErrorS(nil, "WAL segment has corrupt frames; skipped them", "segment", s.path, "bytes", st.corrupt)
		}
		l.total += s.size
	}
	l.nextSeq = maxSeq + 1
	return nil
}

// checkHeader returns where s's frames start, or -1 when the file was cut
// before its header was complete (it is removed).
func (l *Log) checkHeader(s *segment, b []byte) (int, error) {
	switch {
	case bytes.HasPrefix(b, segmentMagic[:]):
		return len(segmentMagic), nil
	case len(b) < len(segmentMagic) && bytes.HasPrefix(segmentMagic[:], b):
		l.m.tornTails.Inc()
		if err := os.Remove(s.path); err != nil {
			return 0, fmt.Errorf("remove torn wal segment %s: %w", s.path, err)
		}
		return -1, nil
	case len(b) >= len(segmentMagic) && bytes.Equal(b[:len(segmentMagic)-1], segmentMagic[:len(segmentMagic)-1]):
		return 0, fmt.Errorf("wal segment %s: format version %d, this aggregator reads %d", s.path, b[len(segmentMagic)-1], segmentMagic[len(segmentMagic)-1])
	}
	// A damaged header: the frames after it may still be good.
	l.m.corruptBytes.Add(float64(min(len(b), len(segmentMagic))))
	return min(len(b), len(segmentMagic)), nil
}

type scanStats struct {
	goodEnd int64 // end of the last good frame
	corrupt int64 // bytes skipped between good frames
	torn    bool  // bytes after the last good frame
}

// scan calls fn for every good frame of b from start. A bad frame is
// skipped by searching forward for the next good one (a checksum that
// matches and, for a record, a sequence number after the last one seen);
// when there is none the rest is a torn tail.
func scan(b []byte, start int, fn func(*frame)) scanStats {
	st := scanStats{goodEnd: int64(start)}
	var f frame
	var lastSeq uint64
	good := func(off int) bool {
		return parseFrame(b[off:], &f) == nil && (f.typ != typeRecord || f.seq > lastSeq)
	}
	off := start
	for off < len(b) {
		if !good(off) {
			next := -1
			for p := off + 1; p+frameHeader < len(b); p++ {
				if good(p) {
					next = p
					break
				}
			}
			if next < 0 {
				st.torn = true
				return st
			}
			st.corrupt += int64(next - off)
			off = next
		}
		if f.typ == typeRecord {
			lastSeq = f.seq
		}
		fn(&f)
		off += f.size
		st.goodEnd = int64(off)
	}
	return st
}

// Replay calls fn, in sequence order, for every record of the segments
// found by Open that some configured sink has not committed; need has bit
// i set for each Config.Sinks[i] still owed the record. data is valid only
// during the call. Commits may run concurrently (the sinks keep writing
// while the replay feeds them); the log is not locked while fn runs.
func (l *Log) Replay(fn func(seq uint64, need uint8, data []byte) error) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	var segs []*segment
	for _, s := range l.segs {
		if s.num < l.openNum {
			segs = append(segs, s)
		}
	}
	l.mu.Unlock()
	for _, s := range segs {
		b, err := os.ReadFile(s.path)
		if err != nil {
			l.mu.Lock()
			gone := s.removed
			l.mu.Unlock()
			if gone {
				continue
			}
			return fmt.Errorf("replay wal segment %s: %w", s.path, err)
		}
		start, err := l.checkHeaderQuiet(b)
		if err != nil {
			return fmt.Errorf("replay wal segment %s: %w", s.path, err)
		}
		var ferr error
		scan(b, start, func(f *frame) {
			if ferr != nil || f.typ != typeRecord {
				return
			}
			l.mu.Lock()
			var need uint8
			if s.first != 0 && f.seq >= s.first && f.seq-s.first < uint64(len(s.need)) {
				need = s.need[f.seq-s.first]
			}
			l.mu.Unlock()
			if need == 0 {
				return
			}
			l.m.replayed.Inc()
			if err := fn(f.seq, need, f.data); err != nil {
				ferr = fmt.Errorf("replay record %d: %w", f.seq, err)
			}
		})
		if ferr != nil {
			return ferr
		}
	}
	return nil
}

func (l *Log) checkHeaderQuiet(b []byte) (int, error) {
	if len(b) >= len(segmentMagic) && bytes.Equal(b[:len(segmentMagic)-1], segmentMagic[:len(segmentMagic)-1]) &&
		b[len(segmentMagic)-1] != segmentMagic[len(segmentMagic)-1] {
		return 0, errors.New("unsupported format version")
	}
	return min(len(b), len(segmentMagic)), nil
}

// Append writes data as the next record and returns its sequence number
// (never 0). On an error nothing is numbered: the caller passes the record
// on unprotected.
func (l *Log) Append(data []byte) (uint64, error) {
	if len(data)+1+8 > maxFrameBody {
		return 0, fmt.Errorf("wal append: record of %d bytes exceeds %d", len(data), maxFrameBody-9)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	size := int64(frameHeader + 1 + 8 + len(data))
	if err := l.maybeRotateLocked(size); err != nil {
		return 0, err
	}
	seq := l.nextSeq
	l.buf = appendRecordFrame(l.buf[:0], seq, data)
	if err := l.writeLocked(); err != nil {
		return 0, err
	}
	l.nextSeq++
	s := l.segs[len(l.segs)-1]
	if s.first == 0 {
		s.first = seq
	}
	s.need = append(s.need, l.all)
	if l.all != 0 {
		s.pending++
	}
	l.m.appended.Inc()
	if l.cfg.Sync == SyncAlways {
		if err := l.fsyncLocked(); err != nil {
			return seq, err
		}
	}
	l.boundLocked()
	return seq, nil
}

// Commit records that sink (an index into Config.Sinks) has written every
// record in seqs (order and repeats do not matter; 0 is ignored). Call it
// only once the destination acknowledged the rows: the commit frame is
// what keeps a replay from writing them again.
func (l *Log) Commit(sink int, seqs []uint64) error {
	if sink < 0 || sink >= len(l.cfg.Sinks) {
		return fmt.Errorf("wal commit: sink %d of %d", sink, len(l.cfg.Sinks))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.scratch = sortedSeqs(l.scratch[:0], seqs)
	if len(l.scratch) == 0 {
		return nil
	}
	// Memory first: whatever happens to the frame, the sink has the rows.
	for _, q := range l.scratch {
		l.clearLocked(sink, q)
	}
	name := l.cfg.Sinks[sink]
	werr := l.writeFramesLocked(func(dst []byte, seqs []uint64) []byte {
		return appendCommitFrame(dst, name, seqs)
	})
	l.m.committed.Add(float64(len(l.scratch)))
	l.trimLocked()
	l.boundLocked()
	return werr
}

// sortedSeqs appends seqs to dst sorted, without repeats or 0 (the number
// of a record that was never logged).
func sortedSeqs(dst, seqs []uint64) []uint64 {
	dst = append(dst, seqs...)
	slices.Sort(dst)
	dst = slices.Compact(dst)
	if len(dst) > 0 && dst[0] == 0 {
		dst = dst[1:]
	}
	return dst
}

// Intent is a batch a sink was about to send when the log was last
// written: its id, and the records of its rows.
type Intent struct {
	Sink  int // index into Config.Sinks
	Batch uint64
	Seqs  []uint64
	// Dest is the destination within the sink the batch went to (a
	// ClickHouse cluster's shard), when HasDest: IntendTo recorded it.
	Dest    int
	HasDest bool
}

// Intend records, before a batch is sent, that sink (an index into
// Config.Sinks) is sending batch with the records seqs. It is for sinks
// whose destination can later be asked whether it stored a batch of that
// id: after a crash between the send and the Commit, Intents names the
// batch, and the caller commits it if the destination has it instead of
// replaying its records to that sink again.
func (l *Log) Intend(sink int, batch uint64, seqs []uint64) error {
	return l.intend(sink, -1, batch, seqs)
}

// IntendTo is Intend for a sink with several destinations, each batch
// going to one of them (dest, an index the caller defines: a ClickHouse
// cluster's shard). Intents then names dest, so the batch is asked of
// that destination alone.
func (l *Log) IntendTo(sink, dest int, batch uint64, seqs []uint64) error {
	if dest < 0 {
		return fmt.Errorf("wal intent: destination %d", dest)
	}
	return l.intend(sink, dest, batch, seqs)
}

func (l *Log) intend(sink, dest int, batch uint64, seqs []uint64) error {
	if sink < 0 || sink >= len(l.cfg.Sinks) {
		return fmt.Errorf("wal intent: sink %d of %d", sink, len(l.cfg.Sinks))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.scratch = sortedSeqs(l.scratch[:0], seqs)
	if len(l.scratch) == 0 {
		return nil
	}
	name := l.cfg.Sinks[sink]
	if err := l.writeFramesLocked(func(dst []byte, seqs []uint64) []byte {
		return appendIntentFrame(dst, name, dest, batch, seqs)
	}); err != nil {
		return err
	}
	l.boundLocked()
	return nil
}

// writeFramesLocked writes the numbers in l.scratch in frames that frame
// builds, at most chunk numbers each (far below maxFrameBody), and syncs
// them under SyncAlways.
func (l *Log) writeFramesLocked(frame func(dst []byte, seqs []uint64) []byte) error {
	const chunk = 1 << 20
	for rest := l.scratch; len(rest) > 0; {
		n := min(len(rest), chunk)
		l.buf = frame(l.buf[:0], rest[:n])
		rest = rest[n:]
		if err := l.maybeRotateLocked(int64(len(l.buf))); err != nil {
			return err
		}
		if err := l.writeLocked(); err != nil {
			return err
		}
	}
	if l.cfg.Sync == SyncAlways {
		return l.fsyncLocked()
	}
	return nil
}

// Intents returns, once, the intents read by Open for sink whose records
// that sink has not all committed (Seqs holds only the uncommitted ones),
// one per batch. Call it before Replay: committing what the destination
// turns out to have keeps Replay from passing it to that sink.
func (l *Log) Intents(sink int) []Intent {
	l.mu.Lock()
	defer l.mu.Unlock()
	byBatch := map[uint64]int{}
	var out []Intent
	kept := l.intents[:0]
	for _, in := range l.intents {
		if in.Sink != sink {
			kept = append(kept, in)
			continue
		}
		var open []uint64
		for _, q := range in.Seqs {
			if l.needsLocked(sink, q) {
				open = append(open, q)
			}
		}
		if len(open) == 0 {
			continue
		}
		// A retried batch is intended once per attempt.
		if j, ok := byBatch[in.Batch]; ok {
			out[j].Seqs = append(out[j].Seqs, open...)
			slices.Sort(out[j].Seqs)
			out[j].Seqs = slices.Compact(out[j].Seqs)
			if !in.HasDest || in.Dest != out[j].Dest {
				// Attempts that disagree (never written so): ask
				// every destination.
				out[j].Dest, out[j].HasDest = 0, false
			}
			continue
		}
		byBatch[in.Batch] = len(out)
		out = append(out, Intent{Sink: sink, Batch: in.Batch, Seqs: open, Dest: in.Dest, HasDest: in.HasDest})
	}
	clear(l.intents[len(kept):])
	l.intents = kept
	return out
}

// needsLocked reports whether seq is a kept record sink has not committed.
func (l *Log) needsLocked(sink int, seq uint64) bool {
	bit := uint8(1) << sink
	for i := len(l.segs) - 1; i >= 0; i-- {
		s := l.segs[i]
		if s.first == 0 || seq < s.first {
			continue
		}
		k := seq - s.first
		return k < uint64(len(s.need)) && s.need[k]&bit != 0
	}
	return false
}

func (l *Log) clearLocked(sink int, seq uint64) {
	bit := uint8(1) << sink
	for i := len(l.segs) - 1; i >= 0; i-- {
		s := l.segs[i]
		if s.first == 0 || seq < s.first {
			continue
		}
		if k := seq - s.first; k < uint64(len(s.need)) && s.need[k]&bit != 0 {
			s.need[k] &^= bit
			if s.need[k] == 0 {
				s.pending--
			}
		}
		return
	}
}

func (l *Log) maybeRotateLocked(next int64) error {
	if l.broken || len(l.segs) == 0 {
		return l.rotateLocked()
	}
	s := l.segs[len(l.segs)-1]
	if s.size > int64(len(segmentMagic)) && s.size+next > l.cfg.SegmentBytes {
		return l.rotateLocked()
	}
	return nil
}

// writeLocked writes l.buf to the current segment in one call, so a
// killed process leaves whole frames (or a torn last one) behind.
func (l *Log) writeLocked() error {
	s := l.segs[len(l.segs)-1]
	if _, err := l.f.Write(l.buf); err != nil {
		l.m.writeErrors.Inc()
		// Cut what was partly written; the next append starts a new file.
		_ = l.f.Truncate(s.size)
		l.broken = true
		return fmt.Errorf("append to wal segment %s: %w", s.path, err)
	}
	s.size += int64(len(l.buf))
	l.total += int64(len(l.buf))
	l.dataDirty = true
	l.m.bytes.Set(float64(l.total))
	return nil
}

// rotateLocked closes the current segment (if any) and starts a new one.
func (l *Log) rotateLocked() error {
	if l.f != nil {
		l.syncMu.Lock()
		if l.cfg.Sync != SyncNever {
			l.timedSync(l.f)
		}
		err := l.f.Close()
		l.syncMu.Unlock()
		l.f = nil
		if err != nil {
			l.m.writeErrors.Inc()
			klog.ErrorS(err, "Closing WAL segment failed")
		}
	}
	s := &segment{num: l.nextNum, path: filepath.Join(l.cfg.Dir, segmentName(l.nextNum))}
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		l.m.writeErrors.Inc()
		l.broken = true
		return fmt.Errorf("create wal segment %s: %w", s.path, err)
	}
	l.nextNum++
	if _, err := f.Write(segmentMagic[:]); err != nil {
		l.m.writeErrors.Inc()
		_ = f.Close()
		_ = os.Remove(s.path)
		l.broken = true
		return fmt.Errorf("write wal segment header %s: %w", s.path, err)
	}
	s.size = int64(len(segmentMagic))
	l.f, l.broken = f, false
	l.segs = append(l.segs, s)
	l.total += s.size
	l.dirDirty, l.dataDirty = true, true
	l.m.segments.Set(float64(len(l.segs)))
	l.m.bytes.Set(float64(l.total))
	if l.cfg.Sync == SyncAlways {
		l.syncDir()
	}
	l.trimLocked()
	return nil
}

// trimLocked removes the oldest segments while every sink committed all
// of their records; the segment being appended to stays.
func (l *Log) trimLocked() {
	for len(l.segs) > 0 && l.segs[0].pending == 0 && (l.closed || len(l.segs) > 1 || l.f == nil) {
		l.removeFirstLocked()
	}
}

// boundLocked removes the oldest segments, committed or not, while the log
// is over MaxBytes.
func (l *Log) boundLocked() {
	for l.total > l.cfg.MaxBytes && len(l.segs) > 1 {
		s := l.segs[0]
		if s.pending > 0 {
			l.m.droppedBound.Add(float64(s.pending))
			klog.InfoS("WAL over maxBytes; removing a segment some sink has not committed",
				"segment", s.path, "uncommitted", s.pending, "maxBytes", l.cfg.MaxBytes)
		}
		l.removeFirstLocked()
	}
}

func (l *Log) removeFirstLocked() {
	s := l.segs[0]
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.m.removeErrors.Inc()
		klog.ErrorS(err, "Removing WAL segment failed", "segment", s.path)
	}
	s.removed = true
	l.segs[0] = nil
	l.segs = l.segs[1:]
	l.total -= s.size
	l.dirDirty = true
	l.m.segments.Set(float64(len(l.segs)))
	l.m.bytes.Set(float64(l.total))
}

func (l *Log) fsyncLocked() error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.dataDirty = false
	return l.timedSync(l.f)
}

func (l *Log) timedSync(f *os.File) error {
	start := time.Now()
	err := f.Sync()
	l.m.syncDurations.Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, os.ErrClosed) {
		l.m.syncErrors.Inc()
		return fmt.Errorf("fsync wal segment: %w", err)
	}
	return nil
}

func (l *Log) syncDir() {
	d, err := os.Open(l.cfg.Dir)
	if err == nil {
		err = d.Sync()
		_ = d.Close()
	}
	if err != nil {
		l.m.syncErrors.Inc()
		klog.ErrorS(err, "Syncing the WAL directory failed", "dir", l.cfg.Dir)
	}
}

// Sync forces what was written so far to stable storage.
func (l *Log) Sync() error {
	l.mu.Lock()
	f, data, dir := l.f, l.dataDirty, l.dirDirty
	l.dataDirty, l.dirDirty = false, false
	l.mu.Unlock()
	// Outside mu: appends go on while the disk catches up. A file rotated
	// meanwhile was synced by the rotation (ErrClosed is ignored).
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	var err error
	if data && f != nil {
		err = l.timedSync(f)
	}
	if dir {
		l.syncDir()
	}
	return err
}

func (l *Log) syncLoop() {
	defer close(l.done)
	t := time.NewTicker(l.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			if err := l.Sync(); err != nil {
				klog.ErrorS(err, "WAL fsync failed")
			}
		}
	}
}

// Close syncs and closes the log. Segments whose records every sink
// committed are removed, so a clean shutdown leaves an empty directory.
func (l *Log) Close() error {
	if l.stop != nil {
		close(l.stop)
		<-l.done
		l.stop = nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var err error
	if l.f != nil {
		l.syncMu.Lock()
		if l.cfg.Sync != SyncNever {
			err = l.timedSync(l.f)
		}
		if cerr := l.f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close wal segment: %w", cerr)
		}
		l.syncMu.Unlock()
		l.f = nil
	}
	l.trimLocked()
	if l.cfg.Sync != SyncNever {
		l.syncDir()
	}
	return err
}

// Stats is a snapshot for tests and logs.
type Stats struct {
	Segments    int
	Bytes       int64
	Uncommitted int    // records some sink has not committed
	NextSeq     uint64 // the number the next Append gets
}

// Stats returns the log's current size and backlog.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := Stats{Segments: len(l.segs), Bytes: l.total, NextSeq: l.nextSeq}
	for _, s := range l.segs {
		st.Uncommitted += s.pending
	}
	return st
}
