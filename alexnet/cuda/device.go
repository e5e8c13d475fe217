//go:build gpu

package cuda

/*
#cgo LDFLAGS: -lcuda -lcublas
#include <stdint.h>
#include <stdlib.h>
#include <cuda.h>
#include <cublas_v2.h>

// cuName is cuGetErrorName's answer, or "unknown".
static const char *cuName(CUresult r) {
	const char *s = 0;
	if (cuGetErrorName(r, &s) != CUDA_SUCCESS || s == 0) {
		return "unknown";
	}
	return s;
}

// hostAlloc allocates page-locked host memory: gorgonia.org/cu v0.9.6 binds
// cuMemFreeHost but not cuMemAllocHost.
static CUresult hostAlloc(void **p, size_t bytes) { return cuMemAllocHost(p, bytes); }

// jitLog loads ptx once more only to get the JIT compiler's error log, which
// cu.LoadData does not ask for. It is called after a failed load.
static CUresult jitLog(const char *ptx, char *log, size_t cap) {
	CUjit_option opts[2] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
	void *vals[2] = {log, (void *)(uintptr_t)cap};
	CUmodule m;
	log[0] = 0;
	CUresult r = cuModuleLoadDataEx(&m, ptx, 2, opts, vals);
	if (r == CUDA_SUCCESS) {
		cuModuleUnload(m);
	}
	log[cap - 1] = 0;
	return r;
}

// blasSetup puts a cuBLAS handle on the legacy default stream (NULL), where
// everything of this package runs, and sets its math mode to
// CUBLAS_DEFAULT_MATH: FP32 products in FP32 (no TF32 tensor cores, which
// cuBLAS uses only when CUBLAS_TF32_TENSOR_OP_MATH is asked for). It reads the
// mode back into got.
static cublasStatus_t blasSetup(cublasHandle_t h, cublasMath_t *got) {
	cublasStatus_t s = cublasSetStream(h, 0);
	if (s != CUBLAS_STATUS_SUCCESS) {
		return s;
	}
	s = cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
	if (s != CUBLAS_STATUS_SUCCESS) {
		return s;
	}
	return cublasGetMathMode(h, got);
}
*/
import "C"

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	gblas "gonum.org/v1/gonum/blas"
	"gorgonia.org/cu"
	cublas "gorgonia.org/cu/blas"

	"github.com/alexring/alexring/alexnet/cuda/probe"
	"github.com/alexring/alexring/alexnet/gpu"
	"github.com/alexring/alexring/alexnet/gpu/kernels"
)

// Device is one CUDA device behind gpu.Device: its primary context, our
// kernels' module, a cuBLAS handle, and everything issued in order on the
// legacy default stream (see the package doc for why that stream).
//
// Every method may be called from any goroutine: each takes the device's
// mutex, locks its goroutine to its OS thread and makes the context current
// there for the duration of the call (a CUDA context is current per thread;
// cuCtxSetCurrent is a thread-local store, cheap beside the call it guards).
// The mutex also serialises the use of the cuBLAS handle, which cuBLAS
// requires. Wait and Sync block without holding the mutex, so one goroutine
// may wait for a mark while another issues work.
//
// Errors are sticky: the first failure is kept, every later call except
// Free, FreeHost and Close does nothing, and Err, Sync and Wait report it.
type Device struct {
	ordinal      int
	dev          cu.Device
	name         string
	major, minor int
	arch         string // the PTX loaded (kernels.PTX)
	ctx          cu.CUContext
	mod          cu.Module
	blas         *cublas.Standard

	mu     sync.Mutex
	err    error
	closed bool
	fns    map[string]cu.Function
	host   map[unsafe.Pointer]int // pinned allocations: address -> floats
	sizes  map[gpu.Ptr]int64      // device allocations: address -> bytes
	inUse  int64                  // bytes allocated now, and at most
	peak   int64
	events map[*event]struct{} // marks not yet waited for
}

var _ gpu.Device = (*Device)(nil)

