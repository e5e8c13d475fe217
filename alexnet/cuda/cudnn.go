//go:build gpu

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

// Our own declarations of the few cuDNN functions we call, so that the build
// needs no cudnn.h: the prototypes, enum values and struct layout are those
// of the cuDNN 9 API reference (docs.nvidia.com/deeplearning/cudnn, API
// reference: the cudnn_graph, cudnn_ops and cudnn_cnn libraries), checked
// against cuDNN 9.6's headers; cuDNN 8 has the same for all used here.
// Handles and descriptors are opaque pointers; enums are passed as int, as
// the C ABI passes them.
//
// Values used (cuDNN 9 API reference):
//   cudnnStatus_t            CUDNN_STATUS_SUCCESS = 0
//   cudnnDataType_t          CUDNN_DATA_FLOAT = 0
//   cudnnTensorFormat_t      CUDNN_TENSOR_NCHW = 0
//   cudnnConvolutionMode_t   CUDNN_CROSS_CORRELATION = 1 (PyTorch's conv2d)
//   cudnnMathType_t          CUDNN_DEFAULT_MATH = 0, CUDNN_TENSOR_OP_MATH = 1,
//                            CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION = 2, CUDNN_FMA_MATH = 3
//   cudnnDeterminism_t       CUDNN_NON_DETERMINISTIC = 0, CUDNN_DETERMINISTIC = 1
enum {
	dnnSuccess = 0,
	dnnFloat = 0,
	dnnNCHW = 0,
	dnnCrossCorrelation = 1,
	dnnDefaultMath = 0,
	dnnFMAMath = 3,
	dnnDeterministic = 1,
};

typedef int dnnStatus;
typedef void *dnnHandle;
typedef void *dnnTensor;
typedef void *dnnFilter;
typedef void *dnnConv;

// cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t: the same layout for
// the three (the algorithm is an enum).
typedef struct {
	int algo;
	dnnStatus status;
	float time;
	size_t memory;
	int determinism;
	int mathType;
	int reserved[3];
} dnnPerf;

// The functions, looked up by name in the library with dlsym.
enum {
	fGetVersion,
	fGetErrorString,
	fCreate,
	fDestroy,
	fSetStream,
	fCreateTensor,
	fSetTensor4dEx,
	fDestroyTensor,
	fCreateFilter,
	fSetFilter4d,
	fDestroyFilter,
	fCreateConv,
	fSetConv2d,
	fSetConvMath,
	fDestroyConv,
	fConvOutDim,
	fFindFwd,
	fFindBwdData,
	fFindBwdFilter,
	fFwdWorkspace,
	fBwdDataWorkspace,
	fBwdFilterWorkspace,
	fFwd,
	fBwdData,
	fBwdFilter,
	fCount
};

static const char *dnnNames[fCount] = {
	"cudnnGetVersion",
	"cudnnGetErrorString",
	"cudnnCreate",
	"cudnnDestroy",
	"cudnnSetStream",
	"cudnnCreateTensorDescriptor",
	"cudnnSetTensor4dDescriptorEx",
	"cudnnDestroyTensorDescriptor",
	"cudnnCreateFilterDescriptor",
	"cudnnSetFilter4dDescriptor",
	"cudnnDestroyFilterDescriptor",
	"cudnnCreateConvolutionDescriptor",
	"cudnnSetConvolution2dDescriptor",
	"cudnnSetConvolutionMathType",
	"cudnnDestroyConvolutionDescriptor",
	"cudnnGetConvolution2dForwardOutputDim",
	"cudnnFindConvolutionForwardAlgorithm",
	"cudnnFindConvolutionBackwardDataAlgorithm",
	"cudnnFindConvolutionBackwardFilterAlgorithm",
	"cudnnGetConvolutionForwardWorkspaceSize",
	"cudnnGetConvolutionBackwardDataWorkspaceSize",
	"cudnnGetConvolutionBackwardFilterWorkspaceSize",
	"cudnnConvolutionForward",
	"cudnnConvolutionBackwardData",
	"cudnnConvolutionBackwardFilter",
};

