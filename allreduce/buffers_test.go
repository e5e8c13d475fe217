package allreduce

import "testing"

func TestSizeClassPool(t *testing.T) {
	var p sizeClassPool
	for _, n := range []int{0, 1, 2, 3, 16384, 16385, 4 << 20} {
		b := p.Get(n)
		if len(*b) != n || cap(*b) < n || cap(*b)&(cap(*b)-1) != 0 {
			t.Fatalf("Get(%d): len %d cap %d, want len %d and a power-of-two capacity", n, len(*b), cap(*b), n)
		}
		p.Put(b)
	}
	// A returned buffer serves a later request of its class, at its new length.
	b := p.Get(1000)
	(*b)[0] = 7
	p.Put(b)
	odd := make([]byte, 1000) // not of a class: dropped, never handed out
	p.Put(&odd)
	for range 10 { // sync.Pool may drop it; it must never hand out a wrong size
		c := p.Get(600)
		if len(*c) != 600 || cap(*c) != 1024 {
			t.Fatalf("Get(600) after Put: len %d cap %d", len(*c), cap(*c))
		}
		p.Put(c)
	}
}
