// Package hostdev is a gpu.Device on the CPU: device memory is C heap
// (calloc), so that a gpu.Ptr is a real address the kernels' host build
// (package kernels) reads and writes; the GEMMs are OpenBLAS's cblas; the
// kernels run their host build over the grid-stride loop of their launch
// geometry. Everything is synchronous, so Mark, Wait and DownloadAsync are
// trivially done.
//
// It is a checking device: it knows every live allocation, and every copy,
// GEMM, GEMV and kernel launch whose pointers reach outside one (a buffer too
// small, a wrong leading dimension, a pointer used after Free) is a sticky
// error, as is a kernel argument of the wrong type or a launch whose
// geometry does not work out. On a GPU these read garbage or corrupt memory
// silently; here the model's orchestration is tested against them.
package hostdev
