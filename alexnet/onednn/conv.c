//go:build !purego && !nodnnl

#include "conv.h"

#include <dlfcn.h>
#include <dnnl_debug.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// oneDNN is loaded at run time (al_load), not linked: a process that never
// convolves in it (the coordinator, a run on im2col + BLAS) neither needs
// libdnnl.so.2 installed nor pays for loading its 40 MB, and OpenMP (which
// comes with it and reads its settings from the environment as it loads)
// starts with the settings al_load is given. The declarations are dnnl.h's;
// the calls below go through these pointers.
#define AL_FUNCS(X)                                  \
	X(dnnl_convolution_backward_data_desc_init)      \
	X(dnnl_convolution_backward_weights_desc_init)   \
	X(dnnl_convolution_forward_desc_init)            \
	X(dnnl_engine_create)                            \
	X(dnnl_get_effective_cpu_isa)                    \
	X(dnnl_memory_create)                            \
	X(dnnl_memory_desc_equal)                        \
	X(dnnl_memory_desc_get_size)                     \
	X(dnnl_memory_desc_init_by_tag)                  \
	X(dnnl_memory_destroy)                           \
	X(dnnl_memory_set_data_handle)                   \
	X(dnnl_primitive_attr_create)                    \
	X(dnnl_primitive_attr_destroy)                   \
	X(dnnl_primitive_create)                         \
	X(dnnl_primitive_desc_create)                    \
	X(dnnl_primitive_desc_destroy)                   \
	X(dnnl_primitive_desc_query)                     \
	X(dnnl_primitive_desc_query_md)                  \
	X(dnnl_primitive_destroy)                        \
	X(dnnl_primitive_execute)                        \
	X(dnnl_reorder_primitive_desc_create)            \
	X(dnnl_status2str)                               \
	X(dnnl_stream_create)                            \
	X(dnnl_stream_wait)                              \
	X(dnnl_version)                                  \
	X(omp_get_max_threads)                           \
	X(omp_set_num_threads)
#if DNNL_VERSION_MAJOR > 2 || DNNL_VERSION_MINOR >= 5
#define AL_FPMATH(X) X(dnnl_primitive_attr_set_fpmath_mode)
#else
#define AL_FPMATH(X)
#endif

#define AL_POINTER(f) static __typeof__(f) *p_##f;
AL_FUNCS(AL_POINTER)
AL_FPMATH(AL_POINTER)

int al_load(const char *lib, char *err, size_t errlen) {
	void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		snprintf(err, errlen, "%s", dlerror());
		return 0;
	}