static void *dnnFn[fCount];

// dnnLoad opens the library at path and looks every function up; only when
// all are found does it keep them. It returns 0, or 1 when dlopen failed, 2
// when a function is missing, with the reason in msg (copied here: dlerror's
// text is the thread's, until its next call).
static int dnnLoad(const char *path, char *msg, size_t cap) {
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (lib == 0) {
		const char *e = dlerror();
		snprintf(msg, cap, "%s", e ? e : "dlopen failed");
		return 1;
	}
	void *fn[fCount];
	for (int i = 0; i < fCount; i++) {
		fn[i] = dlsym(lib, dnnNames[i]);
		if (fn[i] == 0) {
			snprintf(msg, cap, "no function %s in it", dnnNames[i]);
			dlclose(lib);
			return 2;
		}
	}
	for (int i = 0; i < fCount; i++) {
		dnnFn[i] = fn[i];
	}
	return 0;
}

// The calls, through the pointers dnnLoad found. Device addresses arrive as
// uint64_t (Go's gpu.Ptr) and become void* here.
#define DEV(p) ((void *)(uintptr_t)(p))

static size_t dnnGetVersion(void) {
	return ((size_t (*)(void))dnnFn[fGetVersion])();
}
static const char *dnnErrorString(dnnStatus s) {
	return ((const char *(*)(dnnStatus))dnnFn[fGetErrorString])(s);
}
static dnnStatus dnnCreate(dnnHandle *h) {
	return ((dnnStatus (*)(dnnHandle *))dnnFn[fCreate])(h);
}
static dnnStatus dnnDestroy(dnnHandle h) {
	return ((dnnStatus (*)(dnnHandle))dnnFn[fDestroy])(h);
}
// dnnSetStream puts h on the legacy default stream (cudaStream_t 0).
static dnnStatus dnnSetDefaultStream(dnnHandle h) {
	return ((dnnStatus (*)(dnnHandle, void *))dnnFn[fSetStream])(h, 0);
}
static dnnStatus dnnCreateTensor(dnnTensor *t) {
	return ((dnnStatus (*)(dnnTensor *))dnnFn[fCreateTensor])(t);
}
static dnnStatus dnnSetTensor(dnnTensor t, int n, int c, int h, int w, int ns, int cs, int hs, int ws) {
	return ((dnnStatus (*)(dnnTensor, int, int, int, int, int, int, int, int, int))dnnFn[fSetTensor4dEx])(
		t, dnnFloat, n, c, h, w, ns, cs, hs, ws);
}
static dnnStatus dnnDestroyTensor(dnnTensor t) {
	return ((dnnStatus (*)(dnnTensor))dnnFn[fDestroyTensor])(t);
}
static dnnStatus dnnCreateFilter(dnnFilter *f) {
	return ((dnnStatus (*)(dnnFilter *))dnnFn[fCreateFilter])(f);
}
static dnnStatus dnnSetFilter(dnnFilter f, int k, int c, int h, int w) {
	return ((dnnStatus (*)(dnnFilter, int, int, int, int, int, int))dnnFn[fSetFilter4d])(
		f, dnnFloat, dnnNCHW, k, c, h, w);
}
static dnnStatus dnnDestroyFilter(dnnFilter f) {
	return ((dnnStatus (*)(dnnFilter))dnnFn[fDestroyFilter])(f);
}
static dnnStatus dnnCreateConv(dnnConv *c) {
	return ((dnnStatus (*)(dnnConv *))dnnFn[fCreateConv])(c);
}
static dnnStatus dnnSetConv(dnnConv c, int pad, int stride) {
	return ((dnnStatus (*)(dnnConv, int, int, int, int, int, int, int, int))dnnFn[fSetConv2d])(
		c, pad, pad, stride, stride, 1, 1, dnnCrossCorrelation, dnnFloat);
}
static dnnStatus dnnSetConvMath(dnnConv c, int math) {
	return ((dnnStatus (*)(dnnConv, int))dnnFn[fSetConvMath])(c, math);
}
static dnnStatus dnnDestroyConv(dnnConv c) {
	return ((dnnStatus (*)(dnnConv))dnnFn[fDestroyConv])(c);
}
static dnnStatus dnnOutDim(dnnConv c, dnnTensor x, dnnFilter w, int *n, int *ch, int *h, int *wd) {
	return ((dnnStatus (*)(dnnConv, dnnTensor, dnnFilter, int *, int *, int *, int *))dnnFn[fConvOutDim])(
		c, x, w, n, ch, h, wd);
}
static dnnStatus dnnFindFwd(dnnHandle h, dnnTensor x, dnnFilter w, dnnConv c, dnnTensor y, int req, int *got, dnnPerf *perf) {
	return ((dnnStatus (*)(dnnHandle, dnnTensor, dnnFilter, dnnConv, dnnTensor, int, int *, dnnPerf *))dnnFn[fFindFwd])(
		h, x, w, c, y, req, got, perf);
}
static dnnStatus dnnFindBwdData(dnnHandle h, dnnFilter w, dnnTensor dy, dnnConv c, dnnTensor dx, int req, int *got, dnnPerf *perf) {
	return ((dnnStatus (*)(dnnHandle, dnnFilter, dnnTensor, dnnConv, dnnTensor, int, int *, dnnPerf *))dnnFn[fFindBwdData])(
		h, w, dy, c, dx, req, got, perf);
}
static dnnStatus dnnFindBwdFilter(dnnHandle h, dnnTensor x, dnnTensor dy, dnnConv c, dnnFilter dw, int req, int *got, dnnPerf *perf) {
	return ((dnnStatus (*)(dnnHandle, dnnTensor, dnnTensor, dnnConv, dnnFilter, int, int *, dnnPerf *))dnnFn[fFindBwdFilter])(
		h, x, dy, c, dw, req, got, perf);
}
static dnnStatus dnnFwdWorkspace(dnnHandle h, dnnTensor x, dnnFilter w, dnnConv c, dnnTensor y, int algo, size_t *size) {
	return ((dnnStatus (*)(dnnHandle, dnnTensor, dnnFilter, dnnConv, dnnTensor, int, size_t *))dnnFn[fFwdWorkspace])(
		h, x, w, c, y, algo, size);
}
static dnnStatus dnnBwdDataWorkspace(dnnHandle h, dnnFilter w, dnnTensor dy, dnnConv c, dnnTensor dx, int algo, size_t *size) {
	return ((dnnStatus (*)(dnnHandle, dnnFilter, dnnTensor, dnnConv, dnnTensor, int, size_t *))dnnFn[fBwdDataWorkspace])(
		h, w, dy, c, dx, algo, size);
}
static dnnStatus dnnBwdFilterWorkspace(dnnHandle h, dnnTensor x, dnnTensor dy, dnnConv c, dnnFilter dw, int algo, size_t *size) {
	return ((dnnStatus (*)(dnnHandle, dnnTensor, dnnTensor, dnnConv, dnnFilter, int, size_t *))dnnFn[fBwdFilterWorkspace])(
		h, x, dy, c, dw, algo, size);
}

