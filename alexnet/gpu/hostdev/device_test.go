//go:build cgo && !purego

package hostdev

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet/gpu"
	"github.com/alexring/alexring/alexnet/gpu/kernels"
)

func newDevice(t *testing.T) *Device {
	t.Helper()
	d, err := New()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// upload allocates len(v) floats and copies v there.
func upload(t *testing.T, d *Device, v []float32) gpu.Ptr {
	t.Helper()
	p, err := d.Alloc(len(v))
	if err != nil {
		t.Fatal(err)
	}
	d.Upload(p, v)
	return p
}

func download(d *Device, p gpu.Ptr, n int) []float32 {
	v := make([]float32, n)
	d.Download(v, p)
	return v
}

// ints is n small integers: products and sums of a few of them are exact in
// float32, so a BLAS's order of additions cannot change a bit.
func ints(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.IntN(9) - 4)
	}
	return v
}

// wantErr fails unless d's sticky error mentions every part.
func wantErr(t *testing.T, d *Device, parts ...string) {
	t.Helper()
	err := d.Err()
	if err == nil {
		t.Fatalf("no error; want one naming %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not name %q", err, p)
		}
	}
	if d.Sync() != err {
		t.Errorf("Sync returns %v, not the first error %v", d.Sync(), err)
	}
}

// at is element (i, j) of a row-major matrix with leading dimension ld,
// transposed when trans.
func at(v []float32, ld, i, j int, trans bool) float64 {
	if trans {
		i, j = j, i
	}
	return float64(v[i*ld+j])
}

// TestGemm: every combination of transposes, leading dimensions above the
// columns (the padding untouched), against a naive loop, exactly.
func TestGemm(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 1))
	d := newDevice(t)
	defer d.Close()
	for _, dims := range [][3]int{{5, 7, 3}, {1, 1, 1}, {4, 1, 9}, {1, 6, 2}, {33, 17, 65}} {
		m, n, k := dims[0], dims[1], dims[2]
		for _, ta := range []bool{false, true} {
			for _, tb := range []bool{false, true} {
				aRows, aCols, bRows, bCols := m, k, k, n
				if ta {
					aRows, aCols = k, m
				}
				if tb {
					bRows, bCols = n, k
				}
				lda, ldb, ldc := aCols+2, bCols+1, n+3
				a, b, c := ints(r, aRows*lda), ints(r, bRows*ldb), ints(r, m*ldc)
				const alpha, beta = 0.5, -2
				want := slices.Clone(c)
				for i := range m {
					for j := range n {
						var s float64
						for l := range k {
							s += at(a, lda, i, l, ta) * at(b, ldb, l, j, tb)
						}
						want[i*ldc+j] = float32(alpha*s + beta*float64(c[i*ldc+j]))
					}
				}
				pa, pb, pc := upload(t, d, a), upload(t, d, b), upload(t, d, c)
				d.Gemm(ta, tb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc)
				got := download(d, pc, len(c))
				if err := d.Err(); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, want) {
					t.Errorf("Gemm %v transA %v transB %v: %v, want %v", dims, ta, tb, got, want)
				}
				d.Free(pa)
				d.Free(pb)
				d.Free(pc)
			}
		}
	}
}

