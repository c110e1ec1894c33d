//go:build unix

package offheap

import "golang.org/x/sys/unix"

// mapAnon maps size bytes of private anonymous memory. The kernel hands
// out zeroed pages, and only on first touch, so a mapping costs resident
// memory for the pages used, not for its size.
func mapAnon(size int) ([]byte, error) {
	return unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
}

func unmap(mem []byte) error { return unix.Munmap(mem) }