#define AL_LOOKUP(f)                                                   \
	if (!(p_##f = (__typeof__(f) *)dlsym(h, #f))) {                    \
		snprintf(err, errlen, "%s: no %s", lib, #f);                   \
		return 0;                                                      \
	}
	AL_FUNCS(AL_LOOKUP)
	AL_FPMATH(AL_LOOKUP)
	return 1;
}

#define dnnl_convolution_backward_data_desc_init (*p_dnnl_convolution_backward_data_desc_init)
#define dnnl_convolution_backward_weights_desc_init (*p_dnnl_convolution_backward_weights_desc_init)
#define dnnl_convolution_forward_desc_init (*p_dnnl_convolution_forward_desc_init)
#define dnnl_engine_create (*p_dnnl_engine_create)
#define dnnl_get_effective_cpu_isa (*p_dnnl_get_effective_cpu_isa)
#define dnnl_memory_create (*p_dnnl_memory_create)
#define dnnl_memory_desc_equal (*p_dnnl_memory_desc_equal)
#define dnnl_memory_desc_get_size (*p_dnnl_memory_desc_get_size)
#define dnnl_memory_desc_init_by_tag (*p_dnnl_memory_desc_init_by_tag)
#define dnnl_memory_destroy (*p_dnnl_memory_destroy)
#define dnnl_memory_set_data_handle (*p_dnnl_memory_set_data_handle)
#define dnnl_primitive_attr_create (*p_dnnl_primitive_attr_create)
#define dnnl_primitive_attr_destroy (*p_dnnl_primitive_attr_destroy)
#define dnnl_primitive_attr_set_fpmath_mode (*p_dnnl_primitive_attr_set_fpmath_mode)
#define dnnl_primitive_create (*p_dnnl_primitive_create)
#define dnnl_primitive_desc_create (*p_dnnl_primitive_desc_create)
#define dnnl_primitive_desc_destroy (*p_dnnl_primitive_desc_destroy)
#define dnnl_primitive_desc_query (*p_dnnl_primitive_desc_query)
#define dnnl_primitive_desc_query_md (*p_dnnl_primitive_desc_query_md)
#define dnnl_primitive_destroy (*p_dnnl_primitive_destroy)
#define dnnl_primitive_execute (*p_dnnl_primitive_execute)
#define dnnl_reorder_primitive_desc_create (*p_dnnl_reorder_primitive_desc_create)
#define dnnl_status2str (*p_dnnl_status2str)
#define dnnl_stream_create (*p_dnnl_stream_create)
#define dnnl_stream_wait (*p_dnnl_stream_wait)
#define dnnl_version (*p_dnnl_version)
#define omp_get_max_threads (*p_omp_get_max_threads)
#define omp_set_num_threads (*p_omp_set_num_threads)

static dnnl_engine_t al_engine;
static dnnl_stream_t al_stream;

void al_version(int *major, int *minor, int *patch, unsigned *runtime) {
	const dnnl_version_t *v = dnnl_version();
	*major = v->major;
	*minor = v->minor;
	*patch = v->patch;
	*runtime = v->cpu_runtime;
}

// The arena is the memory of every call's temporary tensors (inputs in the
// primitive's layout, outputs before their reorder): one call at a time runs,
// so all layers share it. It grows to the largest call's need.
static void *arena;
static size_t arena_size, arena_need, kept;

dnnl_status_t al_init(int threads) {
	omp_set_num_threads(threads);
	dnnl_status_t st = dnnl_engine_create(&al_engine, dnnl_cpu, 0);
	if (st != dnnl_success) return st;
	return dnnl_stream_create(&al_stream, al_engine, dnnl_stream_default_flags);
}

int al_max_threads(void) { return omp_get_max_threads(); }

size_t al_arena_bytes(void) { return arena_size; }
size_t al_persistent_bytes(void) { return kept; }

const char *al_isa(void) {
	switch (dnnl_get_effective_cpu_isa()) {
	case dnnl_cpu_isa_sse41: return "sse41";
	case dnnl_cpu_isa_avx: return "avx";
	case dnnl_cpu_isa_avx2: return "avx2";
#if DNNL_VERSION_MAJOR > 2 || DNNL_VERSION_MINOR >= 6
	case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
#endif
	case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
	case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
	case dnnl_cpu_isa_avx512_core: return "avx512_core";
	case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
	case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
	case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
	default: return "none";
	}
}

// An operand is one tensor of a primitive: the caller's buffer (plain
// layout, its handle set for one call) and the primitive's, which is the
// caller's itself or a buffer in the primitive's layout with a reorder
// between the two (caller to primitive for an input, back for an output).
typedef struct {
	dnnl_memory_t user, prim;
	dnnl_primitive_t reorder;
	long off;  // the primitive's buffer in the arena at this offset; -1: own or the user's
	void *own; // a buffer kept between calls (an input the next primitive reuses)
	size_t own_bytes;
	int input;
} al_operand;

typedef struct {
	dnnl_primitive_desc_t pd;
	dnnl_primitive_t prim;
	size_t temp; // arena bytes of one call
} al_prim;

struct al_conv {
	al_conv_shape s;
	al_prim fwd, bwd_d, bwd_w;
	al_operand f_src, f_wei, f_bias, f_dst;
	al_operand d_wei, d_dy_own, d_dx;
	al_operand w_src_own, w_dy, w_dw, w_db;
	al_operand *d_dy;  // &w_dy when both backward primitives take dy in one layout
	al_operand *w_src; // &f_src when backward weights takes x in forward's layout
	// What the kept buffers hold: x reordered by the forward call, dy by the
	// first backward call of the step; the caller's buffers are named by
	// their addresses as numbers (no pointer is kept past a call).
	uintptr_t src_ptr, dy_ptr;
	int src_fresh, dy_fresh;
	int reorders;
	size_t kept_bytes; // this layer's share of kept
};

#define TRY(call)                                   \
	do {                                            \
		dnnl_status_t st_ = (call);                 \
		if (st_ != dnnl_success) return st_;        \
	} while (0)

static size_t take(size_t *cursor, size_t bytes) {
	size_t off = *cursor;
	*cursor += (bytes + 63) & ~(size_t)63;
	return off;
}

static dnnl_status_t operand_init(al_operand *o, const dnnl_memory_desc_t *user_md, const dnnl_memory_desc_t *prim_md,
                                  int input, int keep, size_t *cursor) {
	memset(o, 0, sizeof *o);
	o->off = -1;
	o->input = input;
	TRY(dnnl_memory_create(&o->user, user_md, al_engine, DNNL_MEMORY_NONE));
	if (dnnl_memory_desc_equal(user_md, prim_md)) {
		o->prim = o->user;
		return dnnl_success;
	}
	size_t bytes = dnnl_memory_desc_get_size(prim_md);
	if (keep) {
		if (posix_memalign(&o->own, 64, bytes) != 0) return dnnl_out_of_memory;
		o->own_bytes = bytes;
		kept += bytes;
		TRY(dnnl_memory_create(&o->prim, prim_md, al_engine, o->own));
	} else {
		o->off = (long)take(cursor, bytes);
		TRY(dnnl_memory_create(&o->prim, prim_md, al_engine, DNNL_MEMORY_NONE));
	}
	dnnl_primitive_desc_t rpd;
	TRY(input ? dnnl_reorder_primitive_desc_create(&rpd, user_md, al_engine, prim_md, al_engine, NULL)
	          : dnnl_reorder_primitive_desc_create(&rpd, prim_md, al_engine, user_md, al_engine, NULL));
	dnnl_status_t st = dnnl_primitive_create(&o->reorder, rpd);
	dnnl_primitive_desc_destroy(rpd);
	return st;
}

static void operand_destroy(al_operand *o) {
	if (o->reorder) dnnl_primitive_destroy(o->reorder);
	if (o->prim && o->prim != o->user) dnnl_memory_destroy(o->prim);
	if (o->user) dnnl_memory_destroy(o->user);
	if (o->own) {
		free(o->own);
		kept -= o->own_bytes;
	}
	memset(o, 0, sizeof *o);
}

static dnnl_status_t bind(al_operand *o, const void *p) {
	TRY(dnnl_memory_set_data_handle(o->user, (void *)p));
	if (o->off >= 0) TRY(dnnl_memory_set_data_handle(o->prim, (char *)arena + o->off));
	return dnnl_success;
}

static void unbind(al_operand *o) { dnnl_memory_set_data_handle(o->user, NULL); }

static dnnl_status_t run_reorder(al_operand *o) {
	if (!o->reorder) return dnnl_success;
	dnnl_exec_arg_t args[2] = {
	    {DNNL_ARG_FROM, o->input ? o->user : o->prim},
	    {DNNL_ARG_TO, o->input ? o->prim : o->user},
	};
	return dnnl_primitive_execute(o->reorder, al_stream, 2, args);
}

// grow makes the arena hold one call of need bytes.
static dnnl_status_t grow(size_t need) {
	if (need <= arena_size) return dnnl_success;
	free(arena);
	arena = NULL;
	arena_size = 0;
	if (posix_memalign(&arena, 64, need) != 0) return dnnl_out_of_memory;
	arena_size = need;
	return dnnl_success;
}

static const dnnl_memory_desc_t *md(const al_prim *p, dnnl_query_t what) {
	return dnnl_primitive_desc_query_md(p->pd, what, 0);
}

static dnnl_status_t prim_create(al_prim *p, const void *desc, const al_prim *hint, const char *name, char *err, size_t errlen) {
	dnnl_primitive_attr_t attr;
	TRY(dnnl_primitive_attr_create(&attr));
#if DNNL_VERSION_MAJOR > 2 || DNNL_VERSION_MINOR >= 5
	// Plain float32 arithmetic, whatever ONEDNN_DEFAULT_FPMATH_MODE says
	// (before 2.5 there was no other).
	dnnl_primitive_attr_set_fpmath_mode(attr, dnnl_fpmath_mode_strict);
#endif
	dnnl_status_t st = dnnl_primitive_desc_create(&p->pd, desc, attr, al_engine, hint ? hint->pd : NULL);
	dnnl_primitive_attr_destroy(attr);
	if (st != dnnl_success) {
		snprintf(err, errlen, "%s primitive descriptor: %s", name, dnnl_status2str(st));
		return st;
	}
	if ((st = dnnl_primitive_create(&p->prim, p->pd)) != dnnl_success) {
		snprintf(err, errlen, "%s primitive: %s", name, dnnl_status2str(st));
	}
	return st;
}

static void prim_destroy(al_prim *p) {
	if (p->prim) dnnl_primitive_destroy(p->prim);
	if (p->pd) dnnl_primitive_desc_destroy(p->pd);
	memset(p, 0, sizeof *p);
}

static void plain_md(dnnl_memory_desc_t *d, int ndims, const dnnl_dims_t dims, dnnl_format_tag_t tag) {
	dnnl_memory_desc_init_by_tag(d, ndims, dims, dnnl_f32, tag);
}

dnnl_status_t al_conv_create(const al_conv_shape *s, al_conv **out, char *err, size_t errlen) {
	*out = NULL;
	err[0] = 0;
	al_conv *c = calloc(1, sizeof *c);
	if (!c) return dnnl_out_of_memory;
	c->s = *s;
	dnnl_dims_t src_dims = {s->batch, s->ic, s->side, s->side};
	dnnl_dims_t wei_dims = {s->oc, s->ic, s->kernel, s->kernel};
	dnnl_dims_t bias_dims = {s->oc};
	dnnl_dims_t dst_dims = {s->batch, s->oc, s->out_side, s->out_side};
	dnnl_dims_t strides = {s->stride, s->stride};
	dnnl_dims_t pad = {s->pad, s->pad};
	dnnl_memory_desc_t u_src, u_wei, u_bias, u_dst, a_src, a_wei, a_dst;
	plain_md(&u_src, 4, src_dims, dnnl_nchw);
	plain_md(&u_wei, 4, wei_dims, dnnl_oihw);
	plain_md(&u_bias, 1, bias_dims, dnnl_x);
	plain_md(&u_dst, 4, dst_dims, dnnl_nchw);
	// The primitives' own tensors: in the layouts they choose, or plain.
	plain_md(&a_src, 4, src_dims, s->plain ? dnnl_nchw : dnnl_format_tag_any);
	plain_md(&a_wei, 4, wei_dims, s->plain ? dnnl_oihw : dnnl_format_tag_any);
	plain_md(&a_dst, 4, dst_dims, s->plain ? dnnl_nchw : dnnl_format_tag_any);

	dnnl_status_t st;
	dnnl_convolution_desc_t d;
#define STEP(call, what)                                                           \
	do {                                                                           \
		if ((st = (call)) != dnnl_success) {                                       \
			if (!err[0]) snprintf(err, errlen, "%s: %s", what, dnnl_status2str(st)); \
			al_conv_destroy(c);                                                    \
			return st;                                                             \
		}                                                                          \
	} while (0)

	STEP(dnnl_convolution_forward_desc_init(&d, s->train ? dnnl_forward_training : dnnl_forward_inference,
	                                        dnnl_convolution_direct, &a_src, &a_wei, &u_bias, &a_dst, strides, pad, pad),
	     "forward descriptor");
	STEP(prim_create(&c->fwd, &d, NULL, "forward", err, errlen), "forward");
	if (s->train) {
		if (s->diff_src) {
			STEP(dnnl_convolution_backward_data_desc_init(&d, dnnl_convolution_direct, &a_src, &a_wei, &a_dst, strides, pad, pad),
			     "backward data descriptor");
			STEP(prim_create(&c->bwd_d, &d, &c->fwd, "backward data", err, errlen), "backward data");
		}
		STEP(dnnl_convolution_backward_weights_desc_init(&d, dnnl_convolution_direct, &a_src, &a_wei, &u_bias, &a_dst,
		                                                 strides, pad, pad),
		     "backward weights descriptor");
		// Backward weights sums over the batch and the image in pieces, one
		// per thread, split by the thread count at creation: a fixed count
		// makes the sums the same however many cores the process has (the
		// forward and backward data primitives sum each value in one thread).
		int threads = omp_get_max_threads();
		omp_set_num_threads(s->reduce_threads);
		st = prim_create(&c->bwd_w, &d, &c->fwd, "backward weights", err, errlen);
		omp_set_num_threads(threads);
		STEP(st, "backward weights");
	}

	// Forward. Its x in the primitive's layout is kept for backward weights
	// when that takes the same layout.
	size_t cur = 0;
	const dnnl_memory_desc_t *w_src_md = s->train ? md(&c->bwd_w, dnnl_query_src_md) : NULL;
	int share_src = w_src_md && dnnl_memory_desc_equal(w_src_md, md(&c->fwd, dnnl_query_src_md));
	STEP(operand_init(&c->f_src, &u_src, md(&c->fwd, dnnl_query_src_md), 1, share_src, &cur), "forward source");
	STEP(operand_init(&c->f_wei, &u_wei, md(&c->fwd, dnnl_query_weights_md), 1, 0, &cur), "forward weights");
	STEP(operand_init(&c->f_bias, &u_bias, dnnl_primitive_desc_query_md(c->fwd.pd, dnnl_query_weights_md, 1), 1, 0, &cur),
	     "forward bias");
	STEP(operand_init(&c->f_dst, &u_dst, md(&c->fwd, dnnl_query_dst_md), 0, 0, &cur), "forward destination");
	c->fwd.temp = cur;
	c->reorders = !!c->f_src.reorder + !!c->f_wei.reorder + !!c->f_bias.reorder + !!c->f_dst.reorder;
	if (s->train) {
		// Backward weights, then backward data: dy in one layout for both is
		// reordered once, into a kept buffer.
		const dnnl_memory_desc_t *w_dy_md = md(&c->bwd_w, dnnl_query_diff_dst_md);
		int share_dy = s->diff_src && dnnl_memory_desc_equal(w_dy_md, md(&c->bwd_d, dnnl_query_diff_dst_md));
		cur = 0;
		if (share_src) {
			c->w_src = &c->f_src;
		} else {
			STEP(operand_init(&c->w_src_own, &u_src, w_src_md, 1, 0, &cur), "backward weights source");
			c->w_src = &c->w_src_own;
			c->reorders += !!c->w_src->reorder;
		}
		STEP(operand_init(&c->w_dy, &u_dst, w_dy_md, 1, share_dy, &cur), "backward weights dy");
		STEP(operand_init(&c->w_dw, &u_wei, md(&c->bwd_w, dnnl_query_diff_weights_md), 0, 0, &cur), "backward weights dw");
		STEP(operand_init(&c->w_db, &u_bias, dnnl_primitive_desc_query_md(c->bwd_w.pd, dnnl_query_diff_weights_md, 1), 0, 0, &cur),
		     "backward weights db");
		c->bwd_w.temp = cur;
		c->reorders += !!c->w_dy.reorder + !!c->w_dw.reorder + !!c->w_db.reorder;
		if (s->diff_src) {
			cur = 0;
			if (share_dy) {
				c->d_dy = &c->w_dy;
			} else {
				STEP(operand_init(&c->d_dy_own, &u_dst, md(&c->bwd_d, dnnl_query_diff_dst_md), 1, 0, &cur), "backward data dy");
				c->d_dy = &c->d_dy_own;
				c->reorders += !!c->d_dy->reorder;
			}
			STEP(operand_init(&c->d_wei, &u_wei, md(&c->bwd_d, dnnl_query_weights_md), 1, 0, &cur), "backward data weights");
			STEP(operand_init(&c->d_dx, &u_src, md(&c->bwd_d, dnnl_query_diff_src_md), 0, 0, &cur), "backward data dx");
			c->bwd_d.temp = cur;
			c->reorders += !!c->d_wei.reorder + !!c->d_dx.reorder;
		}
	}
#undef STEP
	size_t need = c->fwd.temp;
	if (c->bwd_w.temp > need) need = c->bwd_w.temp;
	if (c->bwd_d.temp > need) need = c->bwd_d.temp;
	if (need > arena_need) arena_need = need;
	al_operand *own[] = {&c->f_src, &c->w_src_own, &c->w_dy, &c->d_dy_own};
	for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) c->kept_bytes += own[i]->own_bytes;
	*out = c;
	return dnnl_success;
}