// TestGemmBetaZero: with beta 0, C is written, not read (cuBLAS's rule the
// model relies on for buffers it does not clear): NaNs there vanish; with k
// 0, C = beta*C.
func TestGemmBetaZero(t *testing.T) {
	d := newDevice(t)
	defer d.Close()
	nan := float32(math.NaN())
	a, b := upload(t, d, []float32{1, 2, 3, 4}), upload(t, d, []float32{1, 0, 0, 1})
	c := upload(t, d, []float32{nan, nan, nan, nan})
	d.Gemm(false, false, 2, 2, 2, 1, a, 2, b, 2, 0, c, 2)
	if got := download(d, c, 4); !slices.Equal(got, []float32{1, 2, 3, 4}) {
		t.Errorf("beta 0 over NaNs: %v", got)
	}
	d.Gemm(false, false, 2, 2, 0, 1, a, 1, b, 2, 3, c, 2)
	if got := download(d, c, 4); !slices.Equal(got, []float32{3, 6, 9, 12}) {
		t.Errorf("k 0, beta 3: %v", got)
	}
	if err := d.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestGemv(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 2))
	d := newDevice(t)
	defer d.Close()
	for _, dims := range [][2]int{{5, 7}, {1, 1}, {1, 9}, {8, 1}, {64, 33}} {
		m, n := dims[0], dims[1]
		for _, ta := range []bool{false, true} {
			lda := n + 2
			xLen, yLen := n, m
			if ta {
				xLen, yLen = m, n
			}
			a, x, y := ints(r, m*lda), ints(r, xLen), ints(r, yLen)
			const alpha, beta = 2, 0.5
			want := make([]float32, yLen)
			for i := range yLen {
				var s float64
				for j := range xLen {
					s += at(a, lda, i, j, ta) * float64(x[j])
				}
				want[i] = float32(alpha*s + beta*float64(y[i]))
			}
			pa, px, py := upload(t, d, a), upload(t, d, x), upload(t, d, y)
			d.Gemv(ta, m, n, alpha, pa, lda, px, beta, py)
			if got := download(d, py, yLen); !slices.Equal(got, want) {
				t.Errorf("Gemv %v transA %v: %v, want %v", dims, ta, got, want)
			}
			if err := d.Err(); err != nil {
				t.Fatal(err)
			}
			d.Free(pa)
			d.Free(px)
			d.Free(py)
		}
	}
}

// TestConvOnDevice: a convolution as the model runs it, im2col into patches
// and one GEMM, against direct loops (small integers: exact); the kernels
// take the device's C addresses.
func TestConvOnDevice(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	d := newDevice(t)
	defer d.Close()
	const batch, in, out, side, k, stride, pad = 2, 3, 4, 9, 3, 2, 1
	o := (side+2*pad-k)/stride + 1
	x, w := ints(r, in*batch*side*side), ints(r, out*in*k*k) // x CNHW, w OIHW
	rows, cols := in*k*k, batch*o*o
	px, pw := upload(t, d, x), upload(t, d, w)
	patches, err := d.Alloc(rows * cols)
	if err != nil {
		t.Fatal(err)
	}
	py, err := d.Alloc(out * cols)
	if err != nil {
		t.Fatal(err)
	}
	d.Launch("im2col", int64(rows*cols), px, patches, int64(batch), int64(in), int64(side), int64(k), int64(stride), int64(pad), int64(o))
	d.Gemm(false, false, out, cols, rows, 1, pw, rows, patches, cols, 0, py, cols)
	got := download(d, py, out*cols)
	if err := d.Err(); err != nil {
		t.Fatal(err)
	}
	for co := range out {
		for b := range batch {
			for oy := range o {
				for ox := range o {
					var s float32
					for c := range in {
						for ky := range k {
							for kx := range k {
								iy, ix := oy*stride-pad+ky, ox*stride-pad+kx
								if iy >= 0 && iy < side && ix >= 0 && ix < side {
									s += w[((co*in+c)*k+ky)*k+kx] * x[((c*batch+b)*side+iy)*side+ix]
								}
							}
						}
					}
					if g := got[(co*batch+b)*o*o+oy*o+ox]; g != s {
						t.Fatalf("y[%d][%d][%d][%d] = %g, want %g", co, b, oy, ox, g, s)
					}
				}
			}
		}
	}
}

