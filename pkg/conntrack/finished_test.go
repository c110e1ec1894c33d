package conntrack

import (
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

func TestFinished(t *testing.T) {
	tcp := func(s flow.TCPState) *flow.Conn {
		return &flow.Conn{Tuple: flow.Tuple{Proto: flow.ProtoTCP}, TCPState: s}
	}
	tests := []struct {
		name string
		conn *flow.Conn
		want bool
	}{
		{"established TCP is running", tcp(flow.TCPStateEstablished), false},
		{"TCP in FIN_WAIT still moves data one way", tcp(flow.TCPStateFinWait), false},
		{"TCP in CLOSE_WAIT still moves data one way", tcp(flow.TCPStateCloseWait), false},
		{"TCP in TIME_WAIT is over", tcp(flow.TCPStateTimeWait), true},
		{"TCP in CLOSE (reset) is over", tcp(flow.TCPStateClose), true},
		{"UDP has no end but DESTROY", &flow.Conn{Tuple: flow.Tuple{Proto: flow.ProtoUDP}}, false},
		{"dying entry of any protocol is over", &flow.Conn{Tuple: flow.Tuple{Proto: flow.ProtoUDP}, Status: statusDying}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Finished(tc.conn); got != tc.want {
				t.Errorf("Finished = %v, want %v", got, tc.want)
			}
		})
	}
}