void al_conv_destroy(al_conv *c) {
	if (!c) return;
	al_operand *ops[] = {&c->f_src, &c->f_wei, &c->f_bias, &c->f_dst, &c->d_wei, &c->d_dy_own, &c->d_dx,
	                     &c->w_src_own, &c->w_dy, &c->w_dw, &c->w_db};
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) operand_destroy(ops[i]);
	prim_destroy(&c->fwd);
	prim_destroy(&c->bwd_d);
	prim_destroy(&c->bwd_w);
	free(c);
}

static dnnl_status_t execute(al_prim *p, int n, dnnl_exec_arg_t *args) {
	return dnnl_primitive_execute(p->prim, al_stream, n, args);
}

dnnl_status_t al_conv_forward(al_conv *c, const float *x, const float *w, const float *b, float *y) {
	TRY(grow(arena_need));
	c->src_fresh = c->dy_fresh = 0; // a new step
	TRY(bind(&c->f_src, x));
	TRY(bind(&c->f_wei, w));
	TRY(bind(&c->f_bias, b));
	TRY(bind(&c->f_dst, y));
	dnnl_status_t st = run_reorder(&c->f_src);
	if (st == dnnl_success) st = run_reorder(&c->f_wei);
	if (st == dnnl_success) st = run_reorder(&c->f_bias);
	if (st == dnnl_success) {
		dnnl_exec_arg_t args[] = {
		    {DNNL_ARG_SRC, c->f_src.prim},
		    {DNNL_ARG_WEIGHTS, c->f_wei.prim},
		    {DNNL_ARG_BIAS, c->f_bias.prim},
		    {DNNL_ARG_DST, c->f_dst.prim},
		};
		st = execute(&c->fwd, 4, args);
	}
	if (st == dnnl_success) st = run_reorder(&c->f_dst);
	if (st == dnnl_success) st = dnnl_stream_wait(al_stream);
	if (st == dnnl_success && c->f_src.own) {
		c->src_ptr = (uintptr_t)x;
		c->src_fresh = 1;
	}
	unbind(&c->f_src);
	unbind(&c->f_wei);
	unbind(&c->f_bias);
	unbind(&c->f_dst);
	return st;
}