func TestAllocZeroed(t *testing.T) {
	d := newDevice(t)
	defer d.Close()
	p, err := d.Alloc(1000)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range download(d, p, 1000) {
		if math.Float32bits(v) != 0 {
			t.Fatalf("Alloc'd [%d] = %g", i, v)
		}
	}
	h, err := d.HostAlloc(100)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range h {
		if v != 0 {
			t.Fatalf("HostAlloc'd [%d] = %g", i, v)
		}
	}
	if d.Describe() != "host" {
		t.Errorf("Describe = %q", d.Describe())
	}
}

// TestRangeChecks: each use of memory outside a live allocation is a sticky
// error naming the call, after which nothing runs.
func TestRangeChecks(t *testing.T) {
	for _, c := range []struct {
		what  string
		do    func(d *Device, p, q gpu.Ptr) // p: 12 floats, q: 6
		parts []string
	}{
		{"Gemm's C one float short", func(d *Device, p, q gpu.Ptr) {
			d.Gemm(false, false, 2, 3, 2, 1, p, 2, p, 3, 0, q.Add(1), 3) // C needs 6 floats from q+1
		}, []string{"Gemm", " C", "past the end", "1 floats"}},
		{"Gemm's A with a leading dimension too large", func(d *Device, p, q gpu.Ptr) {
			d.Gemm(true, false, 3, 2, 3, 1, q, 5, p, 2, 0, p, 2) // A^T: 3 rows of ld 5
		}, []string{"Gemm", "lda 5", " A", "past the end"}},
		{"Gemm's leading dimension below the columns", func(d *Device, p, q gpu.Ptr) {
			d.Gemm(false, true, 2, 2, 3, 1, p, 2, p, 3, 0, q, 2)
		}, []string{"Gemm", "leading dimension 2 for 3 columns"}},
		{"Gemv's y", func(d *Device, p, q gpu.Ptr) {
			d.Gemv(true, 1, 7, 1, p, 7, p, 0, q) // y has n = 7 floats
		}, []string{"Gemv", " y", "past the end"}},
		{"Upload past the end", func(d *Device, p, q gpu.Ptr) { d.Upload(q, make([]float32, 7)) }, []string{"Upload", "past the end"}},
		{"Download from no allocation", func(d *Device, p, q gpu.Ptr) { d.Download(make([]float32, 1), 8) }, []string{"Download", "not device memory"}},
		{"use after Free", func(d *Device, p, q gpu.Ptr) {
			d.Free(q)
			d.Upload(q.Add(2), []float32{1})
		}, []string{"Upload", "used after Free"}},
		{"a kernel after Free", func(d *Device, p, q gpu.Ptr) {
			d.Free(q)
			d.Launch("mask_multiply", 6, p, p, q)
		}, []string{"mask_multiply", "argument 2", "used after Free"}},
		{"a kernel past the end", func(d *Device, p, q gpu.Ptr) {
			d.Launch("relu_backward", 7, p, p, q)
		}, []string{"relu_backward", "argument 2", "past the end"}},
		{"freed twice", func(d *Device, p, q gpu.Ptr) { d.Free(q); d.Free(q) }, []string{"Free", "freed twice"}},
		{"Free inside", func(d *Device, p, q gpu.Ptr) { d.Free(q.Add(1)) }, []string{"Free", "not its start"}},
		{"Free of nothing", func(d *Device, p, q gpu.Ptr) { d.Free(16) }, []string{"Free(0x10)", "not an allocation"}},
		{"DownloadAsync into Go memory", func(d *Device, p, q gpu.Ptr) { d.DownloadAsync(make([]float32, 2), p) }, []string{"DownloadAsync", "HostAlloc"}},
		{"FreeHost of Go memory", func(d *Device, p, q gpu.Ptr) { d.FreeHost(make([]float32, 2)) }, []string{"FreeHost", "HostAlloc"}},
		{"Wait on another device's mark", func(d *Device, p, q gpu.Ptr) {
			e, _ := newDevice(t).Mark()
			d.Wait(e)
		}, []string{"Wait", "not a mark of this device"}},
	} {
		t.Run(c.what, func(t *testing.T) {
			d := newDevice(t)
			defer d.Close()
			p, err := d.Alloc(12)
			if err != nil {
				t.Fatal(err)
			}
			q := upload(t, d, []float32{1, 2, 3, 4, 5, 6})
			if err := d.Err(); err != nil {
				t.Fatal(err)
			}
			c.do(d, p, q)
			wantErr(t, d, c.parts...)
			// Sticky: nothing runs after the first failure.
			first := d.Err()
			v := []float32{42}
			d.Download(v, p)
			if v[0] != 42 || d.Err() != first {
				t.Errorf("a Download after the error ran (%g) or changed the error to %v", v[0], d.Err())
			}
			if _, err := d.Alloc(1); err != first {
				t.Errorf("Alloc after the error: %v", err)
			}
		})
	}
}