// The three products, with alpha 1 and beta 0 (the output is overwritten).
static const float dnnOne = 1, dnnZero = 0;

static dnnStatus dnnForward(dnnHandle h, dnnTensor xd, uint64_t x, dnnFilter wd, uint64_t w, dnnConv c, int algo,
                            uint64_t ws, size_t wsSize, dnnTensor yd, uint64_t y) {
	return ((dnnStatus (*)(dnnHandle, const void *, dnnTensor, const void *, dnnFilter, const void *, dnnConv, int,
	                       void *, size_t, const void *, dnnTensor, void *))dnnFn[fFwd])(
		h, &dnnOne, xd, DEV(x), wd, DEV(w), c, algo, DEV(ws), wsSize, &dnnZero, yd, DEV(y));
}
static dnnStatus dnnBackwardData(dnnHandle h, dnnFilter wd, uint64_t w, dnnTensor dyd, uint64_t dy, dnnConv c, int algo,
                                 uint64_t ws, size_t wsSize, dnnTensor dxd, uint64_t dx) {
	return ((dnnStatus (*)(dnnHandle, const void *, dnnFilter, const void *, dnnTensor, const void *, dnnConv, int,
	                       void *, size_t, const void *, dnnTensor, void *))dnnFn[fBwdData])(
		h, &dnnOne, wd, DEV(w), dyd, DEV(dy), c, algo, DEV(ws), wsSize, &dnnZero, dxd, DEV(dx));
}
static dnnStatus dnnBackwardFilter(dnnHandle h, dnnTensor xd, uint64_t x, dnnTensor dyd, uint64_t dy, dnnConv c, int algo,
                                   uint64_t ws, size_t wsSize, dnnFilter dwd, uint64_t dw) {
	return ((dnnStatus (*)(dnnHandle, const void *, dnnTensor, const void *, dnnTensor, const void *, dnnConv, int,
	                       void *, size_t, const void *, dnnFilter, void *))dnnFn[fBwdFilter])(
		h, &dnnOne, xd, DEV(x), dyd, DEV(dy), c, algo, DEV(ws), wsSize, &dnnZero, dwd, DEV(dw));
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/alexring/alexring/alexnet/gpu"
)