// ErrNoDevice is Open's error for an ordinal that is not a device: a bad
// setting (a command exits 2), not a failure.
var ErrNoDevice = errors.New("cuda: no device")

// errClosed is the sticky error of a closed device.
var errClosed = errors.New("cuda: device closed")

// cuError is a failed CUDA driver call's result, by name.
func cuError(r C.CUresult) error {
	return fmt.Errorf("%s (%d)", C.GoString(C.cuName(r)), int(r))
}

// Open opens device ordinal: it retains the device's primary context (the one
// the CUDA runtime, and so cuBLAS and cuDNN, use too), loads our kernels for
// its compute capability and creates the cuBLAS handle.
func Open(ordinal int) (*Device, error) {
	if n := probe.Devices(); ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("%w %d: this machine has %s", ErrNoDevice, ordinal, deviceCount(n))
	}
	d := &Device{
		ordinal: ordinal,
		fns:     map[string]cu.Function{},
		host:    map[unsafe.Pointer]int{},
		sizes:   map[gpu.Ptr]int64{},
		events:  map[*event]struct{}{},
	}
	var err error
	if d.dev, err = cu.GetDevice(ordinal); err != nil {
		return nil, fmt.Errorf("cuda: device %d: %w", ordinal, err)
	}
	if d.name, err = d.dev.Name(); err != nil {
		return nil, fmt.Errorf("cuda: device %d: its name: %w", ordinal, err)
	}
	if d.major, d.minor, err = d.dev.ComputeCapability(); err != nil {
		return nil, fmt.Errorf("cuda: device %d: its compute capability: %w", ordinal, err)
	}
	arch, ptx, err := kernels.PTX(d.major, d.minor)
	if err != nil {
		return nil, fmt.Errorf("cuda: device %d (%s): %w", ordinal, d.name, err)
	}
	d.arch = arch

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if d.ctx, err = d.dev.RetainPrimaryCtx(); err != nil {
		return nil, fmt.Errorf("cuda: device %d: retaining its primary context: %w", ordinal, err)
	}
	if err := d.open(ptx); err != nil {
		d.release()
		return nil, fmt.Errorf("cuda: device %d (%s): %w", ordinal, d.name, err)
	}
	return d, nil
}

// deviceCount says how many devices there are and their ordinals.
func deviceCount(n int) string {
	switch n {
	case 0:
		return "no CUDA device"
	case 1:
		return "1 CUDA device (0)"
	}
	return fmt.Sprintf("%d CUDA devices (0-%d)", n, n-1)
}

// open does Open's work in the context, current on the locked thread.
func (d *Device) open(ptx []byte) error {
	if err := cu.SetCurrentContext(d.ctx); err != nil {
		return fmt.Errorf("making the primary context current: %w", err)
	}
	mod, err := cu.LoadData(string(ptx))
	if err != nil {
		return fmt.Errorf("loading the %s kernels: %w%s", d.arch, err, jitLog(ptx))
	}
	d.mod = mod
	for _, name := range kernels.Names() {
		if _, err := d.function(name); err != nil {
			return err
		}
	}
	b := new(cublas.Standard)
	if err := b.Init(); err != nil {
		return fmt.Errorf("cuBLAS: %w", err)
	}
	d.blas = b
	// cu/blas does not export its handle. Standard's first field is the
	// cublasHandle_t (gorgonia.org/cu v0.9.6, blas/implementation.go, pinned
	// in go.mod): read it to set the stream and the math mode ourselves.
	h := *(*C.cublasHandle_t)(unsafe.Pointer(b))
	if h == nil {
		return errors.New("cuBLAS: the handle read from cu/blas.Standard is nil (has its layout changed?)")
	}
	var mode C.cublasMath_t
	if s := C.blasSetup(h, &mode); s != C.CUBLAS_STATUS_SUCCESS {
		return fmt.Errorf("cuBLAS: setting the stream and the math mode: %w", cublas.Status(s))
	}
	if mode != C.CUBLAS_DEFAULT_MATH {
		return fmt.Errorf("cuBLAS: math mode %d after setting CUBLAS_DEFAULT_MATH", int(mode))
	}
	return nil
}

