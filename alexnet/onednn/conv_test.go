//go:build !purego && !nodnnl

package onednn

import (
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// reference is the convolution and its gradients by definition, summed in
// float64.
func reference(s Shape, x, w, b, dy []float32) (y, dx, dw, db []float32) {
	nx, nw, _, ny := s.sizes()
	y, dx, dw, db = make([]float32, ny), make([]float32, nx), make([]float32, nw), make([]float32, s.Out)
	ydx := make([]float64, nx)
	ydw := make([]float64, nw)
	for n := range s.Batch {
		for o := range s.Out {
			var sb float64
			for oy := range s.OutSide {
				for ox := range s.OutSide {
					acc := float64(b[o])
					g := float64(dy[((n*s.Out+o)*s.OutSide+oy)*s.OutSide+ox])
					sb += g
					for c := range s.In {
						for ky := range s.Kernel {
							iy := oy*s.Stride - s.Pad + ky
							if iy < 0 || iy >= s.Side {
								continue
							}
							for kx := range s.Kernel {
								ix := ox*s.Stride - s.Pad + kx
								if ix < 0 || ix >= s.Side {
									continue
								}
								xi := ((n*s.In+c)*s.Side+iy)*s.Side + ix
								wi := ((o*s.In+c)*s.Kernel+ky)*s.Kernel + kx
								acc += float64(x[xi]) * float64(w[wi])
								ydx[xi] += g * float64(w[wi])
								ydw[wi] += g * float64(x[xi])
							}
						}
					}
					y[((n*s.Out+o)*s.OutSide+oy)*s.OutSide+ox] = float32(acc)
				}
			}
			db[o] += float32(sb)
		}
	}
	for i, v := range ydx {
		dx[i] = float32(v)
	}
	for i, v := range ydw {
		dw[i] = float32(v)
	}
	return y, dx, dw, db
}

func randoms(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// relDiff is max |a-b| over the largest |b|.
func relDiff(a, b []float32) float64 {
	var d, scale float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i])-float64(b[i])))
		scale = math.Max(scale, math.Abs(float64(b[i])))
	}
	return d / scale
}