// CudnnEnv names the environment variable that points at a cuDNN library
// (a path, or a name dlopen finds); without it libcudnn.so.9, then
// libcudnn.so.8, are tried through the loader's search (LD_LIBRARY_PATH, the
// system's directories). cuDNN 9's libcudnn.so.9 loads its sub-libraries
// (libcudnn_cnn.so.9, ...) by name, and they need libcublasLt: keep their
// directories on LD_LIBRARY_PATH too.
const CudnnEnv = "ALEXRING_CUDNN"

// The library is loaded once per process and never unloaded.
var cudnnLib struct {
	sync.Mutex
	loaded  bool
	from    string // the name or path it loaded from
	version int    // cudnnGetVersion
}

// loadCudnn loads the library once, or says which names were tried and how
// to point at one.
func loadCudnn() (from string, version int, err error) {
	cudnnLib.Lock()
	defer cudnnLib.Unlock()
	if cudnnLib.loaded {
		return cudnnLib.from, cudnnLib.version, nil
	}
	names := []string{"libcudnn.so.9", "libcudnn.so.8"}
	how := "set " + CudnnEnv + " to the library's path, or put its directory on LD_LIBRARY_PATH"
	if p := os.Getenv(CudnnEnv); p != "" {
		names = []string{p} // an explicit choice: no fallback behind it
		how = "fix " + CudnnEnv + ", or unset it to search for libcudnn.so.9 and libcudnn.so.8"
	}
	from, version, err = tryCudnn(names)
	if err != nil {
		return "", 0, fmt.Errorf("cuda: cuDNN did not load (%w); %s", err, how)
	}
	cudnnLib.loaded, cudnnLib.from, cudnnLib.version = true, from, version
	return from, version, nil
}