// jitLog is the JIT compiler's error log for ptx, as ": log" (or "").
func jitLog(ptx []byte) string {
	src := C.CString(string(ptx))
	defer C.free(unsafe.Pointer(src))
	var buf [8192]C.char
	if C.jitLog(src, &buf[0], C.size_t(len(buf))) == C.CUDA_SUCCESS {
		return ""
	}
	if log := strings.TrimSpace(C.GoString(&buf[0])); log != "" {
		return ": " + log
	}
	return ""
}

// function returns kernel name, looked up in the module once.
func (d *Device) function(name string) (cu.Function, error) {
	if fn, ok := d.fns[name]; ok {
		return fn, nil
	}
	fn, err := d.mod.Function(name)
	if err != nil {
		return cu.Function{}, fmt.Errorf("no kernel %q in the %s module: %w", name, d.arch, err)
	}
	d.fns[name] = fn
	return fn, nil
}

// release undoes Open: the cuBLAS handle, the module, the context.
func (d *Device) release() error {
	var errs []error
	if d.blas != nil {
		if err := d.blas.Close(); err != nil {
			errs = append(errs, fmt.Errorf("destroying the cuBLAS handle: %w", err))
		}
		d.blas = nil
	}
	if d.mod != (cu.Module{}) {
		if err := d.mod.Unload(); err != nil {
			errs = append(errs, fmt.Errorf("unloading the kernels: %w", err))
		}
		d.mod = cu.Module{}
	}
	if err := d.dev.ReleasePrimaryCtx(); err != nil {
		errs = append(errs, fmt.Errorf("releasing the primary context: %w", err))
	}
	// Leave no released context current on this thread.
	if err := cu.SetCurrentContext(cu.CUContext{}); err != nil {
		errs = append(errs, fmt.Errorf("unbinding the context: %w", err))
	}
	return errors.Join(errs...)
}

// enter holds the device and makes its context current on the calling
// goroutine's thread; leave undoes it. A failure to make it current is
// recorded. Callers check d.err (or d.closed) before issuing work.
func (d *Device) enter() {
	d.mu.Lock()
	runtime.LockOSThread()
	if !d.closed {
		if err := cu.SetCurrentContext(d.ctx); err != nil {
			d.fail("making the context current", err)
		}
	}
}

func (d *Device) leave() {
	runtime.UnlockOSThread()
	d.mu.Unlock()
}

// fail records the first error, naming what failed.
func (d *Device) fail(what string, err error) {
	if d.err == nil {
		d.err = fmt.Errorf("cuda:%d: %s: %w", d.ordinal, what, err)
	}
}

// checkBlas moves cu/blas's sticky error into the device's.
func (d *Device) checkBlas(what string) {
	if err := d.blas.Err(); err != nil {
		d.fail(what, err)
	}
}

// Ordinal, Name and Capability describe the device.
func (d *Device) Ordinal() int                   { return d.ordinal }
func (d *Device) Name() string                   { return d.name }
func (d *Device) Capability() (major, minor int) { return d.major, d.minor }

// Describe is "cuda:K NAME (sm_XY)", and the PTX's target when it is older
// than the device (the driver compiles it for the device).
func (d *Device) Describe() string {
	sm := fmt.Sprintf("sm_%d%d", d.major, d.minor)
	if sm == d.arch {
		return fmt.Sprintf("cuda:%d %s (%s)", d.ordinal, d.name, sm)
	}
	return fmt.Sprintf("cuda:%d %s (%s, kernels for %s)", d.ordinal, d.name, sm, d.arch)
}

// Alloc returns n zeroed floats (or int32s) of device memory.
func (d *Device) Alloc(n int) (gpu.Ptr, error) {
	d.enter()
	defer d.leave()
	return d.allocLocked(n)
}

