package gpu

// Device is what the GPU model needs from the hardware: memory, copies,
// row-major GEMMs and our kernels (package kernels), all in the order issued
// (one stream). Package alexnet/cuda implements it on gorgonia.org/cu and
// cuBLAS; hostdev.Device implements it on the CPU with the kernels' host builds
// and OpenBLAS, so that the whole step is tested without a GPU.
//
// Errors are sticky, as CUDA's are: after one failure every later call does
// nothing and Err (and Sync) report the first error.
type Device interface {
	// Alloc returns n zeroed float32s (or int32s) of device memory.
	Alloc(n int) (Ptr, error)
	Free(p Ptr)
	// Upload copies src into p; Download copies n = len(dst) values of p
	// into dst. Both wait for the work issued before them.
	Upload(p Ptr, src []float32)
	Download(dst []float32, p Ptr)
	// DownloadAsync issues the copy of len(dst) values of p into dst, which
	// must come from HostAlloc; it is done when a later Wait or Sync
	// returns.
	DownloadAsync(dst []float32, p Ptr)
	// HostAlloc returns n zeroed page-locked host floats; FreeHost releases them.
	HostAlloc(n int) ([]float32, error)
	FreeHost(v []float32)
	// Gemm is C = alpha*op(A)*op(B) + beta*C on row-major matrices, as
	// gonum's blas.Float32 Sgemm (cuBLAS's column-major call swaps the
	// operands); FP32 arithmetic, no TF32.
	Gemm(transA, transB bool, m, n, k int, alpha float32, a Ptr, lda int, b Ptr, ldb int, beta float32, c Ptr, ldc int)
	// Gemv is y = alpha*op(A)*x + beta*y, A row-major m x n.
	Gemv(transA bool, m, n int, alpha float32, a Ptr, lda int, x Ptr, beta float32, y Ptr)
	// Launch runs kernel name over n work items (grid-stride, so any grid
	// covers them) with args, each 8 bytes: a Ptr, an int64 or a float64.
	Launch(name string, n int64, args ...any)
	// Mark records the point reached in the issued work; Wait blocks until
	// the work issued before the mark is done.
	Mark() (Event, error)
	Wait(e Event) error
	// Sync waits for all issued work and returns the first error.
	Sync() error
	Err() error
	// Describe names the device ("cuda:0 NVIDIA H200", "host").
	Describe() string
	Close() error
}

// Ptr is a device address (the host device's are C heap addresses).
type Ptr uint64

// Add is the address of element i of a float32 (or int32) array at p.
func (p Ptr) Add(i int) Ptr { return p + Ptr(4*i) }

// Event is a point in a device's issued work.
type Event interface{}
