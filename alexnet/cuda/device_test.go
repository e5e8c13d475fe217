//go:build gpu

package cuda_test

// These tests need an NVIDIA GPU: the test binary links gorgonia.org/cu and
// exits at start (package probe, status 2) on a host without one.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/alexring/alexring/alexnet/cuda"
	"github.com/alexring/alexring/alexnet/cuda/probe"
	"github.com/alexring/alexring/alexnet/gpu"
)

func openDevice(t *testing.T) *cuda.Device {
	t.Helper()
	d, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

// upload allocates len(v) floats on d holding v.
func upload(t *testing.T, d gpu.Device, v []float32) gpu.Ptr {
	t.Helper()
	p, err := d.Alloc(len(v))
	if err != nil {
		t.Fatal(err)
	}
	d.Upload(p, v)
	return p
}

func download(t *testing.T, d gpu.Device, p gpu.Ptr, n int) []float32 {
	t.Helper()
	v := make([]float32, n)
	d.Download(v, p)
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	return v
}

func randVec(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

func TestOpen(t *testing.T) {
	d := openDevice(t)
	major, minor := d.Capability()
	t.Logf("%s: compute capability %d.%d, %d device(s)", d.Describe(), major, minor, probe.Devices())
	if !strings.HasPrefix(d.Describe(), "cuda:0 "+d.Name()+" (sm_") || major < 8 {
		t.Errorf("Describe %q, capability %d.%d", d.Describe(), major, minor)
	}
	if free, total, err := d.MemInfo(); err != nil || free <= 0 || total < free {
		t.Errorf("MemInfo = %d, %d, %v", free, total, err)
	}
	p, err := d.Alloc(1000)
	if err != nil {
		t.Fatal(err)
	}
	if got := download(t, d, p, 1000); got[0] != 0 || got[999] != 0 {
		t.Errorf("Alloc's memory is not zeroed: %v ... %v", got[0], got[999])
	}
	if now, peak := d.Allocated(); now != 4000 || peak < 4000 {
		t.Errorf("Allocated = %d, %d; want 4000 now", now, peak)
	}
	d.Free(p)
	if now, _ := d.Allocated(); now != 0 {
		t.Errorf("Allocated after Free = %d", now)
	}

	n := probe.Devices()
	for _, ord := range []int{n, -1} {
		if _, err := cuda.Open(ord); !errors.Is(err, cuda.ErrNoDevice) || !strings.Contains(err.Error(), "this machine has") {
			t.Errorf("Open(%d) = %v; want the number of devices named", ord, err)
		} else {
			t.Logf("Open(%d): %v", ord, err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := d.Alloc(1); err == nil {
		t.Error("Alloc after Close succeeded")
	}
}

// cpuGemm is C = alpha*op(A)*op(B) + beta*C, row-major, in float64.
func cpuGemm(ta, tb bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) []float32 {
	out := append([]float32(nil), c...)
	at := func(i, l int) float64 {
		if ta {
			return float64(a[l*lda+i])
		}
		return float64(a[i*lda+l])
	}
	bt := func(l, j int) float64 {
		if tb {
			return float64(b[j*ldb+l])
		}
		return float64(b[l*ldb+j])
	}
	for i := range m {
		for j := range n {
			var s float64
			for l := range k {
				s += at(i, l) * bt(l, j)
			}
			out[i*ldc+j] = float32(float64(alpha)*s + float64(beta)*float64(c[i*ldc+j]))
		}
	}
	return out
}

// TestGemm checks the row-major products (operands swapped for cuBLAS's
// column-major order) against float64 loops: every transpose, leading
// dimensions wider than the rows, alpha and beta, and that C's padding
// between rows is left alone. FP32 products of up to 700 terms: 1e-5.
func TestGemm(t *testing.T) {
	d := openDevice(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		ta, tb  bool
		m, n, k int
	}{
		{false, false, 37, 29, 53}, {true, false, 37, 29, 53}, {false, true, 37, 29, 53}, {true, true, 37, 29, 53},
		{false, false, 1, 300, 700}, {false, true, 64, 1, 700},
	} {
		ar, ac := c.m, c.k
		if c.ta {
			ar, ac = c.k, c.m
		}
		br, bc := c.k, c.n
		if c.tb {
			br, bc = c.n, c.k
		}
		lda, ldb, ldc := ac+3, bc+1, c.n+2
		a, b, cm := randVec(rng, ar*lda), randVec(rng, br*ldb), randVec(rng, c.m*ldc)
		want := cpuGemm(c.ta, c.tb, c.m, c.n, c.k, 0.75, a, lda, b, ldb, -0.5, cm, ldc)
		pa, pb, pc := upload(t, d, a), upload(t, d, b), upload(t, d, cm)
		d.Gemm(c.ta, c.tb, c.m, c.n, c.k, 0.75, pa, lda, pb, ldb, -0.5, pc, ldc)
		got := download(t, d, pc, len(cm))
		within(t, fmt.Sprintf("Gemm %s%s %dx%dx%d", tr(c.ta), tr(c.tb), c.m, c.n, c.k), got, want, 1e-5)
		for i := range c.m {
			for j := c.n; j < ldc; j++ {
				if got[i*ldc+j] != cm[i*ldc+j] {
					t.Fatalf("Gemm wrote C[%d][%d], beyond n=%d", i, j, c.n)
				}
			}
		}
		d.Free(pa)
		d.Free(pb)
		d.Free(pc)
	}

	// Gemv, both ways, on a matrix with a wide leading dimension.
	const m, n, lda = 45, 70, 75
	a := randVec(rng, m*lda)
	for _, ta := range []bool{false, true} {
		xn, yn := n, m
		if ta {
			xn, yn = m, n
		}
		x, y := randVec(rng, xn), randVec(rng, yn)
		var want []float32
		if ta { // y = A^T x: a Gemm with A transposed and x a column
			want = cpuGemm(true, false, n, 1, m, 1.5, a, lda, x, 1, 0.25, y, 1)
		} else {
			want = cpuGemm(false, false, m, 1, n, 1.5, a, lda, x, 1, 0.25, y, 1)
		}
		pa, px, py := upload(t, d, a), upload(t, d, x), upload(t, d, y)
		d.Gemv(ta, m, n, 1.5, pa, lda, px, 0.25, py)
		within(t, fmt.Sprintf("Gemv %s %dx%d", tr(ta), m, n), download(t, d, py, yn), want, 1e-5)
		d.Free(pa)
		d.Free(px)
		d.Free(py)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
}

func tr(t bool) string {
	if t {
		return "T"
	}
	return "N"
}

// TestAsyncDownload checks the order on the one stream: an asynchronous
// copy into pinned memory sees the kernel issued before it and not the one
// issued after, once a later mark is waited for; a goroutine may wait for a
// mark while another issues work; DownloadAsync into Go memory is refused.
func TestAsyncDownload(t *testing.T) {
	d := openDevice(t)
	const n = 1 << 22 // 16 MB: a copy that takes a while
	ones, twos := make([]float32, n), make([]float32, n)
	for i := range ones {
		ones[i], twos[i] = 1, 2
	}
	x, mask := upload(t, d, ones), upload(t, d, twos)
	y, err := d.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	h, err := d.HostAlloc(n)
	if err != nil {
		t.Fatal(err)
	}
	if h[0] != 0 || h[n-1] != 0 {
		t.Fatal("HostAlloc's memory is not zeroed")
	}
	d.Launch("mask_multiply", n, x, mask, y) // y = 2
	d.DownloadAsync(h, y)
	d.Launch("mask_multiply", n, y, mask, y) // y = 4, after the copy
	e, err := d.Mark()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var waitErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		waitErr = d.Wait(e)
	}()
	for range 50 { // issue meanwhile, from this goroutine
		d.Launch("mask_multiply", n, x, mask, x) // x doubles
	}
	wg.Wait()
	if waitErr != nil {
		t.Fatal(waitErr)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		if h[i] != 2 {
			t.Fatalf("pinned copy[%d] = %v after the mark; want 2 (the kernel before the copy, not the one after)", i, h[i])
		}
	}
	if got := download(t, d, y, n); got[0] != 4 || got[n-1] != 4 {
		t.Errorf("y = %v ... %v; want 4", got[0], got[n-1])
	}
	if err := d.Wait(e); err != nil {
		t.Errorf("a second Wait on the same mark: %v", err)
	}
	d.FreeHost(h)
	d.Free(x)
	d.Free(mask)

	d.DownloadAsync(make([]float32, 4), y)
	if err := d.Err(); err == nil || !strings.Contains(err.Error(), "HostAlloc") {
		t.Errorf("DownloadAsync into Go memory: %v; want it refused", err)
	}
}

// TestErrors: a kernel that does not exist, or an argument of another type,
// is a sticky error naming it.
func TestErrors(t *testing.T) {
	for _, c := range []struct {
		launch func(d *cuda.Device, p gpu.Ptr)
		want   string
	}{
		{func(d *cuda.Device, p gpu.Ptr) { d.Launch("no_such_kernel", 4, p) }, `no kernel "no_such_kernel"`},
		{func(d *cuda.Device, p gpu.Ptr) { d.Launch("mask_multiply", 4, p, p, 3) }, "argument 2 is a int"},
	} {
		d := openDevice(t)
		p, err := d.Alloc(4)
		if err != nil {
			t.Fatal(err)
		}
		c.launch(d, p)
		err = d.Sync()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Sync = %v; want an error with %q", err, c.want)
			continue
		}
		if _, err2 := d.Alloc(1); err2 == nil || err2.Error() != err.Error() {
			t.Errorf("Alloc after the error = %v; want the sticky %v", err2, err)
		}
	}
}

func TestConfig(t *testing.T) {
	if err := (cuda.Config{GPU: 0, Conv: "fft"}).Validate(); err == nil || !strings.Contains(err.Error(), `"fft": want one of auto, cudnn, gemm`) {
		t.Errorf("Conv fft: %v", err)
	}
	if err := (cuda.Config{GPU: -1, Conv: "gemm"}).Validate(); err == nil {
		t.Error("GPU -1 accepted")
	}
	for _, c := range cuda.ConvChoices {
		if err := (cuda.Config{Conv: c}).Validate(); err != nil {
			t.Errorf("Conv %s: %v", c, err)
		}
	}
}