// allocLocked is Alloc for a caller that entered the device.
func (d *Device) allocLocked(n int) (gpu.Ptr, error) {
	if d.err != nil {
		return 0, d.err
	}
	if n < 1 {
		d.fail("Alloc", fmt.Errorf("%d floats; want at least 1", n))
		return 0, d.err
	}
	bytes := 4 * int64(n)
	p, err := cu.MemAlloc(bytes)
	if err != nil {
		d.fail(fmt.Sprintf("allocating %d bytes (%d in use)", bytes, d.inUse), err)
		return 0, d.err
	}
	if err := cu.MemsetD32(p, 0, int64(n)); err != nil {
		cu.MemFree(p)
		d.fail("zeroing new memory", err)
		return 0, d.err
	}
	ptr := gpu.Ptr(p)
	d.sizes[ptr] = bytes
	d.inUse += bytes
	d.peak = max(d.peak, d.inUse)
	return ptr, nil
}

// Free releases memory from Alloc. It runs after an error too; after Close,
// which freed everything, it does nothing.
func (d *Device) Free(p gpu.Ptr) {
	d.enter()
	defer d.leave()
	d.freeLocked(p)
}

// freeLocked is Free for a caller that entered the device.
func (d *Device) freeLocked(p gpu.Ptr) {
	if p == 0 || d.closed {
		return
	}
	bytes, ok := d.sizes[p]
	if !ok {
		d.fail("Free", fmt.Errorf("%#x is not an allocation of this device", uint64(p)))
		return
	}
	delete(d.sizes, p)
	d.inUse -= bytes
	if err := cu.MemFree(cu.DevicePtr(p)); err != nil {
		d.fail("freeing device memory", err)
	}
}

// Allocated is the device memory held through Alloc now and at most, in
// bytes (cuBLAS's and cuDNN's own workspaces not included).
func (d *Device) Allocated() (now, peak int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inUse, d.peak
}

// MemInfo is the driver's free and total memory of the device.
func (d *Device) MemInfo() (free, total int64, err error) {
	d.enter()
	defer d.leave()
	if d.err != nil {
		return 0, 0, d.err
	}
	return cu.MemInfo()
}

// HostAlloc returns n zeroed page-locked floats (cuMemAllocHost, portable
// to this context only), the memory DownloadAsync copies into.
func (d *Device) HostAlloc(n int) ([]float32, error) {
	d.enter()
	defer d.leave()
	if d.err != nil {
		return nil, d.err
	}
	if n < 1 {
		d.fail("HostAlloc", fmt.Errorf("%d floats; want at least 1", n))
		return nil, d.err
	}
	var p unsafe.Pointer
	if r := C.hostAlloc(&p, C.size_t(4*n)); r != C.CUDA_SUCCESS {
		d.fail(fmt.Sprintf("allocating %d bytes of pinned host memory", 4*n), cuError(r))
		return nil, d.err
	}
	v := unsafe.Slice((*float32)(p), n)
	clear(v)
	d.host[p] = n
	return v, nil
}

// FreeHost releases memory from HostAlloc; it runs after an error too.
func (d *Device) FreeHost(v []float32) {
	if len(v) == 0 {
		return
	}
	d.enter()
	defer d.leave()
	if d.closed {
		return
	}
	p := unsafe.Pointer(&v[0])
	if _, ok := d.host[p]; !ok {
		d.fail("FreeHost", errors.New("the slice does not start a HostAlloc allocation"))
		return
	}
	delete(d.host, p)
	if err := cu.MemFreeHost(p); err != nil {
		d.fail("freeing pinned host memory", err)
	}
}

// pinned reports whether v lies inside one HostAlloc allocation.
func (d *Device) pinned(v []float32) bool {
	lo := uintptr(unsafe.Pointer(&v[0]))
	hi := lo + 4*uintptr(len(v))
	for p, n := range d.host {
		if base := uintptr(p); lo >= base && hi <= base+4*uintptr(n) {
			return true
		}
	}
	return false
}