func TestConvAgainstDefinition(t *testing.T) {
	shapes := []Shape{
		// The seed's first two layers in small: a strided 11x11 on 3
		// channels (no backward data, as on the images), then 5x5.
		{Batch: 2, In: 3, Out: 16, Side: 35, OutSide: 8, Kernel: 11, Stride: 4, Pad: 2},
		{Batch: 3, In: 16, Out: 32, Side: 9, OutSide: 9, Kernel: 5, Stride: 1, Pad: 2, DiffSrc: true},
		// Channels that are not multiples of the SIMD blocks.
		{Batch: 2, In: 5, Out: 7, Side: 6, OutSide: 6, Kernel: 3, Stride: 1, Pad: 1, DiffSrc: true},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, s := range shapes {
		for _, plain := range []bool{false, true} {
			s := s
			s.Train, s.Plain = true, plain
			c, err := NewConv(s)
			if err != nil {
				t.Fatal(err)
			}
			nx, nw, nb, ny := s.sizes()
			x, w, b, dy := randoms(rng, nx), randoms(rng, nw), randoms(rng, nb), randoms(rng, ny)
			wy, wdx, wdw, wdb := reference(s, x, w, b, dy)
			y, dx, dw, db := make([]float32, ny), make([]float32, nx), make([]float32, nw), make([]float32, nb)
			if err := c.Forward(x, w, b, y); err != nil {
				t.Fatal(err)
			}
			if s.DiffSrc {
				if err := c.BackwardData(w, dy, dx); err != nil {
					t.Fatal(err)
				}
			} else if err := c.BackwardData(w, dy, dx); err == nil {
				t.Errorf("%v: backward data without DiffSrc did not fail", s)
			}
			if err := c.BackwardWeights(x, dy, dw, db); err != nil {
				t.Fatal(err)
			}
			t.Logf("%v plain=%v: %v, layouts %v, %d reorders", s, plain, c.Impl, c.Layouts, c.Reorders)
			const tol = 1e-5 // float32 sums of up to a few hundred terms
			for _, r := range []struct {
				name      string
				got, want []float32
			}{{"y", y, wy}, {"dw", dw, wdw}, {"db", db, wdb}, {"dx", dx, wdx}} {
				if r.name == "dx" && !s.DiffSrc {
					continue
				}
				if d := relDiff(r.got, r.want); d > tol {
					t.Errorf("%v plain=%v: %s differs from the definition by %.3g of its max (tolerance %g)", s, plain, r.name, d, tol)
				}
			}
			c.Close()
		}
	}
}

// TestConvDeterministic: the same inputs give the same bits, also after
// another layer ran in between and with the kept buffers reused.
func TestConvDeterministic(t *testing.T) {
	s := Shape{Batch: 8, In: 32, Out: 48, Side: 13, OutSide: 13, Kernel: 3, Stride: 1, Pad: 1, Train: true, DiffSrc: true}
	c, err := NewConv(s)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := NewConv(Shape{Batch: 4, In: 3, Out: 16, Side: 35, OutSide: 8, Kernel: 11, Stride: 4, Pad: 2, Train: true})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	nx, nw, nb, ny := s.sizes()
	x, w, b, dy := randoms(rng, nx), randoms(rng, nw), randoms(rng, nb), randoms(rng, ny)
	step := func() [][]float32 {
		y, dx, dw, db := make([]float32, ny), make([]float32, nx), make([]float32, nw), make([]float32, nb)
		if err := c.Forward(x, w, b, y); err != nil {
			t.Fatal(err)
		}
		if err := c.BackwardWeights(x, dy, dw, db); err != nil {
			t.Fatal(err)
		}
		if err := c.BackwardData(w, dy, dx); err != nil {
			t.Fatal(err)
		}
		o := other.Shape()
		ox, ow, ob, oy := o.sizes()
		if err := other.Forward(randoms(rng, ox), randoms(rng, ow), randoms(rng, ob), make([]float32, oy)); err != nil {
			t.Fatal(err)
		}
		return [][]float32{y, dx, dw, db}
	}
	first := step()
	for range 3 {
		for i, v := range step() {
			if !slices.Equal(v, first[i]) {
				t.Fatalf("output %d differs between two runs on the same inputs", i)
			}
		}
	}
	// A new x in the same buffer after forward: backward weights must see it
	// only through a forward call, which it does here.
	copy(x, randoms(rng, nx))
	y2 := step()
	if slices.Equal(y2[2], first[2]) {
		t.Fatal("dw did not change with x")
	}
}

func TestConvErrors(t *testing.T) {
	if _, err := NewConv(Shape{Batch: 1, In: 3, Out: 4, Side: 10, OutSide: 9, Kernel: 3, Stride: 1, Pad: 1}); err == nil || !strings.Contains(err.Error(), "inconsistent") {
		t.Errorf("a wrong output side: %v", err)
	}
	c, err := NewConv(Shape{Batch: 1, In: 3, Out: 4, Side: 10, OutSide: 10, Kernel: 3, Stride: 1, Pad: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Forward(make([]float32, 299), make([]float32, 108), make([]float32, 4), make([]float32, 400)); err == nil || !strings.Contains(err.Error(), "x has 299 values, want 300") {
		t.Errorf("a short x: %v", err)
	}
	if err := c.BackwardWeights(make([]float32, 300), make([]float32, 400), make([]float32, 108), make([]float32, 4)); err == nil {
		t.Error("backward weights of an inference layer did not fail")
	}
	c.Close()
	if err := c.Forward(make([]float32, 300), make([]float32, 108), make([]float32, 4), make([]float32, 400)); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("forward after Close: %v", err)
	}
}

func TestRuntime(t *testing.T) {
	in, err := Runtime()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("oneDNN %s, %s, ISA %s, %d threads", in.Version, in.Runtime, in.ISA, in.Threads)
	if in.Version == "" || in.ISA == "" || in.Threads < 1 {
		t.Errorf("Runtime() = %+v", in)
	}
}

// A layer nobody holds is freed: its kept buffers go back (a graph rebuilt
// for a new batch drops the old one's layers without closing them).
func TestConvFreedWhenUnreachable(t *testing.T) {
	_, before := Memory()
	func() {
		c, err := NewConv(Shape{Batch: 4, In: 16, Out: 32, Side: 9, OutSide: 9, Kernel: 3, Stride: 1, Pad: 1, Train: true, DiffSrc: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, kept := Memory(); kept <= before {
			t.Fatalf("a training layer keeps %d bytes, before it %d", kept, before)
		}
		runtime.KeepAlive(c)
	}()
	for range 100 {
		runtime.GC()
		if _, kept := Memory(); kept == before {
			return
		}
		// Stays: a cleanup's end is no event a test can wait on (cleanups run
		// on the runtime's goroutines, concurrently, in no order).
		time.Sleep(10 * time.Millisecond)
	}
	_, kept := Memory()
	t.Errorf("an unreachable layer's buffers are still kept: %d bytes, %d before it", kept, before)
}

// The same inputs give the same bits with any thread count: forward and
// backward data sum each value in one thread, backward weights splits its
// sums by ReduceThreads (before it did so by the process's threads, and
// ranks with other GOMAXPROCS trained other bits). Each count runs in a
// child process (oneDNN's threads are set once per process).
func TestSameBitsOnAnyThreadCount(t *testing.T) {
	shapes := []Shape{
		{Batch: 4, In: 3, Out: 8, Side: 67, OutSide: 16, Kernel: 11, Stride: 4, Pad: 2}, // the tiny model's
		{Batch: 4, In: 8, Out: 16, Side: 7, OutSide: 7, Kernel: 5, Stride: 1, Pad: 2, DiffSrc: true},
		{Batch: 8, In: 3, Out: 48, Side: 224, OutSide: 55, Kernel: 11, Stride: 4, Pad: 2}, // the seed's
		{Batch: 32, In: 48, Out: 128, Side: 27, OutSide: 27, Kernel: 5, Stride: 1, Pad: 2, DiffSrc: true},
	}
	if os.Getenv("ALEXRING_ONEDNN_CHILD") == "threads" {
		rng := rand.New(rand.NewPCG(1, 2))
		for _, s := range shapes {
			s.Train = true
			c, err := NewConv(s)
			if err != nil {
				t.Fatal(err)
			}
			nx, nw, nb, ny := s.sizes()
			x, w, b, dy := randoms(rng, nx), randoms(rng, nw), randoms(rng, nb), randoms(rng, ny)
			y, dx, dw, db := make([]float32, ny), make([]float32, nx), make([]float32, nw), make([]float32, nb)
			if err := c.Forward(x, w, b, y); err != nil {
				t.Fatal(err)
			}
			if s.DiffSrc {
				if err := c.BackwardData(w, dy, dx); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.BackwardWeights(x, dy, dw, db); err != nil {
				t.Fatal(err)
			}
			fmt.Printf("bits %v: y %08x dx %08x dw %08x db %08x\n", s, crc(y), crc(dx), crc(dw), crc(db))
		}
		return
	}
	runs := map[int]string{}
	for _, n := range []int{1, 3} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSameBitsOnAnyThreadCount$", "-test.count=1")
		cmd.Env = append(os.Environ(), "ALEXRING_ONEDNN_CHILD=threads", fmt.Sprintf("GOMAXPROCS=%d", n))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("GOMAXPROCS=%d: %v\n%s", n, err, out)
		}
		var lines []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "bits ") {
				lines = append(lines, l)
			}
		}
		if len(lines) != len(shapes) {
			t.Fatalf("GOMAXPROCS=%d printed:\n%s", n, out)
		}
		runs[n] = strings.Join(lines, "\n")
	}
	if runs[1] != runs[3] {
		t.Errorf("one thread and three differ:\n%s\n--\n%s", runs[1], runs[3])
	}
}

func crc(v []float32) uint32 {
	return crc32.ChecksumIEEE(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v)))
}
