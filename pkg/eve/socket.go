package eve

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

const msgTrunc = syscall.MSG_TRUNC

// maxSocketPath leaves room in sun_path (108 bytes with its NUL) for the
// temporary directory bindPrivate binds in first.
const maxSocketPath = 107 - len("/.eve0123456789/s")

// prepareSocketPath makes path free for a new socket: a stale socket left
// by a previous run is removed, but a socket someone still listens on, or
// any file that is not a socket, is an error (never delete a user's file).
func prepareSocketPath(network, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("eve: stat socket path %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("eve: socket path %s exists and is not a socket (%s)", path, fi.Mode().Type())
	}
	if c, err := net.DialTimeout(network, path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("eve: socket %s is in use by another process", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("eve: remove stale socket %s: %w", path, err)
	}
	return nil
}

// bindPrivate binds a socket under a fresh 0700 directory beside path, sets
// its mode and links it into place, so the socket is never reachable with
// the looser permissions the process umask would have given it. It returns
// the socket file's identity, to tell later whether path still names it.
func bindPrivate(network, path string, mode os.FileMode, bind func(tmp string) (io.Closer, error)) (io.Closer, os.FileInfo, error) {
	if len(path) > maxSocketPath {
		return nil, nil, fmt.Errorf("eve: socket path %s is %d bytes, longer than the %d a unix socket allows", path, len(path), maxSocketPath)
	}
	if err := prepareSocketPath(network, path); err != nil {
		return nil, nil, err
	}
	// sun_path holds 107 bytes; keep the temporary name short.
	dir, err := os.MkdirTemp(filepath.Dir(path), ".eve")
	if err != nil {
		return nil, nil, fmt.Errorf("eve: create private dir for socket %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	s, err := bind(tmp)
	if err != nil {
		return nil, nil, fmt.Errorf("eve: bind %s socket %s: %w", network, path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("eve: chmod socket %s: %w", path, err)
	}
	id, err := os.Lstat(tmp)
	if err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("eve: stat socket %s: %w", path, err)
	}
	// A link, not a rename: whatever appeared at path since it was
	// checked is not ours to replace.
	if err := os.Link(tmp, path); err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("eve: move socket into place at %s: %w", path, err)
	}
	return s, id, nil
}

func listenUnix(path string, mode os.FileMode) (*net.UnixListener, os.FileInfo, error) {
	s, id, err := bindPrivate("unix", path, mode, func(tmp string) (io.Closer, error) {
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
		if err != nil {
			return nil, err
		}
		// The bound name is the temporary one; we remove the real path.
		ln.SetUnlinkOnClose(false)
		return ln, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return s.(*net.UnixListener), id, nil
}

func listenUnixgram(path string, mode os.FileMode) (*net.UnixConn, os.FileInfo, error) {
	s, id, err := bindPrivate("unixgram", path, mode, func(tmp string) (io.Closer, error) {
		return net.ListenUnixgram("unixgram", &net.UnixAddr{Name: tmp, Net: "unixgram"})
	})
	if err != nil {
		return nil, nil, err
	}
	return s.(*net.UnixConn), id, nil
}

// removeSocket removes the socket file on shutdown if it is still ours,
// not something that replaced it meanwhile.
func removeSocket(path string, id os.FileInfo) {
	if fi, err := os.Lstat(path); err == nil && os.SameFile(fi, id) {
		_ = os.Remove(path)
	}
}