// tryCudnn loads the first of names that opens, has every function and is
// cuDNN 8 or later; the error lists why each failed. The caller holds
// cudnnLib and has loaded nothing yet.
func tryCudnn(names []string) (from string, version int, err error) {
	var tried []string
	for _, name := range names {
		cname := C.CString(name)
		var msg [1024]C.char
		r := C.dnnLoad(cname, &msg[0], C.size_t(len(msg)))
		C.free(unsafe.Pointer(cname))
		if r != 0 {
			tried = append(tried, fmt.Sprintf("%s: %s", name, C.GoString(&msg[0])))
			continue
		}
		v := int(C.dnnGetVersion())
		if cudnnMajor(v) < 8 {
			tried = append(tried, fmt.Sprintf("%s: version %s; want 8 or 9", name, cudnnVersion(v)))
			continue
		}
		return name, v, nil
	}
	return "", 0, errors.New(strings.Join(tried, "; "))
}

// cudnnGetVersion is major*1000 + minor*100 + patch up to cuDNN 8 and
// major*10000 + minor*100 + patch from cuDNN 9 on.
func cudnnMajor(v int) int {
	if v >= 90000 {
		return v / 10000
	}
	return v / 1000
}

func cudnnVersion(v int) string {
	if v >= 90000 {
		return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
	}
	return fmt.Sprintf("%d.%d.%d", v/1000, v/100%10, v%100)
}

// dnnError is a failed cuDNN call, by cudnnGetErrorString.
func dnnError(s C.dnnStatus) error {
	return fmt.Errorf("%s (%d)", C.GoString(C.dnnErrorString(s)), int(s))
}

// Cudnn is gpu.Convolution on cuDNN, loaded at run time: per shape, strided
// descriptors of the channel-major activations, the fastest FP32 algorithm
// of each product found by cuDNN's Find functions with CUDNN_FMA_MATH (no
// TF32, as PyTorch with allow_tf32 = False), and one workspace for all.
type Cudnn struct {
	dev     *Device
	h       C.dnnHandle
	from    string
	version int
	plans   map[gpu.ConvShape]*plan
	ws      gpu.Ptr
	wsBytes int64
	closed  bool
}

var _ gpu.Convolution = (*Cudnn)(nil)

// plan is one shape's descriptors and algorithms.
type plan struct {
	x, y              C.dnnTensor // x: [Batch][In][Side]^2, y: [Batch][Out][OutSide]^2, CNHW strides
	w                 C.dnnFilter // [Out][In][Kernel]^2, OIHW
	conv              C.dnnConv
	fwd, data, filter choice
}

// choice is the algorithm picked for one product.
type choice struct {
	algo          C.int
	time          float32 // ms, as cuDNN's Find measured it
	ws            int64   // workspace bytes
	deterministic bool
}

// NewCudnn loads cuDNN and creates its handle for dev, on dev's stream.
func NewCudnn(dev *Device) (*Cudnn, error) {
	from, version, err := loadCudnn()
	if err != nil {
		return nil, err
	}
	c := &Cudnn{dev: dev, from: from, version: version, plans: map[gpu.ConvShape]*plan{}}
	dev.enter()
	defer dev.leave()
	if dev.err != nil {
		return nil, dev.err
	}
	if s := C.dnnCreate(&c.h); s != C.dnnSuccess {
		return nil, fmt.Errorf("cuda: cudnnCreate: %w", dnnError(s))
	}
	if s := C.dnnSetDefaultStream(c.h); s != C.dnnSuccess {
		C.dnnDestroy(c.h)
		return nil, fmt.Errorf("cuda: cudnnSetStream: %w", dnnError(s))
	}
	return c, nil
}

// Name is what the logs call it.
func (c *Cudnn) Name() string { return "cudnn" }

// Version is the library's version and where it came from, for the logs.
func (c *Cudnn) Version() string {
	return fmt.Sprintf("cuDNN %s (%s)", cudnnVersion(c.version), c.from)
}

