// Package onednn runs convolutions in oneDNN (Intel's Deep Neural Network
// Library, Debian's libdnnl-dev 2.6.3: the version inside PyTorch 1.13,
// whose CPU convolutions it runs) through a small cgo binding of its C API.
//
// A Conv is one layer's shape with its three primitives, created once:
// forward (with bias), backward data and backward weights (with the bias
// gradient). The caller's tensors are plain, as the rest of the model keeps
// them (activations NCHW, weights OIHW, PyTorch's layouts); each primitive
// computes in the layout oneDNN prefers for the machine (for AVX-512, the
// channels in blocks of 16), and the tensors it takes or gives in another
// layout are reordered at the call's edges. The input reordered by the
// forward call is kept for backward weights, and dy is reordered once for
// both backward calls; the other temporary tensors live in one arena that
// every layer shares (one call runs at a time).
//
// Threads. Debian builds oneDNN on OpenMP (libgomp), whose thread count is
// per calling thread: every call into oneDNN (creating primitives and
// running them) goes through one locked OS thread, whose OpenMP team has
// Info.Threads threads, GOMAXPROCS when the package is first used; OpenMP's
// threads sleep between calls (OMP_WAIT_POLICY=passive unless the
// environment says otherwise) instead of spinning on the cores the Go code
// runs on. Forward and backward data compute each value in one thread;
// backward weights splits its sums over the batch into pieces by the thread
// count it is created for, so it always gets ReduceThreads. With the same
// ISA the results are then the same bits on every run and for every
// GOMAXPROCS (tested); another ISA (another JIT kernel) rounds differently.
//
// The library is opened at first use (dlopen), not linked: a process that
// never convolves in oneDNN does not need it installed, and one that cannot
// open it says so (alexnet's auto then takes im2col + BLAS).
//
// The build tags purego or nodnnl leave oneDNN out: Available is false and
// NewConv fails.
package onednn
