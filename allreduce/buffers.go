package allreduce

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// reusedBuffers is the buffer pool of the ring's gRPC connections. gRPC's
// default pool zeroes every buffer it hands out, including a whole read buffer
// (4 MiB here) each time the socket is drained, which cost about 5% of an
// all-reduce's CPU. gRPC fills every buffer it takes before reading it (a
// frame's bytes, a read's n bytes), so the ring's pool hands them out as they
// were left.
var reusedBuffers mem.BufferPool = &sizeClassPool{}

// sizeClassPool keeps buffers in power-of-two size classes.
type sizeClassPool struct {
	classes [64]sync.Pool
}

func (p *sizeClassPool) Get(n int) *[]byte {
	class := bits.Len(uint(max(n, 1) - 1))
	if b, ok := p.classes[class].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<class)
	return &b
}

// Put keeps buffers whose capacity is a size class (those it handed out);
// others go to the garbage collector.
func (p *sizeClassPool) Put(b *[]byte) {
	c := cap(*b)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	p.classes[bits.Len(uint(c-1))].Put(b)
}