// Algorithms lists each prepared shape's algorithms (cuDNN's enum values),
// their times and workspaces, for the logs.
func (c *Cudnn) Algorithms() string {
	var lines []string
	for s, p := range c.plans {
		lines = append(lines, fmt.Sprintf("%d->%d k%d s%d p%d on %dx%dx%d: fwd %s, data %s, filter %s",
			s.In, s.Out, s.Kernel, s.Stride, s.Pad, s.Batch, s.Side, s.Side, p.fwd, p.data, p.filter))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func (ch choice) String() string {
	det := ""
	if !ch.deterministic {
		det = ", non-deterministic"
	}
	return fmt.Sprintf("algo %d (%.3f ms, %d B%s)", int(ch.algo), ch.time, ch.ws, det)
}

// Prepare builds the shape's descriptors, finds its algorithms and grows the
// workspace. cuDNN's Find functions run each candidate on memory they
// allocate themselves, so this synchronises and takes a while: once per
// shape.
func (c *Cudnn) Prepare(s gpu.ConvShape) error {
	d := c.dev
	d.enter()
	defer d.leave()
	if d.err != nil {
		return d.err
	}
	if c.closed {
		return errors.New("cuda: cudnn: closed")
	}
	if _, ok := c.plans[s]; ok {
		return nil
	}
	if s.Batch < 1 || s.In < 1 || s.Out < 1 || s.Kernel < 1 || s.Stride < 1 || s.Pad < 0 || s.Side < 1 ||
		s.OutSide != (s.Side+2*s.Pad-s.Kernel)/s.Stride+1 || s.OutSide < 1 {
		return fmt.Errorf("cuda: cudnn: convolution shape %+v does not work out", s)
	}
	p, err := c.plan(s)
	if err != nil {
		d.fail(fmt.Sprintf("cudnn: preparing %+v", s), err)
		return d.err
	}
	c.plans[s] = p
	need := max(p.fwd.ws, p.data.ws, p.filter.ws)
	if need <= c.wsBytes {
		return nil
	}
	// Grow the workspace: work issued on the old one must end first.
	if err := cu.Synchronize(); err != nil {
		d.fail("cudnn: waiting before growing the workspace", err)
		return d.err
	}
	if c.ws != 0 {
		d.freeLocked(c.ws)
		c.ws, c.wsBytes = 0, 0
	}
	ws, err := d.allocLocked(int((need + 3) / 4))
	if err != nil {
		return fmt.Errorf("cuda: cudnn: workspace of %d bytes: %w", need, err)
	}
	c.ws, c.wsBytes = ws, need
	return nil
}

// plan creates s's descriptors and picks its algorithms.
func (c *Cudnn) plan(s gpu.ConvShape) (_ *plan, err error) {
	p := &plan{}
	defer func() {
		if err != nil {
			p.destroy()
		}
	}()
	if st := C.dnnCreateTensor(&p.x); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnCreateTensorDescriptor: %w", dnnError(st))
	}
	if st := C.dnnCreateTensor(&p.y); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnCreateTensorDescriptor: %w", dnnError(st))
	}
	if st := C.dnnCreateFilter(&p.w); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnCreateFilterDescriptor: %w", dnnError(st))
	}
	if st := C.dnnCreateConv(&p.conv); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnCreateConvolutionDescriptor: %w", dnnError(st))
	}
	// Channel-major activations: element (n, c, h, w) of a [C][B][H][W] array
	// is at c*B*H*W + n*H*W + h*W + w.
	if err := setCNHW(p.x, s.Batch, s.In, s.Side); err != nil {
		return nil, err
	}
	if err := setCNHW(p.y, s.Batch, s.Out, s.OutSide); err != nil {
		return nil, err
	}
	if st := C.dnnSetFilter(p.w, C.int(s.Out), C.int(s.In), C.int(s.Kernel), C.int(s.Kernel)); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnSetFilter4dDescriptor: %w", dnnError(st))
	}
	if st := C.dnnSetConv(p.conv, C.int(s.Pad), C.int(s.Stride)); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnSetConvolution2dDescriptor: %w", dnnError(st))
	}
	if st := C.dnnSetConvMath(p.conv, C.dnnFMAMath); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnSetConvolutionMathType: %w", dnnError(st))
	}
	var n, ch, h, w C.int
	if st := C.dnnOutDim(p.conv, p.x, p.w, &n, &ch, &h, &w); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnGetConvolution2dForwardOutputDim: %w", dnnError(st))
	}
	if int(n) != s.Batch || int(ch) != s.Out || int(h) != s.OutSide || int(w) != s.OutSide {
		return nil, fmt.Errorf("cuDNN's output is %dx%dx%dx%d, the model's %dx%dx%dx%d", n, ch, h, w, s.Batch, s.Out, s.OutSide, s.OutSide)
	}

	var perf [16]C.dnnPerf
	var got C.int
	if st := C.dnnFindFwd(c.h, p.x, p.w, p.conv, p.y, C.int(len(perf)), &got, &perf[0]); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnFindConvolutionForwardAlgorithm: %w", dnnError(st))
	}
	if p.fwd, err = fastest("forward", perf[:got]); err != nil {
		return nil, err
	}
	if st := C.dnnFindBwdData(c.h, p.w, p.y, p.conv, p.x, C.int(len(perf)), &got, &perf[0]); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnFindConvolutionBackwardDataAlgorithm: %w", dnnError(st))
	}
	if p.data, err = fastest("backward data", perf[:got]); err != nil {
		return nil, err
	}
	if st := C.dnnFindBwdFilter(c.h, p.x, p.y, p.conv, p.w, C.int(len(perf)), &got, &perf[0]); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnFindConvolutionBackwardFilterAlgorithm: %w", dnnError(st))
	}
	if p.filter, err = fastest("backward filter", perf[:got]); err != nil {
		return nil, err
	}

	// The workspace each chosen algorithm needs, as cuDNN states it for the
	// descriptors (at least what Find reported).
	var size C.size_t
	if st := C.dnnFwdWorkspace(c.h, p.x, p.w, p.conv, p.y, p.fwd.algo, &size); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnGetConvolutionForwardWorkspaceSize: %w", dnnError(st))
	}
	p.fwd.ws = max(p.fwd.ws, int64(size))
	if st := C.dnnBwdDataWorkspace(c.h, p.w, p.y, p.conv, p.x, p.data.algo, &size); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnGetConvolutionBackwardDataWorkspaceSize: %w", dnnError(st))
	}
	p.data.ws = max(p.data.ws, int64(size))
	if st := C.dnnBwdFilterWorkspace(c.h, p.x, p.y, p.conv, p.w, p.filter.algo, &size); st != C.dnnSuccess {
		return nil, fmt.Errorf("cudnnGetConvolutionBackwardFilterWorkspaceSize: %w", dnnError(st))
	}
	p.filter.ws = max(p.filter.ws, int64(size))
	return p, nil
}

