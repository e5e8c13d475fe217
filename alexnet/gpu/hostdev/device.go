//go:build cgo && !purego

package hostdev

// The device: C heap memory, OpenBLAS's cblas, the kernels' host build, and
// the checks of every pointer range against the live allocations.

/*
#cgo LDFLAGS: -lopenblas
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>

// Device pointers cross as uint64_t (gpu.Ptr), so Go never turns an integer
// back into a pointer.
static uint64_t hd_alloc(size_t n) { return (uint64_t)(uintptr_t)calloc(n, 4); }
static void hd_free(uint64_t p) { free((void *)(uintptr_t)p); }
static float *hd_host_alloc(size_t n) { return (float *)calloc(n, 4); }
static void hd_upload(uint64_t dst, const void *src, size_t bytes) { memcpy((void *)(uintptr_t)dst, src, bytes); }
static void hd_download(void *dst, uint64_t src, size_t bytes) { memcpy(dst, (const void *)(uintptr_t)src, bytes); }

static void hd_sgemm(int ta, int tb, int m, int n, int k, float alpha, uint64_t a, int lda,
	uint64_t b, int ldb, float beta, uint64_t c, int ldc)
{
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
		m, n, k, alpha, (const float *)(uintptr_t)a, lda, (const float *)(uintptr_t)b, ldb,
		beta, (float *)(uintptr_t)c, ldc);
}

static void hd_sgemv(int ta, int m, int n, float alpha, uint64_t a, int lda, uint64_t x,
	float beta, uint64_t y)
{
	cblas_sgemv(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, m, n, alpha,
		(const float *)(uintptr_t)a, lda, (const float *)(uintptr_t)x, 1, beta, (float *)(uintptr_t)y, 1);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"unsafe"

	"github.com/alexring/alexring/alexnet/gpu"
	"github.com/alexring/alexring/alexnet/gpu/kernels"
)

// Device is the host's gpu.Device. Its methods may be called from any
// goroutine; each runs to completion before it returns.
type Device struct {
	mu     sync.Mutex
	live   []region          // device allocations, sorted by base
	freed  map[uint64]uint64 // freed allocations not yet reused: base -> bytes, for the messages
	host   map[uintptr]int   // HostAlloc's memory: base -> floats
	err    error             // the first failure (sticky)
	marks  int64
	closed bool
}

// region is an allocation's bytes [base, base+size).
type region struct{ base, size uint64 }

var _ gpu.Device = (*Device)(nil)

// errClosed is the sticky error of a call after Close.
var errClosed = errors.New("hostdev: device used after Close")

// New returns an empty device. It fails when the kernels' host build and the
// signatures the device checks launches against (footprint.go) do not list
// the same kernels: one was added without the other.
func New() (*Device, error) {
	names := kernels.Names()
	for _, name := range names {
		if _, ok := signatures[name]; !ok {
			return nil, fmt.Errorf("hostdev: no signature for kernel %s", name)
		}
	}
	if len(signatures) != len(names) {
		return nil, fmt.Errorf("hostdev: signatures for %d kernels, the host build has %d (%v)", len(signatures), len(names), names)
	}
	return &Device{freed: map[uint64]uint64{}, host: map[uintptr]int{}}, nil
}

// fail records err as the sticky error unless there is one already.
func (d *Device) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

// begin locks the device and says whether the call may run (no sticky error).
func (d *Device) begin() bool {
	d.mu.Lock()
	if d.closed {
		d.fail(errClosed)
	}
	return d.err == nil
}

// find returns the live allocation holding address p.
func (d *Device) find(p uint64) (region, bool) {
	i := sort.Search(len(d.live), func(i int) bool { return d.live[i].base > p }) - 1
	if i >= 0 && p < d.live[i].base+d.live[i].size {
		return d.live[i], true
	}
	return region{}, false
}

// check fails unless the elems float32s at p lie inside one live
// allocation; what names the use. Nothing is touched when elems is 0.
func (d *Device) check(p gpu.Ptr, elems int64, what string) bool {
	if elems <= 0 {
		return true
	}
	at := uint64(p)
	r, ok := d.find(at)
	switch {
	case ok && elems <= int64((r.base+r.size-at)/4):
		return true
	case ok:
		d.fail(fmt.Errorf("hostdev: %s: %d floats at %#x run %d floats past the end of the allocation of %d floats at %#x",
			what, elems, at, elems-int64((r.base+r.size-at)/4), r.size/4, r.base))
	default:
		for base, size := range d.freed {
			if at >= base && at < base+size {
				d.fail(fmt.Errorf("hostdev: %s: %#x is in the allocation of %d floats at %#x, used after Free", what, at, size/4, base))
				return false
			}
		}
		d.fail(fmt.Errorf("hostdev: %s: %#x is not device memory (%d floats from it)", what, at, elems))
	}
	return false
}

// Alloc returns n zeroed floats of C heap.
func (d *Device) Alloc(n int) (gpu.Ptr, error) {
	defer d.mu.Unlock()
	if !d.begin() {
		return 0, d.err
	}
	if n < 1 {
		d.fail(fmt.Errorf("hostdev: Alloc(%d): want at least 1 float", n))
		return 0, d.err
	}
	p := uint64(C.hd_alloc(C.size_t(n)))
	if p == 0 {
		d.fail(fmt.Errorf("hostdev: Alloc(%d): out of memory", n))
		return 0, d.err
	}
	r := region{p, 4 * uint64(n)}
	i := sort.Search(len(d.live), func(i int) bool { return d.live[i].base > p })
	d.live = append(d.live, region{})
	copy(d.live[i+1:], d.live[i:])
	d.live[i] = r
	for base, size := range d.freed { // the C heap reused them
		if base < r.base+r.size && r.base < base+size {
			delete(d.freed, base)
		}
	}
	return gpu.Ptr(p), nil
}

// Free releases an allocation; freeing anything else (an address inside one,
// one freed already) is an error. After Close it does nothing: Close freed
// everything.
func (d *Device) Free(p gpu.Ptr) {
	defer d.mu.Unlock()
	d.mu.Lock()
	if d.closed || d.err != nil {
		return
	}
	at := uint64(p)
	i := sort.Search(len(d.live), func(i int) bool { return d.live[i].base >= at })
	if i == len(d.live) || d.live[i].base != at {
		if _, ok := d.freed[at]; ok {
			d.fail(fmt.Errorf("hostdev: Free(%#x): freed twice", at))
		} else if r, ok := d.find(at); ok {
			d.fail(fmt.Errorf("hostdev: Free(%#x): inside the allocation at %#x, not its start", at, r.base))
		} else {
			d.fail(fmt.Errorf("hostdev: Free(%#x): not an allocation", at))
		}
		return
	}
	d.freed[at] = d.live[i].size
	d.live = append(d.live[:i], d.live[i+1:]...)
	C.hd_free(C.uint64_t(at))
}

// Upload copies src into p.
func (d *Device) Upload(p gpu.Ptr, src []float32) {
	defer d.mu.Unlock()
	if !d.begin() || !d.check(p, int64(len(src)), "Upload") || len(src) == 0 {
		return
	}
	C.hd_upload(C.uint64_t(p), unsafe.Pointer(&src[0]), C.size_t(4*len(src)))
}

// Download copies len(dst) values of p into dst.
func (d *Device) Download(dst []float32, p gpu.Ptr) {
	defer d.mu.Unlock()
	if d.begin() {
		d.download(dst, p, "Download")
	}
}

func (d *Device) download(dst []float32, p gpu.Ptr, what string) {
	if !d.check(p, int64(len(dst)), what) || len(dst) == 0 {
		return
	}
	C.hd_download(unsafe.Pointer(&dst[0]), C.uint64_t(p), C.size_t(4*len(dst)))
}

// DownloadAsync is Download (done at once), into memory that must come from
// HostAlloc, as a CUDA device needs it page-locked.
func (d *Device) DownloadAsync(dst []float32, p gpu.Ptr) {
	defer d.mu.Unlock()
	if !d.begin() || len(dst) == 0 {
		return
	}
	at := uintptr(unsafe.Pointer(&dst[0]))
	for base, n := range d.host {
		if at >= base && at+4*uintptr(len(dst)) <= base+4*uintptr(n) {
			d.download(dst, p, "DownloadAsync")
			return
		}
	}
	d.fail(fmt.Errorf("hostdev: DownloadAsync into %d floats at %#x, not memory from HostAlloc", len(dst), at))
}

// HostAlloc returns n zeroed floats of C heap (what a GPU's would page-lock).
func (d *Device) HostAlloc(n int) ([]float32, error) {
	defer d.mu.Unlock()
	if !d.begin() {
		return nil, d.err
	}
	if n < 1 {
		d.fail(fmt.Errorf("hostdev: HostAlloc(%d): want at least 1 float", n))
		return nil, d.err
	}
	p := C.hd_host_alloc(C.size_t(n))
	if p == nil {
		d.fail(fmt.Errorf("hostdev: HostAlloc(%d): out of memory", n))
		return nil, d.err
	}
	d.host[uintptr(unsafe.Pointer(p))] = n
	return unsafe.Slice((*float32)(unsafe.Pointer(p)), n), nil
}

// FreeHost releases memory from HostAlloc (all of it: v must start where
// HostAlloc's slice did). After Close it does nothing.
func (d *Device) FreeHost(v []float32) {
	defer d.mu.Unlock()
	d.mu.Lock()
	if d.closed || d.err != nil {
		return
	}
	p := unsafe.SliceData(v)
	if _, ok := d.host[uintptr(unsafe.Pointer(p))]; !ok || p == nil {
		d.fail(fmt.Errorf("hostdev: FreeHost(%p): not memory from HostAlloc", p))
		return
	}
	delete(d.host, uintptr(unsafe.Pointer(p)))
	C.free(unsafe.Pointer(p))
}

// matrix is the number of floats a row-major rows x cols matrix with leading
// dimension ld spans; 0 when it is empty (nothing is read).
func matrix(rows, cols, ld int) int64 {
	if rows == 0 || cols == 0 {
		return 0
	}
	return int64(rows-1)*int64(ld) + int64(cols)
}

// blasDims checks the sizes and leading dimensions of a BLAS call: every
// size in [0, 2^31), each leading dimension at least its matrix's columns
// (and 1), as cblas requires.
func blasDims(what string, sizes []int, lds [][2]int) error {
	for _, s := range sizes {
		if s < 0 || s > math.MaxInt32 {
			return fmt.Errorf("hostdev: %s: size %d out of [0, 2^31)", what, s)
		}
	}
	for _, l := range lds { // {ld, cols}
		if l[0] < max(1, l[1]) || l[0] > math.MaxInt32 {
			return fmt.Errorf("hostdev: %s: leading dimension %d for %d columns", what, l[0], l[1])
		}
	}
	return nil
}

// Gemm is C = alpha*op(A)*op(B) + beta*C on row-major matrices, checked
// against the allocations.
func (d *Device) Gemm(transA, transB bool, m, n, k int, alpha float32, a gpu.Ptr, lda int, b gpu.Ptr, ldb int, beta float32, c gpu.Ptr, ldc int) {
	defer d.mu.Unlock()
	if !d.begin() {
		return
	}
	what := fmt.Sprintf("Gemm(transA %v, transB %v, m %d, n %d, k %d, lda %d, ldb %d, ldc %d)", transA, transB, m, n, k, lda, ldb, ldc)
	aRows, aCols := m, k
	if transA {
		aRows, aCols = k, m
	}
	bRows, bCols := k, n
	if transB {
		bRows, bCols = n, k
	}
	if err := blasDims(what, []int{m, n, k}, [][2]int{{lda, aCols}, {ldb, bCols}, {ldc, n}}); err != nil {
		d.fail(err)
		return
	}
	if !d.check(a, matrix(aRows, aCols, lda), what+" A") || !d.check(b, matrix(bRows, bCols, ldb), what+" B") ||
		!d.check(c, matrix(m, n, ldc), what+" C") || m == 0 || n == 0 {
		return
	}
	C.hd_sgemm(cbool(transA), cbool(transB), C.int(m), C.int(n), C.int(k), C.float(alpha), C.uint64_t(a), C.int(lda),
		C.uint64_t(b), C.int(ldb), C.float(beta), C.uint64_t(c), C.int(ldc))
}

// Gemv is y = alpha*op(A)*x + beta*y, A row-major m x n, checked against the
// allocations.
func (d *Device) Gemv(transA bool, m, n int, alpha float32, a gpu.Ptr, lda int, x gpu.Ptr, beta float32, y gpu.Ptr) {
	defer d.mu.Unlock()
	if !d.begin() {
		return
	}
	what := fmt.Sprintf("Gemv(transA %v, m %d, n %d, lda %d)", transA, m, n, lda)
	xLen, yLen := n, m
	if transA {
		xLen, yLen = m, n
	}
	if err := blasDims(what, []int{m, n}, [][2]int{{lda, n}}); err != nil {
		d.fail(err)
		return
	}
	if !d.check(a, matrix(m, n, lda), what+" A") || !d.check(x, int64(xLen), what+" x") ||
		!d.check(y, int64(yLen), what+" y") || m == 0 || n == 0 {
		return
	}
	C.hd_sgemv(cbool(transA), C.int(m), C.int(n), C.float(alpha), C.uint64_t(a), C.int(lda), C.uint64_t(x), C.float(beta), C.uint64_t(y))
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// Launch runs kernel name's host build over n items. Each argument must have
// the type the kernel's parameter takes (gpu.Ptr, int64 or float64: what a
// device launch copies as 8 bytes), the geometry must work out, and every
// pointer must cover what the kernel touches. Errors count the arguments
// after n from 0, as args does.
func (d *Device) Launch(name string, n int64, args ...any) {
	defer d.mu.Unlock()
	if !d.begin() {
		return
	}
	sig, ok := signatures[name]
	if !ok {
		d.fail(fmt.Errorf("hostdev: Launch(%q): no such kernel (have %v)", name, kernels.Names()))
		return
	}
	if len(args) != len(sig.kinds) {
		d.fail(fmt.Errorf("hostdev: Launch(%s): %d arguments after n, want %d", name, len(args), len(sig.kinds)))
		return
	}
	words, ints := make([]uint64, len(args)), make([]int64, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case gpu.Ptr:
			words[i] = uint64(v)
		case int64:
			words[i], ints[i] = uint64(v), v
		case float64:
			words[i] = math.Float64bits(v)
		}
		if got, want := kind(a), sig.kinds[i]; got != want {
			d.fail(fmt.Errorf("hostdev: Launch(%s): argument %d is %T, want %s", name, i, a, kindNames[want]))
			return
		}
	}
	if n > 0 {
		extents, err := sig.touches(n, ints)
		if err != nil {
			d.fail(fmt.Errorf("hostdev: Launch(%s) over %d items: %w", name, n, err))
			return
		}
		for _, e := range extents {
			if !d.check(gpu.Ptr(words[e.arg]), e.elems, fmt.Sprintf("Launch(%s) argument %d", name, e.arg)) {
				return
			}
		}
	}
	if err := kernels.Launch(name, n, words); err != nil {
		d.fail(fmt.Errorf("hostdev: %w", err))
	}
}

var kindNames = map[byte]string{'p': "gpu.Ptr", 'i': "int64", 'd': "float64"}

// kind is an argument's letter in a signature; 0 for any type a launch
// cannot pass (an int, a float32, ...).
func kind(a any) byte {
	switch a.(type) {
	case gpu.Ptr:
		return 'p'
	case int64:
		return 'i'
	case float64:
		return 'd'
	}
	return 0
}

// hostEvent is a mark: everything before it is done when it is made.
type hostEvent struct {
	dev *Device
	n   int64
}

// Mark returns a point in the issued work (all of it is done already).
func (d *Device) Mark() (gpu.Event, error) {
	defer d.mu.Unlock()
	if !d.begin() {
		return nil, d.err
	}
	d.marks++
	return hostEvent{d, d.marks}, nil
}

// Wait returns the sticky error; an event of another device is one.
func (d *Device) Wait(e gpu.Event) error {
	defer d.mu.Unlock()
	if d.begin() {
		if h, ok := e.(hostEvent); !ok || h.dev != d {
			d.fail(fmt.Errorf("hostdev: Wait on %T %v, not a mark of this device", e, e))
		}
	}
	return d.err
}

// Sync returns the first error.
func (d *Device) Sync() error {
	defer d.mu.Unlock()
	d.begin()
	return d.err
}

// Err returns the first error.
func (d *Device) Err() error {
	defer d.mu.Unlock()
	d.mu.Lock()
	return d.err
}

// Describe names the device.
func (d *Device) Describe() string { return "host" }

// Close frees every allocation, device and host; later calls fail, except
// Free, FreeHost and Close, which do nothing.
func (d *Device) Close() error {
	defer d.mu.Unlock()
	d.mu.Lock()
	if d.closed {
		return nil
	}
	d.closed = true
	for _, r := range d.live {
		C.hd_free(C.uint64_t(r.base))
	}
	for p := range d.host {
		C.hd_free(C.uint64_t(p))
	}
	d.live, d.freed, d.host = nil, nil, nil
	return nil
}
