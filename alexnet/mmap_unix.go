//go:build linux || darwin || freebsd

package alexnet

import (
	"os"
	"syscall"
)

// mapFile maps size bytes of fh copy-on-write: the pages are the page cache's
// until something writes one (nothing does in inference), and a write never
// reaches the file. Closing the file keeps the mapping; unmap ends it.
// MAP_POPULATE would pre-fault a writable private mapping for writing,
// copying every page (21 ms for the seed model); the read faults of the first
// forward pass map 64 KB each.
func mapFile(fh *os.File, size int64) (data []byte, unmap func() error, err error) {
	if size <= 0 || int64(int(size)) != size {
		return nil, nil, syscall.EINVAL
	}
	data, err = syscall.Mmap(int(fh.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
	if err != nil {
		return nil, nil, err
	}
	return data, func() error { return syscall.Munmap(data) }, nil
}