// setCNHW describes a [C][B][side][side] array as cuDNN's (n, c, h, w).
func setCNHW(t C.dnnTensor, batch, channels, side int) error {
	hw := side * side
	if st := C.dnnSetTensor(t, C.int(batch), C.int(channels), C.int(side), C.int(side),
		C.int(hw), C.int(batch*hw), C.int(side), 1); st != C.dnnSuccess {
		return fmt.Errorf("cudnnSetTensor4dDescriptorEx (%dx%dx%dx%d, channel-major): %w", batch, channels, side, side, dnnError(st))
	}
	return nil
}

// fastest picks the quickest algorithm that ran (status SUCCESS) in FP32
// FMA math, as PyTorch requires with TF32 off: a default-math timing may be a
// TF32 run on Ampere and later, so it is no measure of what will run.
func fastest(what string, perf []C.dnnPerf) (choice, error) {
	best, found := choice{}, false
	for _, r := range perf {
		if r.status != C.dnnSuccess || r.mathType != C.dnnFMAMath {
			continue
		}
		if !found || float32(r.time) < best.time {
			best = choice{algo: r.algo, time: float32(r.time), ws: int64(r.memory), deterministic: r.determinism == C.dnnDeterministic}
			found = true
		}
	}
	if !found {
		var why []string
		for _, r := range perf {
			why = append(why, fmt.Sprintf("algo %d: %s, math %d", int(r.algo), C.GoString(C.dnnErrorString(r.status)), int(r.mathType)))
		}
		return choice{}, fmt.Errorf("no FP32 %s algorithm ran (%s)", what, strings.Join(why, "; "))
	}
	return best, nil
}