// Upload copies src into p. cuMemcpyHtoD is ordered on the legacy stream
// after the work issued before it, and returns once src has been read (from
// pageable memory it is staged first), so src may be reused at once.
func (d *Device) Upload(p gpu.Ptr, src []float32) {
	if len(src) == 0 {
		return
	}
	d.enter()
	defer d.leave()
	if d.err != nil {
		return
	}
	if err := cu.MemcpyHtoD(cu.DevicePtr(p), unsafe.Pointer(&src[0]), 4*int64(len(src))); err != nil {
		d.fail(fmt.Sprintf("Upload of %d floats", len(src)), err)
	}
}

// Download copies len(dst) values of p into dst: cuMemcpyDtoH returns once
// the copy, and so the work issued before it, is done.
func (d *Device) Download(dst []float32, p gpu.Ptr) {
	if len(dst) == 0 {
		return
	}
	d.enter()
	defer d.leave()
	if d.err != nil {
		return
	}
	if err := cu.MemcpyDtoH(unsafe.Pointer(&dst[0]), cu.DevicePtr(p), 4*int64(len(dst))); err != nil {
		d.fail(fmt.Sprintf("Download of %d floats", len(dst)), err)
	}
}

// DownloadAsync issues the copy of len(dst) values of p into dst, which must
// lie in HostAlloc memory (the driver writes it after the call returns, so
// Go memory would break cgo's rules); it is done when a later Wait or Sync
// returns.
func (d *Device) DownloadAsync(dst []float32, p gpu.Ptr) {
	if len(dst) == 0 {
		return
	}
	d.enter()
	defer d.leave()
	if d.err != nil {
		return
	}
	if !d.pinned(dst) {
		d.fail("DownloadAsync", errors.New("the destination is not HostAlloc memory"))
		return
	}
	if err := cu.MemcpyDtoHAsync(unsafe.Pointer(&dst[0]), cu.DevicePtr(p), 4*int64(len(dst)), cu.NoStream); err != nil {
		d.fail(fmt.Sprintf("DownloadAsync of %d floats", len(dst)), err)
	}
}

// devSlice is a slice header over n floats of device memory at p, for
// cu/blas, which takes []float32 and passes &s[0] to cuBLAS as the device
// pointer. It must never be indexed from Go. Reinterpreting the address's
// bits (rather than converting a uintptr) keeps vet's unsafeptr check quiet;
// the GC ignores pointers outside the Go heap.
func devSlice(p gpu.Ptr, n int) []float32 {
	if p == 0 {
		return nil // refused by the callers: unsafe.Slice(nil, n) panics
	}
	return unsafe.Slice(*(**float32)(unsafe.Pointer(&p)), max(n, 1))
}

// extent is the span, in elements, of a rows x cols row-major matrix with
// leading dimension ld.
func extent(rows, cols, ld int) int {
	if rows == 0 || cols == 0 {
		return 0
	}
	return (rows-1)*ld + cols
}

// Gemm is C = alpha*op(A)*op(B) + beta*C on row-major matrices. cuBLAS is
// column-major, where a row-major matrix reads as its transpose: row-major
// C = op(A)op(B) is column-major C^T = op(B)^T op(A)^T, so cuBLAS gets the
// operands swapped, n and m swapped, and the same leading dimensions.
// cu/blas's Sgemm passes its arguments straight to cublasSgemm.
func (d *Device) Gemm(transA, transB bool, m, n, k int, alpha float32, a gpu.Ptr, lda int, b gpu.Ptr, ldb int, beta float32, c gpu.Ptr, ldc int) {
	d.enter()
	defer d.leave()
	if d.err != nil {
		return
	}
	// A is m x k (k x m when transposed), B k x n (n x k), C m x n, row-major.
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	if m < 0 || n < 0 || k < 0 || lda < max(1, ac) || ldb < max(1, bc) || ldc < max(1, n) {
		d.fail("Gemm", fmt.Errorf("m=%d n=%d k=%d lda=%d ldb=%d ldc=%d (transA %v, transB %v)", m, n, k, lda, ldb, ldc, transA, transB))
		return
	}
	if m == 0 || n == 0 {
		return
	}
	if a == 0 || b == 0 || c == 0 {
		d.fail("Gemm", fmt.Errorf("a null device pointer (a %#x, b %#x, c %#x)", a, b, c))
		return
	}
	d.blas.Sgemm(op(transB), op(transA), n, m, k, alpha,
		devSlice(b, extent(br, bc, ldb)), ldb,
		devSlice(a, extent(ar, ac, lda)), lda,
		beta, devSlice(c, extent(m, n, ldc)), ldc)
	d.checkBlas(fmt.Sprintf("Gemm %dx%dx%d", m, n, k))
}

