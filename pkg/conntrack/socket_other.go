//go:build !linux

package conntrack

import (
	"time"

	"github.com/flowlens/flowlens/pkg/netns"
)

// nlConn stands in for the netlink socket where there is none: every
// operation reports netns.ErrNotSupported, so the package builds everywhere
// and fails clearly at run time.
type nlConn struct{}

func openNL(string, uint32, int) (*nlConn, error) { return nil, netns.ErrNotSupported }
func (*nlConn) recv([]byte) (int, error)          { return 0, netns.ErrNotSupported }
func (*nlConn) send([]byte) error                 { return netns.ErrNotSupported }
func (*nlConn) setDeadline(time.Time) error       { return netns.ErrNotSupported }
func (*nlConn) close() error                      { return nil }

// nlEventConn stands in for the event socket.
type nlEventConn struct{ nlConn }

func openEventNL(string, uint32, int) (*nlEventConn, error) { return nil, netns.ErrNotSupported }
func (*nlEventConn) tryRecv([]byte) (int, bool, error)      { return 0, false, netns.ErrNotSupported }