// TestLaunchChecks: the argument types and the geometry of a launch.
func TestLaunchChecks(t *testing.T) {
	for _, c := range []struct {
		what  string
		name  string
		n     int64
		args  func(p gpu.Ptr) []any
		parts []string
	}{
		{"a plain int", "bias_act", 4, func(p gpu.Ptr) []any { return []any{p, p, int64(1), 4, int64(0)} }, []string{"bias_act", "argument 3 is int", "int64"}},
		{"a float32", "adam", 4, func(p gpu.Ptr) []any {
			return []any{p, p, p, p, 0.9, 0.999, float32(0.1), 0.001, 1e-4, 1.0, 1e-8}
		}, []string{"adam", "argument 6 is float32", "float64"}},
		{"an int64 for a pointer", "mask_multiply", 4, func(p gpu.Ptr) []any { return []any{p, int64(p), p} }, []string{"mask_multiply", "argument 1 is int64", "gpu.Ptr"}},
		{"a raw uint64 address", "nonfinite", 4, func(p gpu.Ptr) []any { return []any{uint64(p), p} }, []string{"nonfinite", "argument 0 is uint64"}},
		{"an unknown kernel", "relu", 4, func(p gpu.Ptr) []any { return []any{p} }, []string{`"relu"`, "no such kernel"}},
		{"too few arguments", "softmax_xent", 1, func(p gpu.Ptr) []any { return []any{p, p, p, p} }, []string{"softmax_xent", "4 arguments", "want 5"}},
		{"im2col's n", "im2col", 100, func(p gpu.Ptr) []any {
			return []any{p, p, int64(1), int64(1), int64(3), int64(3), int64(1), int64(0), int64(1)}
		}, []string{"im2col", "n = 100", "9"}},
		{"im2col's outSide", "im2col", 4, func(p gpu.Ptr) []any {
			return []any{p, p, int64(1), int64(1), int64(3), int64(3), int64(1), int64(0), int64(2)}
		}, []string{"im2col", "outSide 2"}},
		{"im2col's stride 0", "im2col", 9, func(p gpu.Ptr) []any {
			return []any{p, p, int64(1), int64(1), int64(3), int64(3), int64(0), int64(0), int64(1)}
		}, []string{"im2col", "size 0"}},
		{"a pool's planes", "maxpool_backward", 10, func(p gpu.Ptr) []any {
			return []any{p, p, p, int64(3), int64(1), int64(3), int64(2)}
		}, []string{"maxpool_backward", "n = 10", "3x3 planes"}},
		{"a transpose's n", "nchw_to_cnhw", 5, func(p gpu.Ptr) []any { return []any{p, p, int64(2), int64(1), int64(2)} }, []string{"nchw_to_cnhw", "n = 5"}},
		{"col2im's patches too small", "col2im", 16, func(p gpu.Ptr) []any {
			// 4x4 image, 3x3 kernel, pad 1: 9 rows of 16 columns, 144 floats.
			return []any{p, p, int64(1), int64(1), int64(4), int64(3), int64(1), int64(1), int64(4)}
		}, []string{"col2im", "argument 0", "past the end"}},
	} {
		t.Run(c.what, func(t *testing.T) {
			d := newDevice(t)
			defer d.Close()
			p, err := d.Alloc(64)
			if err != nil {
				t.Fatal(err)
			}
			d.Launch(c.name, c.n, c.args(p)...)
			wantErr(t, d, c.parts...)
		})
	}
}

