//go:build !purego && !nodnnl

package onednn

// #cgo LDFLAGS: -ldl
// #include <stdlib.h>
// #include "conv.h"
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"
)

// Available says whether this build has the binding (the library itself is
// opened at first use: Runtime says whether it is there).
const Available = true

// calls carries every call into oneDNN to the one OS thread that makes them
// (OpenMP's thread count and pool belong to the calling thread; oneDNN sizes
// a primitive's work to the threads of the thread that creates it).
var (
	startOnce sync.Once
	calls     chan func()
	threads   int
	startErr  error
)

// Library is the shared library loaded on first use; the environment's
// ALEXRING_DNNL_LIBRARY, when set, names another (a path or a soname).
const Library = "libdnnl.so.2"

// openMPDefaults are the OpenMP settings oneDNN's threads start with unless
// the environment sets them (OpenMP reads them once, as it loads with
// oneDNN). libgomp's threads otherwise spin for a while after each parallel
// region, on the cores where the Go code between the convolutions (ReLU,
// pooling, the classifier, Adam) runs next: with 2 threads on 2 cores the
// seed model's step measured 77-82 img/s spinning, 100-101 passive.
var openMPDefaults = map[string]string{"OMP_WAIT_POLICY": "passive"}

func start() error {
	startOnce.Do(func() {
		threads = runtime.GOMAXPROCS(0)
		calls = make(chan func())
		ready := make(chan error)
		go func() {
			runtime.LockOSThread() // for good: the thread is oneDNN's
			if err := load(); err != nil {
				ready <- err
				return
			}
			if st := C.al_init(C.int(threads)); st != C.dnnl_success {
				ready <- fmt.Errorf("onednn: engine: %s", statusText(st))
				return
			}
			ready <- nil
			for f := range calls {
				f()
			}
		}()
		startErr = <-ready
	})
	return startErr
}

// load opens the library with openMPDefaults in the environment, which it
// then restores.
func load() error {
	var unset []string
	for k, v := range openMPDefaults {
		if _, ok := os.LookupEnv(k); !ok {
			os.Setenv(k, v)
			unset = append(unset, k)
		}
	}
	defer func() {
		for _, k := range unset {
			os.Unsetenv(k)
		}
	}()
	name := Library
	if v := os.Getenv("ALEXRING_DNNL_LIBRARY"); v != "" {
		name = v
	}
	lib := C.CString(name)
	defer C.free(unsafe.Pointer(lib))
	var errBuf [512]C.char
	if C.al_load(lib, &errBuf[0], C.size_t(len(errBuf))) == 0 {
		return fmt.Errorf("onednn: %s (Debian: apt-get install libdnnl2)", C.GoString(&errBuf[0]))
	}
	return nil
}

// do runs f on oneDNN's thread.
func do(f func()) error {
	if err := start(); err != nil {
		return err
	}
	done := make(chan struct{})
	calls <- func() { f(); close(done) }
	<-done
	return nil
}

// ReduceThreads is the thread count of every backward weights primitive,
// whatever Info.Threads is. It splits the sums over the batch and the image
// into pieces (oneDNN's JIT kernels split by the thread count they are
// created for, then add the pieces), so a fixed count gives the same bits
// on a process of any core count: ranks that differ in GOMAXPROCS, or a
// job resumed with other workers, compute the same gradients. Forward and
// backward data sum each value in one thread and take Info.Threads. It is
// alexnet's fixed split of the same sums on the im2col path.
const ReduceThreads = 4

// Info is what runs the convolutions.
type Info struct {
	Version string // "2.6.3"
	ISA     string // the ISA oneDNN's JIT dispatches to: "avx512_core_amx", "avx2", ...
	Threads int    // OpenMP threads per primitive
	Runtime string // "OpenMP"
}

// Runtime starts oneDNN (on first use) and says what it runs on.
func Runtime() (Info, error) {
	var in Info
	err := do(func() {
		var major, minor, patch C.int
		var rt C.unsigned
		C.al_version(&major, &minor, &patch, &rt)
		in = Info{
			Version: fmt.Sprintf("%d.%d.%d", major, minor, patch),
			ISA:     C.GoString(C.al_isa()),
			Threads: int(C.al_max_threads()),
			Runtime: runtimeName(uint(rt)),
		}
	})
	return in, err
}

func runtimeName(r uint) string {
	switch r {
	case C.DNNL_RUNTIME_OMP:
		return "OpenMP"
	case C.DNNL_RUNTIME_TBB:
		return "TBB"
	case C.DNNL_RUNTIME_SEQ:
		return "sequential"
	case C.DNNL_RUNTIME_THREADPOOL:
		return "threadpool"
	}
	return fmt.Sprintf("runtime %#x", r)
}

