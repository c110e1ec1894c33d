// Package jsonl writes aggregated records as JSON lines to stdout or to a
// file rotated by size. It is a sink.Writer.
package jsonl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/flowlens/flowlens/pkg/correlate"
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
	f, err := os.OpenFile(w.cfg.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
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
	for _, r := range b.Records {
		line, err := json.Marshal(toRow(r))
		if err != nil {
			return done, fmt.Errorf("encode record: %w", err)
		}
		line = append(line, '\n')
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

// Row is the JSON form of a record; field names match the ClickHouse
// columns.
type Row struct {
	FlowStart                  time.Time `json:"flowStartSeconds"`
	FlowEnd                    time.Time `json:"flowEndSeconds"`
	FlowEndReason              string    `json:"flowEndReason"`
	SourceIP                   string    `json:"sourceIP"`
	DestinationIP              string    `json:"destinationIP"`
	SourcePort                 uint16    `json:"sourceTransportPort"`
	DestinationPort            uint16    `json:"destinationTransportPort"`
	Protocol                   uint8     `json:"protocolIdentifier"`
	PacketTotalCount           uint64    `json:"packetTotalCount"`
	OctetTotalCount            uint64    `json:"octetTotalCount"`
	PacketDeltaCount           uint64    `json:"packetDeltaCount"`
	OctetDeltaCount            uint64    `json:"octetDeltaCount"`
	ReversePacketTotalCount    uint64    `json:"reversePacketTotalCount"`
	ReverseOctetTotalCount     uint64    `json:"reverseOctetTotalCount"`
	ReversePacketDeltaCount    uint64    `json:"reversePacketDeltaCount"`
	ReverseOctetDeltaCount     uint64    `json:"reverseOctetDeltaCount"`
	Throughput                 uint64    `json:"throughput"`
	ReverseThroughput          uint64    `json:"reverseThroughput"`
	FromSourceNode             *SideRow  `json:"fromSourceNode,omitempty"`
	FromDestinationNode        *SideRow  `json:"fromDestinationNode,omitempty"`
	SourcePodName              string    `json:"sourcePodName,omitempty"`
	SourcePodNamespace         string    `json:"sourcePodNamespace,omitempty"`
	SourceNodeName             string    `json:"sourceNodeName,omitempty"`
	SourcePodLabels            string    `json:"sourcePodLabels,omitempty"`
	DestinationPodName         string    `json:"destinationPodName,omitempty"`
	DestinationPodNamespace    string    `json:"destinationPodNamespace,omitempty"`
	DestinationNodeName        string    `json:"destinationNodeName,omitempty"`
	DestinationPodLabels       string    `json:"destinationPodLabels,omitempty"`
	DestinationServiceIP       string    `json:"destinationServiceIP,omitempty"`
	DestinationServicePort     uint16    `json:"destinationServicePort,omitempty"`
	DestinationServicePortName string    `json:"destinationServicePortName,omitempty"`
	ClusterIP                  bool      `json:"clusterIP,omitempty"`
	FlowType                   string    `json:"flowType"`
	TCPState                   string    `json:"tcpState,omitempty"`
	Correlation                string    `json:"correlation"`
	AppProtocolName            string    `json:"appProtocolName,omitempty"`
	// HTTPVals is embedded as JSON, not as a string holding JSON.
	HTTPVals        json.RawMessage `json:"httpVals,omitempty"`
	DNSQueryName    string          `json:"dnsQueryName,omitempty"`
	DNSQueryType    string          `json:"dnsQueryType,omitempty"`
	DNSResponseCode string          `json:"dnsResponseCode,omitempty"`
	DNSAnswers      string          `json:"dnsAnswers,omitempty"`
	TLSServerName   string          `json:"tlsServerName,omitempty"`
	TLSVersion      string          `json:"tlsVersion,omitempty"`
	TLSJA3          string          `json:"tlsJA3,omitempty"`
	TLSJA3S         string          `json:"tlsJA3S,omitempty"`
	TLSJA4          string          `json:"tlsJA4,omitempty"`
}

// SideRow is one node's view (Antrea's ...FromSourceNode elements).
type SideRow struct {
	Exporter                string    `json:"exporter,omitempty"`
	PacketTotalCount        uint64    `json:"packetTotalCount"`
	OctetTotalCount         uint64    `json:"octetTotalCount"`
	PacketDeltaCount        uint64    `json:"packetDeltaCount"`
	OctetDeltaCount         uint64    `json:"octetDeltaCount"`
	ReversePacketTotalCount uint64    `json:"reversePacketTotalCount"`
	ReverseOctetTotalCount  uint64    `json:"reverseOctetTotalCount"`
	ReversePacketDeltaCount uint64    `json:"reversePacketDeltaCount"`
	ReverseOctetDeltaCount  uint64    `json:"reverseOctetDeltaCount"`
	Throughput              uint64    `json:"throughput"`
	ReverseThroughput       uint64    `json:"reverseThroughput"`
	FlowEnd                 time.Time `json:"flowEndSeconds"`
}

func sideRow(s *correlate.Side) *SideRow {
	if !s.Seen {
		return nil
	}
	return &SideRow{
		Exporter:         s.Exporter,
		PacketTotalCount: s.Fwd.Packets, OctetTotalCount: s.Fwd.Bytes,
		PacketDeltaCount: s.FwdDelta.Packets, OctetDeltaCount: s.FwdDelta.Bytes,
		ReversePacketTotalCount: s.Rev.Packets, ReverseOctetTotalCount: s.Rev.Bytes,
		ReversePacketDeltaCount: s.RevDelta.Packets, ReverseOctetDeltaCount: s.RevDelta.Bytes,
		Throughput: s.Throughput, ReverseThroughput: s.ReverseThroughput,
		FlowEnd: seconds(s.EndNanos),
	}
}

func seconds(n int64) time.Time {
	if n <= 0 {
		return time.Unix(0, 0).UTC()
	}
	return time.Unix(n/1e9, 0).UTC()
}

func toRow(r *correlate.Record) *Row {
	end := r.StopNanos
	if end == 0 {
		end = r.ExportNanos
	}
	row := &Row{
		FlowStart: seconds(r.StartNanos), FlowEnd: seconds(end), FlowEndReason: r.EndReason.String(),
		SourceIP: r.Tuple.Src().String(), DestinationIP: r.Tuple.Dst().String(),
		SourcePort: r.Tuple.SrcPort, DestinationPort: r.Tuple.DstPort, Protocol: r.Tuple.Proto,
		PacketTotalCount: r.Fwd.Packets, OctetTotalCount: r.Fwd.Bytes,
		PacketDeltaCount: r.FwdDelta.Packets, OctetDeltaCount: r.FwdDelta.Bytes,
		ReversePacketTotalCount: r.Rev.Packets, ReverseOctetTotalCount: r.Rev.Bytes,
		ReversePacketDeltaCount: r.RevDelta.Packets, ReverseOctetDeltaCount: r.RevDelta.Bytes,
		Throughput: r.Throughput, ReverseThroughput: r.ReverseThroughput,
		FromSourceNode: sideRow(&r.FromSource), FromDestinationNode: sideRow(&r.FromDestination),
		SourcePodName: r.Source.PodName, SourcePodNamespace: r.Source.PodNamespace,
		SourceNodeName: r.Source.NodeName, SourcePodLabels: r.Source.Labels,
		DestinationPodName: r.Destination.PodName, DestinationPodNamespace: r.Destination.PodNamespace,
		DestinationNodeName: r.Destination.NodeName, DestinationPodLabels: r.Destination.Labels,
		DestinationServicePortName: r.ServicePortName, ClusterIP: r.ClusterIP,
		FlowType: r.FlowType.String(), Correlation: r.Correlation.String(),
		AppProtocolName: r.L7.AppProtocolName,
		DNSQueryName:    r.L7.DNSQueryName, DNSQueryType: r.L7.DNSQueryType,
		DNSResponseCode: r.L7.DNSResponseCode, DNSAnswers: r.L7.DNSAnswers,
		TLSServerName: r.L7.TLSServerName, TLSVersion: r.L7.TLSVersion,
		TLSJA3: r.L7.TLSJA3, TLSJA3S: r.L7.TLSJA3S, TLSJA4: r.L7.TLSJA4,
	}
	if r.TCPState != 0 {
		row.TCPState = r.TCPState.String()
	}
	if r.IsDNATed() {
		row.DestinationServiceIP = flowAddr(r.OrigDstIP)
		row.DestinationServicePort = r.OrigDstPort
	}
	// The correlator only lets valid JSON objects through; anything else
	// would make the whole line invalid, so it is left out.
	if r.L7.HTTPVals != "" && json.Valid([]byte(r.L7.HTTPVals)) {
		row.HTTPVals = json.RawMessage(r.L7.HTTPVals)
	}
	return row
}

func flowAddr(a [16]byte) string {
	return netip.AddrFrom16(a).Unmap().String()
}
