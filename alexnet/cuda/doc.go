// Package cuda is the GPU backend on an NVIDIA device: a gpu.Device on the
// CUDA driver API (gorgonia.org/cu v0.9.6) and cuBLAS (gorgonia.org/cu/blas),
// optionally cuDNN's convolutions (loaded at run time), and New, which puts
// package gpu's model on them as an alexnet.Backend. Everything but this
// comment is built with the tag gpu only; without it the package is empty
// and the default build needs no CUDA. (Not the tag cuda: that is
// gorgonia's own, which turns on its unfinished CUDA graphs and needs
// cudnn.h.)
//
// # Pieces
//
//   - Device (device.go): one device's primary context, our kernels' PTX
//     (package kernels, for the device's compute capability) as a module,
//     device and pinned host memory, copies, row-major Gemm and Gemv on
//     cuBLAS, kernel launches, marks (events) and sticky errors.
//   - Cudnn (cudnn.go): gpu.Convolution on cuDNN through declarations of our
//     own and dlopen, so that building needs no cudnn.h: the library named by
//     ALEXRING_CUDNN, else libcudnn.so.9, then libcudnn.so.8.
//   - New (backend.go): Config{GPU, Conv} to a backend whose Describe names the device and the convolution.
//   - Package probe, imported here: a GPU binary on a host without a usable
//     GPU exits 2 with a message saying so, before gorgonia.org/cu's init
//     exits 1 with only a link.
//
// # Choices
//
// One stream: the legacy default stream (NULL), for our kernels, the copies,
// cuBLAS and cuDNN. cu/blas binds no cublasSetStream, so cuBLAS would run
// there anyway (the handle is put on it explicitly all the same), the
// synchronous copies (cuMemcpyHtoD, cuMemcpyDtoH) are ordered on it, and the
// model issues its work in one order, so a created stream would buy nothing
// and add a way to get the order wrong. The host overlaps the ring with the
// backward pass by waiting for a mark, not by a second stream.
//
// Threads: a CUDA context is current per OS thread and Go moves goroutines
// between threads, so every method locks its goroutine to its thread and
// makes the context current for the call (cheap), under the device's mutex,
// which also keeps the cuBLAS and cuDNN handles to one thread at a time as
// both libraries require. Any goroutine may call any method; Wait and Sync
// block without holding the mutex.
//
// Context: the device's primary context (retained, not created), the one the
// CUDA runtime under cuBLAS and cuDNN uses as well.
//
// FP32 only, no TF32: cuBLAS's math mode is set to CUBLAS_DEFAULT_MATH and
// read back (TF32 tensor cores need CUBLAS_TF32_TENSOR_OP_MATH); cuDNN's
// convolutions get CUDNN_FMA_MATH, as PyTorch's with allow_tf32 = False.
//
// # What is verified where
//
// Built and vetted against Debian's CUDA 11.8 (cuda.h, cublas_v2.h,
// libcuda, libcublas) on a machine without a GPU, where the probe's exit 2
// was checked (probe/probe_test.go builds and runs a GPU program). The
// cuDNN declarations follow the cuDNN 9 API reference; no cudnn.h is
// installable there to compare with. Nothing else here has run on a GPU
// yet. The tests (build tag gpu) are written for one: the device and its
// errors, Gemm and Gemv against loops on the CPU, every kernel against the
// host build (package hostdev), pinned memory and the order of asynchronous
// copies, the whole backend against the CPU's alexnet.Net, and cuDNN's
// convolution against the GEMM one.
package cuda