// Gemv is y = alpha*op(A)*x + beta*y, A row-major m x n with leading
// dimension lda, which cuBLAS reads as the column-major n x m matrix A^T: so
// op(A) = A is cuBLAS's transposed product and op(A) = A^T its plain one.
func (d *Device) Gemv(transA bool, m, n int, alpha float32, a gpu.Ptr, lda int, x gpu.Ptr, beta float32, y gpu.Ptr) {
	d.enter()
	defer d.leave()
	if d.err != nil {
		return
	}
	if m < 0 || n < 0 || lda < max(1, n) {
		d.fail("Gemv", fmt.Errorf("m=%d n=%d lda=%d", m, n, lda))
		return
	}
	xn, yn := n, m
	if transA {
		xn, yn = m, n
	}
	if yn == 0 {
		return
	}
	if a == 0 || x == 0 || y == 0 {
		d.fail("Gemv", fmt.Errorf("a null device pointer (a %#x, x %#x, y %#x)", a, x, y))
		return
	}
	d.blas.Sgemv(op(!transA), n, m, alpha, devSlice(a, extent(m, n, lda)), lda,
		devSlice(x, xn), 1, beta, devSlice(y, yn), 1)
	d.checkBlas(fmt.Sprintf("Gemv %dx%d", m, n))
}

func op(trans bool) gblas.Transpose {
	if trans {
		return gblas.Trans
	}
	return gblas.NoTrans
}

// Launch runs kernel name over n items with kernels.Geometry's grid. The
// kernel's parameters are n and then args, each 8 bytes: Function.Launch
// copies 8 bytes from each pointer it is given, so each value is widened to
// a uint64 first. A kernel's own failure shows at the next Sync, Wait or copy.
func (d *Device) Launch(name string, n int64, args ...any) {
	d.enter()
	defer d.leave()
	if d.err != nil {
		return
	}
	fn, err := d.function(name) // first, so that a wrong name is an error even with nothing to do
	if err != nil {
		d.fail("Launch", err)
		return
	}
	grid, block := kernels.Geometry(n)
	if grid == 0 {
		return
	}
	vals := make([]uint64, 1+len(args))
	vals[0] = uint64(n)
	for i, a := range args {
		switch v := a.(type) {
		case gpu.Ptr:
			vals[1+i] = uint64(v)
		case int64:
			vals[1+i] = uint64(v)
		case float64:
			vals[1+i] = math.Float64bits(v)
		default:
			d.fail("Launch "+name, fmt.Errorf("argument %d is a %T; want a gpu.Ptr, an int64 or a float64", i, a))
			return
		}
	}
	params := make([]unsafe.Pointer, len(vals))
	for i := range vals {
		params[i] = unsafe.Pointer(&vals[i])
	}
	if err := fn.Launch(grid, 1, 1, block, 1, 1, 0, cu.NoStream, params); err != nil {
		d.fail(fmt.Sprintf("Launch %s over %d items", name, n), err)
	}
}

// event is a mark: a CUDA event recorded on the stream.
type event struct {
	ev   cu.Event
	done bool
}

// Mark records an event on the stream. The event blocks the thread that
// waits for it (CU_EVENT_BLOCKING_SYNC) instead of spinning on a core the
// host wants for the ring meanwhile; Wait destroys it.
func (d *Device) Mark() (gpu.Event, error) {
	d.enter()
	defer d.leave()
	if d.err != nil {
		return nil, d.err
	}
	ev, err := cu.MakeEvent(cu.BlockingSyncEvent | cu.DisableTiming)
	if err != nil {
		d.fail("creating an event", err)
		return nil, d.err
	}
	if err := ev.Record(cu.NoStream); err != nil {
		cu.DestroyEvent(&ev)
		d.fail("recording an event", err)
		return nil, d.err
	}
	e := &event{ev: ev}
	d.events[e] = struct{}{}
	return e, nil
}

