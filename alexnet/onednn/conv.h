// The C side of package onednn: one convolution layer's three primitives
// (forward, backward data, backward weights with bias) over oneDNN's C API.
// Every function here runs on the package's one OS thread (see thread.go).

#ifndef ALEXRING_ONEDNN_CONV_H
#define ALEXRING_ONEDNN_CONV_H

#include <stddef.h>
#include <dnnl.h>

typedef struct {
	int batch, ic, oc, side, out_side, kernel, stride, pad;
	int train;     // forward_training, and the backward primitives
	int diff_src;  // also the gradient of the input (backward data)
	int plain;     // the primitives on the caller's layouts (NCHW, OIHW): no reorders
	int reduce_threads; // the threads of backward weights (its sums' order follows them)
} al_conv_shape;

typedef struct al_conv al_conv;

// al_load opens oneDNN's shared library (libdnnl.so.2) and finds its
// functions; on failure (0) err says why. Nothing else works before it.
int al_load(const char *lib, char *err, size_t errlen);
void al_version(int *major, int *minor, int *patch, unsigned *runtime);

// al_init creates the engine and the stream and sets OpenMP's thread count
// for this thread (the only one that calls oneDNN).
dnnl_status_t al_init(int threads);

// al_conv_create builds a layer's primitives; on failure err says which.
dnnl_status_t al_conv_create(const al_conv_shape *s, al_conv **out, char *err, size_t errlen);
void al_conv_destroy(al_conv *c);

// The caller's tensors are plain: x, dx NCHW; w, dw OIHW; b, db [oc]; y, dy
// NCHW. No pointer is kept after a call returns.
dnnl_status_t al_conv_forward(al_conv *c, const float *x, const float *w, const float *b, float *y);
dnnl_status_t al_conv_backward_data(al_conv *c, const float *w, const float *dy, float *dx);
dnnl_status_t al_conv_backward_weights(al_conv *c, const float *x, const float *dy, float *dw, float *db);

// al_conv_impl names the implementation of primitive k (0 forward, 1
// backward data, 2 backward weights; "" when not built); al_conv_layouts
// the layouts it computes in (src/weights/dst, "" when not built).
const char *al_conv_impl(const al_conv *c, int k);
void al_conv_layouts(const al_conv *c, int k, char *buf, size_t len);

// al_conv_reorders counts the reorders a step of this layer runs (forward,
// backward data and weights together, each tensor once).
int al_conv_reorders(const al_conv *c);

// al_conv_memory is what the layer holds beyond the caller's tensors: its
// kept buffers, the arena one of its calls needs, and the largest
// scratchpad oneDNN's library allocates for one of its primitives.
void al_conv_memory(const al_conv *c, size_t *kept_bytes, size_t *temp, size_t *scratch);

// al_arena_bytes is the size of the scratch shared by every layer (temporary
// layouts and scratchpads); al_persistent_bytes what the layers keep.
size_t al_arena_bytes(void);
size_t al_persistent_bytes(void);

// al_isa is oneDNN's effective ISA as its name (avx512_core, avx2, ...).
const char *al_isa(void);
int al_max_threads(void);

#endif