// TestEveryKernelLaunches: the signatures cover exactly the kernels, and each
// launches through the device (n = 0: with zero pointers) with its count of
// arguments of the right types.
func TestEveryKernelLaunches(t *testing.T) {
	var names []string
	for name := range signatures {
		names = append(names, name)
	}
	slices.Sort(names)
	if want := slices.Sorted(slices.Values(kernels.Names())); !slices.Equal(names, want) {
		t.Fatalf("signatures for %v, kernels %v", names, want)
	}
	d := newDevice(t)
	defer d.Close()
	for _, name := range names {
		var args []any
		for _, k := range []byte(signatures[name].kinds) {
			args = append(args, map[byte]any{'p': gpu.Ptr(0), 'i': int64(0), 'd': 0.0}[k])
		}
		d.Launch(name, 0, args...)
		if err := d.Err(); err != nil {
			t.Fatalf("%s over 0 items: %v", name, err)
		}
	}
}

// TestLaunchRuns: a launch through the device computes what the kernel does.
func TestLaunchRuns(t *testing.T) {
	d := newDevice(t)
	defer d.Close()
	x := upload(t, d, []float32{1, -2, 3, float32(math.Inf(1)), 5})
	mask := upload(t, d, []float32{2, 2, 0, 2, 0})
	flag, err := d.Alloc(1)
	if err != nil {
		t.Fatal(err)
	}
	d.Launch("mask_multiply", 5, x, mask, x)
	d.Launch("nonfinite", 3, x, flag) // the infinity is the 4th
	if got := download(d, x, 5); !slices.Equal(got, []float32{2, -4, 0, float32(math.Inf(1)), 0}) {
		t.Errorf("mask_multiply: %v", got)
	}
	if got := download(d, flag, 1); math.Float32bits(got[0]) != 0 {
		t.Errorf("nonfinite over finite values set the flag: %#x", math.Float32bits(got[0]))
	}
	d.Launch("nonfinite", 5, x, flag)
	if got := download(d, flag, 1); math.Float32bits(got[0]) != 1 { // an int32 1
		t.Errorf("nonfinite with an infinity: flag %#x, want 1", math.Float32bits(got[0]))
	}
	if err := d.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestHostMemoryAndMarks(t *testing.T) {
	d := newDevice(t)
	defer d.Close()
	p := upload(t, d, []float32{1, 2, 3, 4})
	h, err := d.HostAlloc(6)
	if err != nil {
		t.Fatal(err)
	}
	d.DownloadAsync(h[2:5], p.Add(1))
	e, err := d.Mark()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Wait(e); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(h, []float32{0, 0, 2, 3, 4, 0}) {
		t.Errorf("DownloadAsync: %v", h)
	}
	d.FreeHost(h)
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestClose: Close frees everything; afterwards Free, FreeHost and Close do
// nothing, and any other call is an error.
func TestClose(t *testing.T) {
	d := newDevice(t)
	p := upload(t, d, []float32{1})
	h, err := d.HostAlloc(3)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if len(d.live) != 0 || len(d.host) != 0 {
		t.Errorf("after Close: %d allocations, %d host ones", len(d.live), len(d.host))
	}
	d.Free(p)
	d.FreeHost(h)
	if err := d.Close(); err != nil || d.Err() != nil {
		t.Fatalf("Free, FreeHost and Close after Close: %v, %v", err, d.Err())
	}
	d.Upload(p, []float32{2})
	wantErr(t, d, "after Close")
}
