//go:build !linux

package netns

// Do runs fn when path is empty; other namespaces exist only on Linux.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return ErrNotSupported
}

// ReadSysctl reports ErrNotSupported outside Linux.
func ReadSysctl(path, name string) (string, error) { return "", ErrNotSupported }

// WriteSysctl reports ErrNotSupported outside Linux.
func WriteSysctl(path, name, value string) error { return ErrNotSupported }