// dy_in makes the backward primitives' dy current: the kept buffer is
// reordered once per step.
static dnnl_status_t dy_in(al_conv *c, al_operand *o, const float *dy) {
	TRY(bind(o, dy));
	if (o->own) {
		if (c->dy_fresh && c->dy_ptr == (uintptr_t)dy) return dnnl_success;
		c->dy_fresh = 0;
		TRY(run_reorder(o));
		c->dy_ptr = (uintptr_t)dy;
		c->dy_fresh = 1;
		return dnnl_success;
	}
	return run_reorder(o);
}

dnnl_status_t al_conv_backward_data(al_conv *c, const float *w, const float *dy, float *dx) {
	if (!c->bwd_d.prim) return dnnl_invalid_arguments;
	TRY(grow(arena_need));
	TRY(bind(&c->d_wei, w));
	TRY(bind(&c->d_dx, dx));
	dnnl_status_t st = dy_in(c, c->d_dy, dy);
	if (st == dnnl_success) st = run_reorder(&c->d_wei);
	if (st == dnnl_success) {
		dnnl_exec_arg_t args[] = {
		    {DNNL_ARG_DIFF_DST, c->d_dy->prim},
		    {DNNL_ARG_WEIGHTS, c->d_wei.prim},
		    {DNNL_ARG_DIFF_SRC, c->d_dx.prim},
		};
		st = execute(&c->bwd_d, 3, args);
	}
	if (st == dnnl_success) st = run_reorder(&c->d_dx);
	if (st == dnnl_success) st = dnnl_stream_wait(al_stream);
	if (st != dnnl_success) c->dy_fresh = 0;
	unbind(c->d_dy);
	unbind(&c->d_wei);
	unbind(&c->d_dx);
	return st;
}