// Memory is what oneDNN holds beyond the caller's tensors: the arena of the
// temporary layouts (shared by every layer) and the buffers the layers keep
// between calls (x and dy in the primitives' layouts). oneDNN's own
// scratchpad is not counted.
func Memory() (arena, kept int64) {
	do(func() { arena, kept = int64(C.al_arena_bytes()), int64(C.al_persistent_bytes()) })
	return arena, kept
}

// Shape is one convolution: square images and kernels, PyTorch's
// symmetric zero padding.
type Shape struct {
	Batch, In, Out, Side, OutSide, Kernel, Stride, Pad int
	// Train builds the backward primitives too (and forward for training);
	// DiffSrc also backward data (not for a layer on the images).
	Train, DiffSrc bool
	// Plain computes in the caller's layouts (NCHW, OIHW), with no reorder,
	// in whatever implementation oneDNN has for them.
	Plain bool
}

func (s Shape) String() string {
	return fmt.Sprintf("%dx%dx%d->%dx%d k%d s%d p%d b%d", s.In, s.Side, s.Side, s.Out, s.OutSide, s.Kernel, s.Stride, s.Pad, s.Batch)
}

func (s Shape) sizes() (x, w, b, y int) {
	return s.Batch * s.In * s.Side * s.Side, s.Out * s.In * s.Kernel * s.Kernel, s.Out, s.Batch * s.Out * s.OutSide * s.OutSide
}

// Conv is one layer's primitives. Its methods may be called from any
// goroutine (they run in turn on oneDNN's thread).
type Conv struct {
	shape Shape
	h     *handle
	// Impl names each primitive's implementation ("jit:avx512_core",
	// "gemm:jit", ...; empty for one not built), Layouts its tensors'
	// layouts (source/weights/destination in oneDNN's notation, "aBcd16b").
	Impl, Layouts [3]string
	// Reorders is how many layout changes a training step of the layer runs.
	Reorders int
	// Mem is what the layer holds in C memory beyond the caller's tensors.
	Mem ConvMemory
}

// ConvMemory is a layer's C memory, in bytes: Kept is its own (x and dy in
// the primitives' layouts, kept from one call to the next), Temp what one of
// its calls needs of the arena that all layers share, Scratch the largest
// scratchpad of its primitives (oneDNN's library keeps one, for the largest
// primitive it ran).
type ConvMemory struct{ Kept, Temp, Scratch int64 }

// Footprint is what the layers of shapes hold in C memory together: their
// kept buffers, and the largest arena and scratchpad of any one (both are
// shared). It creates each layer's primitives to ask and frees them; the
// buffers they allocate are never touched, so they cost no resident memory.
func Footprint(shapes []Shape) (ConvMemory, error) {
	var f ConvMemory
	for _, s := range shapes {
		c, err := NewConv(s)
		if err != nil {
			return ConvMemory{}, err
		}
		f.Kept += c.Mem.Kept
		f.Temp, f.Scratch = max(f.Temp, c.Mem.Temp), max(f.Scratch, c.Mem.Scratch)
		c.Close()
	}
	return f, nil
}

// The primitives, in Impl's order.
const (
	Forward = iota
	BackwardData
	BackwardWeights
)

type handle struct{ c *C.al_conv }

// ErrNotAvailable is NewConv's error in a build without oneDNN.
var ErrNotAvailable = errors.New("onednn: this build has no oneDNN (built with -tags purego or nodnnl)")

// NewConv creates a layer's primitives.
func NewConv(s Shape) (*Conv, error) {
	if s.Batch < 1 || s.In < 1 || s.Out < 1 || s.Kernel < 1 || s.Stride < 1 || s.Pad < 0 || s.OutSide != (s.Side+2*s.Pad-s.Kernel)/s.Stride+1 || s.OutSide < 1 {
		return nil, fmt.Errorf("onednn: convolution %v: inconsistent shape", s)
	}
	cs := C.al_conv_shape{
		batch: C.int(s.Batch), ic: C.int(s.In), oc: C.int(s.Out), side: C.int(s.Side), out_side: C.int(s.OutSide),
		kernel: C.int(s.Kernel), stride: C.int(s.Stride), pad: C.int(s.Pad),
		train: cbool(s.Train), diff_src: cbool(s.Train && s.DiffSrc), plain: cbool(s.Plain),
		reduce_threads: C.int(ReduceThreads),
	}
	c := &Conv{shape: s, h: &handle{}}
	var st C.dnnl_status_t
	var msg string
	err := do(func() {
		var errBuf [256]C.char
		st = C.al_conv_create(&cs, &c.h.c, &errBuf[0], C.size_t(len(errBuf)))
		msg = C.GoString(&errBuf[0])
		if st != C.dnnl_success {
			return
		}
		for k := range 3 {
			c.Impl[k] = C.GoString(C.al_conv_impl(c.h.c, C.int(k)))
			var buf [128]C.char
			C.al_conv_layouts(c.h.c, C.int(k), &buf[0], C.size_t(len(buf)))
			c.Layouts[k] = C.GoString(&buf[0])
		}
		c.Reorders = int(C.al_conv_reorders(c.h.c))
		var kept, temp, scratch C.size_t
		C.al_conv_memory(c.h.c, &kept, &temp, &scratch)
		c.Mem = ConvMemory{Kept: int64(kept), Temp: int64(temp), Scratch: int64(scratch)}
	})
	if err != nil {
		return nil, err
	}
	if st != C.dnnl_success {
		if msg == "" {
			msg = statusText(st)
		}
		return nil, fmt.Errorf("onednn: convolution %v: %s", s, msg)
	}
	runtime.AddCleanup(c, func(h *handle) { h.destroy() }, c.h)
	return c, nil
}

