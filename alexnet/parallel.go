package alexnet

import (
	"runtime"
	"sync"
)

// parts is how many pieces the ops cut their work into. It is fixed, not the
// number of cores, so that the sums they make in pieces (the weight gradient
// over the batch) round the same on every machine.
const parts = 4

// parallel runs fn(0..n-1) on up to GOMAXPROCS goroutines.
func parallel(n int, fn func(i int)) {
	workers := min(n, runtime.GOMAXPROCS(0))
	if workers <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	var wg sync.WaitGroup
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	wg.Wait()
}

// span is piece k of [0, n) cut into m pieces.
func span(n, m, k int) (int, int) { return k * n / m, (k + 1) * n / m }