dnnl_status_t al_conv_backward_weights(al_conv *c, const float *x, const float *dy, float *dw, float *db) {
	if (!c->bwd_w.prim) return dnnl_invalid_arguments;
	TRY(grow(arena_need));
	al_operand *src = c->w_src;
	TRY(bind(src, x));
	TRY(bind(&c->w_dw, dw));
	TRY(bind(&c->w_db, db));
	dnnl_status_t st = dnnl_success;
	// x in forward's layout is still there unless another x came in.
	if (!(src->own && c->src_fresh && c->src_ptr == (uintptr_t)x)) {
		c->src_fresh = 0;
		st = run_reorder(src);
	}
	if (st == dnnl_success) st = dy_in(c, &c->w_dy, dy);
	if (st == dnnl_success) {
		dnnl_exec_arg_t args[] = {
		    {DNNL_ARG_SRC, src->prim},
		    {DNNL_ARG_DIFF_DST, c->w_dy.prim},
		    {DNNL_ARG_DIFF_WEIGHTS, c->w_dw.prim},
		    {DNNL_ARG_DIFF_BIAS, c->w_db.prim},
		};
		st = execute(&c->bwd_w, 4, args);
	}
	if (st == dnnl_success) st = run_reorder(&c->w_dw);
	if (st == dnnl_success) st = run_reorder(&c->w_db);
	if (st == dnnl_success) st = dnnl_stream_wait(al_stream);
	if (st != dnnl_success) c->dy_fresh = c->src_fresh = 0;
	unbind(src);
	unbind(&c->w_dy);
	unbind(&c->w_dw);
	unbind(&c->w_db);
	return st;
}

