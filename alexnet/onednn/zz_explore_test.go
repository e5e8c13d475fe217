//go:build !purego && !nodnnl

package onednn

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"testing"
	"time"
)

func TestZZExplore(t *testing.T) {
	if os.Getenv("ZZ") == "" {
		t.Skip()
	}
	seed := []Shape{
		{Batch: 32, In: 3, Out: 48, Side: 224, OutSide: 55, Kernel: 11, Stride: 4, Pad: 2},
		{Batch: 32, In: 48, Out: 128, Side: 27, OutSide: 27, Kernel: 5, Stride: 1, Pad: 2, DiffSrc: true},
		{Batch: 32, In: 128, Out: 192, Side: 13, OutSide: 13, Kernel: 3, Stride: 1, Pad: 1, DiffSrc: true},
		{Batch: 32, In: 192, Out: 192, Side: 13, OutSide: 13, Kernel: 3, Stride: 1, Pad: 1, DiffSrc: true},
		{Batch: 32, In: 192, Out: 128, Side: 13, OutSide: 13, Kernel: 3, Stride: 1, Pad: 1, DiffSrc: true},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	med := func(f func()) time.Duration {
		var ts []time.Duration
		for i := 0; i < 7; i++ {
			s := time.Now()
			f()
			ts = append(ts, time.Since(s))
		}
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
		return ts[3]
	}
	var tot [2]time.Duration
	for _, s := range seed {
		for pi, plain := range []bool{false, true} {
			s.Train, s.Plain = true, plain
			c, err := NewConv(s)
			if err != nil {
				t.Fatal(err)
			}
			nx, nw, nb, ny := s.sizes()
			x, w, b, dy := randoms(rng, nx), randoms(rng, nw), randoms(rng, nb), randoms(rng, ny)
			y, dx, dw, db := make([]float32, ny), make([]float32, nx), make([]float32, nw), make([]float32, nb)
			all := med(func() {
				c.Forward(x, w, b, y)
				if s.DiffSrc {
					c.BackwardData(w, dy, dx)
				}
				c.BackwardWeights(x, dy, dw, db)
			})
			tot[pi] += all
			fmt.Printf("%-32v plain=%-5v fwd+bwd %6.1f ms  %v\n", s, plain, float64(all.Microseconds())/1e3, c.Impl)
			c.Close()
		}
	}
	fmt.Printf("total: blocked %.1f ms, plain %.1f ms\n", float64(tot[0].Microseconds())/1e3, float64(tot[1].Microseconds())/1e3)
}