func (h *handle) destroy() {
	do(func() {
		C.al_conv_destroy(h.c)
		h.c = nil
	})
}

// Shape is what the layer was created for.
func (c *Conv) Shape() Shape { return c.shape }

// Close frees the primitives now rather than when c is collected; c is
// unusable after.
func (c *Conv) Close() {
	if c.h.c != nil {
		c.h.destroy()
	}
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

func statusText(st C.dnnl_status_t) string {
	switch st {
	case C.dnnl_out_of_memory:
		return "out of memory"
	case C.dnnl_invalid_arguments:
		return "invalid arguments"
	case C.dnnl_unimplemented:
		return "unimplemented"
	case C.dnnl_runtime_error:
		return "runtime error"
	}
	return fmt.Sprintf("status %d", int(st))
}

func check(what string, n, want int) error {
	if n != want {
		return fmt.Errorf("onednn: %s has %d values, want %d", what, n, want)
	}
	return nil
}

func ptr(v []float32) *C.float { return (*C.float)(unsafe.Pointer(unsafe.SliceData(v))) }

func (c *Conv) call(what string, f func() C.dnnl_status_t) error {
	if c.h.c == nil {
		return fmt.Errorf("onednn: %s on a closed convolution", what)
	}
	var st C.dnnl_status_t
	if err := do(func() { st = f() }); err != nil {
		return err
	}
	if st != C.dnnl_success {
		return fmt.Errorf("onednn: convolution %v: %s: %s", c.shape, what, statusText(st))
	}
	return nil
}

// Forward computes y = conv(x, w) + b (x [B,In,S,S], w [Out,In,K,K], b
// [Out], y [B,Out,So,So]), overwriting y.
func (c *Conv) Forward(x, w, b, y []float32) error {
	nx, nw, nb, ny := c.shape.sizes()
	if err := errors.Join(check("x", len(x), nx), check("w", len(w), nw), check("b", len(b), nb), check("y", len(y), ny)); err != nil {
		return err
	}
	err := c.call("forward", func() C.dnnl_status_t { return C.al_conv_forward(c.h.c, ptr(x), ptr(w), ptr(b), ptr(y)) })
	runtime.KeepAlive(x)
	runtime.KeepAlive(w)
	runtime.KeepAlive(b)
	runtime.KeepAlive(y)
	return err
}

// BackwardData computes the input's gradient dx from w and dy, overwriting dx.
func (c *Conv) BackwardData(w, dy, dx []float32) error {
	nx, nw, _, ny := c.shape.sizes()
	if err := errors.Join(check("w", len(w), nw), check("dy", len(dy), ny), check("dx", len(dx), nx)); err != nil {
		return err
	}
	err := c.call("backward data", func() C.dnnl_status_t { return C.al_conv_backward_data(c.h.c, ptr(w), ptr(dy), ptr(dx)) })
	runtime.KeepAlive(w)
	runtime.KeepAlive(dy)
	runtime.KeepAlive(dx)
	return err
}

// BackwardWeights computes the gradients of the weights and the bias from x
// and dy (summed over the batch), overwriting dw and db.
func (c *Conv) BackwardWeights(x, dy, dw, db []float32) error {
	nx, nw, nb, ny := c.shape.sizes()
	if err := errors.Join(check("x", len(x), nx), check("dy", len(dy), ny), check("dw", len(dw), nw), check("db", len(db), nb)); err != nil {
		return err
	}
	err := c.call("backward weights", func() C.dnnl_status_t {
		return C.al_conv_backward_weights(c.h.c, ptr(x), ptr(dy), ptr(dw), ptr(db))
	})
	runtime.KeepAlive(x)
	runtime.KeepAlive(dy)
	runtime.KeepAlive(dw)
	runtime.KeepAlive(db)
	return err
}