const char *al_conv_impl(const al_conv *c, int k) {
	const al_prim *p = k == 0 ? &c->fwd : k == 1 ? &c->bwd_d : &c->bwd_w;
	const char *name = "";
	if (p->pd) dnnl_primitive_desc_query(p->pd, dnnl_query_impl_info_str, 0, &name);
	return name;
}

// layout writes md's layout in oneDNN's notation: the dimensions from the
// outermost (a letter each, upper case when blocked), then the inner blocks
// ("aBcd16b": NCHW with the channels in blocks of 16).
static void layout(const dnnl_memory_desc_t *m, char *buf, size_t len) {
	if (!m || m->format_kind != dnnl_blocked) {
		snprintf(buf, len, "?");
		return;
	}
	const dnnl_blocking_desc_t *b = &m->format_desc.blocking;
	int order[DNNL_MAX_NDIMS], n = m->ndims, blocked[DNNL_MAX_NDIMS] = {0};
	for (int i = 0; i < b->inner_nblks; i++) blocked[b->inner_idxs[i]] = 1;
	for (int i = 0; i < n; i++) order[i] = i;
	for (int i = 1; i < n; i++) { // by stride, outermost first; stable
		for (int j = i; j > 0 && b->strides[order[j]] > b->strides[order[j - 1]]; j--) {
			int t = order[j];
			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	}
	size_t k = 0;
	for (int i = 0; i < n && k + 1 < len; i++) buf[k++] = (char)((blocked[order[i]] ? 'A' : 'a') + order[i]);
	for (int i = 0; i < b->inner_nblks && k + 1 < len; i++) {
		int w = snprintf(buf + k, len - k, "%d%c", (int)b->inner_blks[i], 'a' + (int)b->inner_idxs[i]);
		if (w < 0) break;
		k += (size_t)w;
	}
	buf[k < len ? k : len - 1] = 0;
}

void al_conv_layouts(const al_conv *c, int k, char *buf, size_t len) {
	const al_prim *p = k == 0 ? &c->fwd : k == 1 ? &c->bwd_d : &c->bwd_w;
	buf[0] = 0;
	if (!p->pd) return;
	dnnl_query_t q[3];
	if (k == 0) {
		q[0] = dnnl_query_src_md, q[1] = dnnl_query_weights_md, q[2] = dnnl_query_dst_md;
	} else if (k == 1) {
		q[0] = dnnl_query_diff_src_md, q[1] = dnnl_query_weights_md, q[2] = dnnl_query_diff_dst_md;
	} else {
		q[0] = dnnl_query_src_md, q[1] = dnnl_query_diff_weights_md, q[2] = dnnl_query_diff_dst_md;
	}
	size_t used = 0;
	for (int i = 0; i < 3 && used + 1 < len; i++) {
		char one[64];
		layout(dnnl_primitive_desc_query_md(p->pd, q[i], 0), one, sizeof one);
		int w = snprintf(buf + used, len - used, "%s%s", i ? "/" : "", one);
		if (w < 0) break;
		used += (size_t)w;
	}
}

int al_conv_reorders(const al_conv *c) { return c->reorders; }

void al_conv_memory(const al_conv *c, size_t *kept_bytes, size_t *temp, size_t *scratch) {
	*kept_bytes = c->kept_bytes;
	*temp = c->fwd.temp;
	if (c->bwd_w.temp > *temp) *temp = c->bwd_w.temp;
	if (c->bwd_d.temp > *temp) *temp = c->bwd_d.temp;
	*scratch = 0;
	const al_prim *ps[] = {&c->fwd, &c->bwd_d, &c->bwd_w};
	for (int i = 0; i < 3; i++) {
		int64_t n = 0;
		if (ps[i]->pd && dnnl_primitive_desc_query(ps[i]->pd, dnnl_query_memory_consumption_s64, 0, &n) == dnnl_success &&
		    n > 0 && (size_t)n > *scratch)
			*scratch = (size_t)n;
	}
}