// Wait blocks until the work issued before mark e is done, then releases e
// (waiting for it again returns at once). It does not hold the device while
// it blocks.
func (d *Device) Wait(e gpu.Event) error {
	ev, ok := e.(*event)
	if !ok || ev == nil {
		return fmt.Errorf("cuda:%d: Wait on %T, not a mark of this device", d.ordinal, e)
	}
	d.mu.Lock()
	_, mine := d.events[ev]
	err, closed, done := d.err, d.closed, ev.done
	d.mu.Unlock()
	switch {
	case done:
		return err
	case !mine:
		return fmt.Errorf("cuda:%d: Wait on a mark of another device", d.ordinal)
	case closed:
		return errClosed
	}

	runtime.LockOSThread()
	serr := cu.SetCurrentContext(d.ctx)
	if serr == nil {
		serr = ev.ev.Synchronize()
	}
	runtime.UnlockOSThread()

	d.enter()
	defer d.leave()
	if serr != nil {
		d.fail("waiting for a mark", serr)
	}
	if _, ok := d.events[ev]; ok && !d.closed {
		delete(d.events, ev)
		if err := cu.DestroyEvent(&ev.ev); err != nil {
			d.fail("destroying an event", err)
		}
	}
	ev.done = true
	return d.err
}

// Sync waits for all issued work (cuCtxSynchronize: ours, cuBLAS's and
// cuDNN's) and returns the first error. It does not hold the device while it
// blocks. It waits even after an error: most sticky errors are ours (a bad
// argument), the GPU still runs what was issued before, and the callers free
// memory and hand vectors back once Sync returns.
func (d *Device) Sync() error {
	d.mu.Lock()
	err, closed := d.err, d.closed
	d.mu.Unlock()
	if closed {
		return cmp.Or(err, errClosed)
	}
	runtime.LockOSThread()
	serr := cu.SetCurrentContext(d.ctx)
	if serr == nil {
		serr = cu.Synchronize()
	}
	runtime.UnlockOSThread()

	d.mu.Lock()
	defer d.mu.Unlock()
	if serr != nil {
		d.fail("Sync", serr)
	}
	return d.err
}

// Err is the first error, or nil.
func (d *Device) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Close waits for the issued work, releases the marks not waited for and
// the memory still allocated (the CUDA runtime under cuBLAS and cuDNN keeps
// the primary context, and so its memory, alive), then the cuBLAS handle,
// the module and the context. It returns what failed while closing; closing
// twice is safe.
func (d *Device) Close() error {
	d.enter()
	defer d.leave()
	if d.closed {
		return nil
	}
	var errs []error
	if err := cu.Synchronize(); err != nil {
		errs = append(errs, fmt.Errorf("waiting for the issued work: %w", err))
	}
	for e := range d.events {
		if err := cu.DestroyEvent(&e.ev); err != nil {
			errs = append(errs, fmt.Errorf("destroying an event: %w", err))
		}
		e.done = true
	}
	clear(d.events)
	for p := range d.host {
		if err := cu.MemFreeHost(p); err != nil {
			errs = append(errs, fmt.Errorf("freeing pinned host memory: %w", err))
		}
	}
	clear(d.host)
	for p := range d.sizes {
		if err := cu.MemFree(cu.DevicePtr(p)); err != nil {
			errs = append(errs, fmt.Errorf("freeing device memory: %w", err))
		}
	}
	clear(d.sizes)
	d.inUse = 0
	if err := d.release(); err != nil {
		errs = append(errs, err)
	}
	d.closed = true
	if d.err == nil {
		d.err = errClosed
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cuda:%d: closing: %w", d.ordinal, err)
	}
	return nil
}
