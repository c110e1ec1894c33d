//go:build !unix

package offheap

import "errors"

// Without mappings every array lives on the Go heap (Make falls back).
func mapAnon(int) ([]byte, error) { return nil, errors.New("no anonymous mappings on this platform") }

func unmap([]byte) error { return nil }
