//go:build !linux

package ipfixcollect

import (
	"errors"
	"net"
)

func socketDrops(*net.UDPConn) (uint32, error) {
	return 0, errors.New("socket drop counts are only read on Linux")
}
