package storage

import "syscall"

// dropPages releases the process's mapping of pages of a read-only shared
// file mapping: they stay in the page cache and are mapped again on the next
// access, so this only lowers RSS.
func dropPages(mapped []byte) {
	if len(mapped) > 0 {
		_ = syscall.Madvise(mapped, syscall.MADV_DONTNEED)
	}
}