// destroy frees a plan's descriptors (those created).
func (p *plan) destroy() {
	if p.x != nil {
		C.dnnDestroyTensor(p.x)
	}
	if p.y != nil {
		C.dnnDestroyTensor(p.y)
	}
	if p.w != nil {
		C.dnnDestroyFilter(p.w)
	}
	if p.conv != nil {
		C.dnnDestroyConv(p.conv)
	}
	*p = plan{}
}

// run issues one product of a prepared shape.
func (c *Cudnn) run(what string, s gpu.ConvShape, call func(p *plan) C.dnnStatus) error {
	d := c.dev
	d.enter()
	defer d.leave()
	if d.err != nil {
		return d.err
	}
	p, ok := c.plans[s]
	if !ok || c.closed {
		d.fail("cudnn "+what, fmt.Errorf("shape %+v was not prepared", s))
		return d.err
	}
	if st := call(p); st != C.dnnSuccess {
		d.fail(fmt.Sprintf("cudnn %s %+v", what, s), dnnError(st))
	}
	return d.err
}

// Forward: y = conv(x, w).
func (c *Cudnn) Forward(s gpu.ConvShape, x, w, y gpu.Ptr) error {
	return c.run("forward", s, func(p *plan) C.dnnStatus {
		return C.dnnForward(c.h, p.x, C.uint64_t(x), p.w, C.uint64_t(w), p.conv, p.fwd.algo,
			C.uint64_t(c.ws), C.size_t(c.wsBytes), p.y, C.uint64_t(y))
	})
}

// BackwardData: dx = the input's gradient from dy.
func (c *Cudnn) BackwardData(s gpu.ConvShape, w, dy, dx gpu.Ptr) error {
	return c.run("backward data", s, func(p *plan) C.dnnStatus {
		return C.dnnBackwardData(c.h, p.w, C.uint64_t(w), p.y, C.uint64_t(dy), p.conv, p.data.algo,
			C.uint64_t(c.ws), C.size_t(c.wsBytes), p.x, C.uint64_t(dx))
	})
}

// BackwardFilter: dw = the weights' gradient from x and dy.
func (c *Cudnn) BackwardFilter(s gpu.ConvShape, x, dy, dw gpu.Ptr) error {
	return c.run("backward filter", s, func(p *plan) C.dnnStatus {
		return C.dnnBackwardFilter(c.h, p.x, C.uint64_t(x), p.y, C.uint64_t(dy), p.conv, p.filter.algo,
			C.uint64_t(c.ws), C.size_t(c.wsBytes), p.w, C.uint64_t(dw))
	})
}

// Close waits for the issued work, then frees the descriptors, the workspace
// and the handle; closing twice is safe.
func (c *Cudnn) Close() error {
	d := c.dev
	d.enter()
	defer d.leave()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	if !d.closed {
		if err := cu.Synchronize(); err != nil {
			errs = append(errs, fmt.Errorf("waiting for the issued work: %w", err))
		}
	}
	for _, p := range c.plans {
		p.destroy()
	}
	clear(c.plans)
	if c.ws != 0 {
		d.freeLocked(c.ws)
		c.ws, c.wsBytes = 0, 0
	}
	if s := C.dnnDestroy(c.h); s != C.dnnSuccess {
		errs = append(errs, fmt.Errorf("cudnnDestroy: %w", dnnError(s)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cuda: cudnn: closing: %w", err)
	}
	return nil
}
