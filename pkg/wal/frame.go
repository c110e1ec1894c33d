package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// On disk a segment is segmentMagic followed by frames:
//
//	length uint32 LE   of the body
//	crc    uint32 LE   CRC-32C (Castagnoli) of the body
//	body   type byte + payload
//
// A record frame's payload is its sequence number (uint64 LE) and the
// caller's bytes. A commit frame's payload is the sink's name (one length
// byte, then the name), the number of sequence numbers (uvarint) and the
// numbers in ascending order, each as the uvarint difference from the one
// before (the first from zero). An intent frame is a commit frame's
// payload with the batch id (uint64 LE) between the name and the count,
// optionally followed by the destination (uvarint, its index within the
// sink plus one: a ClickHouse cluster's shard). Older intent frames end
// after the numbers, and older readers ignore what follows them, so the
// destination needs no new frame type in either direction.
// The checksum is what tells a torn or corrupted frame from a good one.
const (
	frameHeader  = 8
	typeRecord   = 1
	typeCommit   = 2
	typeIntent   = 3
	maxFrameBody = 16 << 20
)

var (
	segmentMagic = [8]byte{'F', 'L', 'W', 'A', 'L', 0, 0, 1}
	castagnoli   = crc32.MakeTable(crc32.Castagnoli)
)

var errBadFrame = errors.New("bad frame")

// appendRecordFrame appends a record frame for seq and data to dst.
func appendRecordFrame(dst []byte, seq uint64, data []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeader)...)
	dst = append(dst, typeRecord)
	dst = binary.LittleEndian.AppendUint64(dst, seq)
	dst = append(dst, data...)
	return sealFrame(dst, start)
}

// appendCommitFrame appends a commit frame; seqs must be ascending.
func appendCommitFrame(dst []byte, sink string, seqs []uint64) []byte {
	return appendSeqsFrame(dst, typeCommit, sink, 0, seqs)
}

// appendIntentFrame appends an intent frame; seqs must be ascending. A
// negative dest is not recorded.
func appendIntentFrame(dst []byte, sink string, dest int, batch uint64, seqs []uint64) []byte {
	start := len(dst)
	dst = appendSeqsFrame(dst, typeIntent, sink, batch, seqs)
	if dest < 0 {
		return dst
	}
	dst = binary.AppendUvarint(dst, uint64(dest)+1)
	return sealFrame(dst, start)
}

func appendSeqsFrame(dst []byte, typ byte, sink string, batch uint64, seqs []uint64) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeader)...)
	dst = append(dst, typ, byte(len(sink)))
	dst = append(dst, sink...)
	if typ == typeIntent {
		dst = binary.LittleEndian.AppendUint64(dst, batch)
	}
	dst = binary.AppendUvarint(dst, uint64(len(seqs)))
	var prev uint64
	for _, s := range seqs {
		dst = binary.AppendUvarint(dst, s-prev)
		prev = s
	}
	return sealFrame(dst, start)
}

func sealFrame(dst []byte, start int) []byte {
	body := dst[start+frameHeader:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(body, castagnoli))
	return dst
}

// frame is one decoded frame; its slices point into the segment's bytes.
type frame struct {
	typ   byte
	seq   uint64 // record
	data  []byte // record
	sink  string // commit, intent
	batch uint64 // intent
	dest  int    // intent: -1 when not recorded
	seqs  []uint64
	size  int // bytes on disk, header included
}

// parseFrame decodes the frame at the start of b. It fails on a short,
// oversized, mis-checksummed or undecodable frame, never panics.
func parseFrame(b []byte, f *frame) error {
	if len(b) < frameHeader {
		return fmt.Errorf("%w: %d bytes left, want a %d-byte header", errBadFrame, len(b), frameHeader)
	}
	n := binary.LittleEndian.Uint32(b)
	if n == 0 || n > maxFrameBody || int64(n) > int64(len(b)-frameHeader) {
		return fmt.Errorf("%w: body length %d with %d bytes left", errBadFrame, n, len(b)-frameHeader)
	}
	body := b[frameHeader : frameHeader+int(n)]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
		return fmt.Errorf("%w: checksum mismatch", errBadFrame)
	}
	*f = frame{typ: body[0], size: frameHeader + int(n), seqs: f.seqs[:0], dest: -1}
	p := body[1:]
	switch f.typ {
	case typeRecord:
		if len(p) < 8 {
			return fmt.Errorf("%w: record frame of %d bytes", errBadFrame, len(p))
		}
		f.seq = binary.LittleEndian.Uint64(p)
		f.data = p[8:]
		if f.seq == 0 {
			return fmt.Errorf("%w: record with sequence 0", errBadFrame)
		}
	case typeCommit, typeIntent:
		if len(p) < 1 || len(p) < 1+int(p[0]) {
			return fmt.Errorf("%w: commit frame without its sink name", errBadFrame)
		}
		f.sink = string(p[1 : 1+p[0]])
		p = p[1+p[0]:]
		if f.typ == typeIntent {
			if len(p) < 8 {
				return fmt.Errorf("%w: intent frame without its batch id", errBadFrame)
			}
			f.batch = binary.LittleEndian.Uint64(p)
			p = p[8:]
		}
		cnt, k := binary.Uvarint(p)
		if k <= 0 || cnt > uint64(len(p)) {
			return fmt.Errorf("%w: commit frame count", errBadFrame)
		}
		p = p[k:]
		var prev uint64
		for i := uint64(0); i < cnt; i++ {
			d, k := binary.Uvarint(p)
			if k <= 0 {
				return fmt.Errorf("%w: commit frame sequence %d of %d", errBadFrame, i, cnt)
			}
			p = p[k:]
			prev += d
			f.seqs = append(f.seqs, prev)
		}
		if f.typ == typeIntent && len(p) > 0 {
			d, k := binary.Uvarint(p)
			if k <= 0 || d > 1<<31 {
				return fmt.Errorf("%w: intent frame destination", errBadFrame)
			}
			f.dest = int(d) - 1
		}
	default:
		return fmt.Errorf("%w: unknown frame type %d", errBadFrame, f.typ)
	}
	return nil
}
