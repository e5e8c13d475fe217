/*
 * kernels.h: the per-element body of every kernel in doc.go, one function
 * each, compiled twice: by nvcc for the device (kernels.cu wraps each body in
 * a grid-stride __global__ function) and by the host C compiler (host.c runs
 * the same bodies on the CPU, so that the tests check the device's arithmetic).
 *
 * Plain C that C++ (nvcc) also accepts. Indices are int64_t: conv1's patch
 * matrix at batch 128 has 140M elements. No fused multiply-add anywhere: the
 * host build has -ffp-contract=off, the PTX -fmad=false.
 */
#ifndef ALEXRING_KERNELS_H
#define ALEXRING_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define KERNEL_HD __host__ __device__
#else
#define KERNEL_HD
#endif

/* float_bits is x's IEEE-754 bits. */
static inline KERNEL_HD uint32_t float_bits(float x)
{
#ifdef __CUDA_ARCH__
	return __float_as_uint(x);
#else
	uint32_t b;
	memcpy(&b, &x, sizeof b);
	return b;
#endif
}

/*
 * relu_value is alexnet's reluBits: max(x, 0) with -0 and negatives made +0
 * and a NaN (whatever its sign bit) kept as it is. The select copies x's bits.
 */
static inline KERNEL_HD float relu_value(float x)
{
	return (x > 0.0f || x != x) ? x : 0.0f;
}

/* im2col: see doc.go. i runs over col, [channels*K*K][batch*outSide^2]. */
static inline KERNEL_HD void im2col_body(int64_t i, const float *x, float *col,
	int64_t batch, int64_t channels, int64_t side, int64_t kernel,
	int64_t stride, int64_t pad, int64_t outSide)
{
	int64_t hw = outSide * outSide;
	int64_t cols = batch * hw;
	int64_t row = i / cols, j = i % cols;
	int64_t c = row / (kernel * kernel);
	int64_t ky = (row / kernel) % kernel, kx = row % kernel;
	int64_t b = j / hw, oy = (j / outSide) % outSide, ox = j % outSide;
	int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
	float v = 0.0f;
	if (iy >= 0 && iy < side && ix >= 0 && ix < side)
		v = x[((c * batch + b) * side + iy) * side + ix];
	col[i] = v;
}

/*
 * col2im: see doc.go. i runs over x, [channels][batch][side][side]: each
 * pixel gathers the patch entries im2col took from it, added from 0 in
 * (ky, kx) order as the CPU's scatter adds them, so the sum is the CPU's bit
 * for bit.
 */
static inline KERNEL_HD void col2im_body(int64_t i, const float *col, float *x,
	int64_t batch, int64_t channels, int64_t side, int64_t kernel,
	int64_t stride, int64_t pad, int64_t outSide)
{
	int64_t plane = side * side;
	int64_t c = i / (batch * plane), b = (i / plane) % batch;
	int64_t iy = (i / side) % side, ix = i % side;
	int64_t hw = outSide * outSide, cols = batch * hw;
	float sum = 0.0f;
	(void)channels;
	for (int64_t ky = 0; ky < kernel; ky++) {
		int64_t ty = iy + pad - ky; /* = oy*stride */
		if (ty < 0 || ty % stride != 0 || ty / stride >= outSide)
			continue;
		int64_t oy = ty / stride;
		for (int64_t kx = 0; kx < kernel; kx++) {
			int64_t tx = ix + pad - kx;
			if (tx < 0 || tx % stride != 0 || tx / stride >= outSide)
				continue;
			int64_t row = (c * kernel + ky) * kernel + kx;
			sum += col[row * cols + b * hw + oy * outSide + tx / stride];
		}
	}
	x[i] = sum;
}

/* bias_act: see doc.go. */
static inline KERNEL_HD void bias_act_body(int64_t i, float *y, const float *bias,
	int64_t inner, int64_t channels, int64_t relu)
{
	float v = y[i] + bias[(i / inner) % channels];
	y[i] = relu != 0 ? relu_value(v) : v;
}

/*
 * relu_backward: alexnet's nonZero: dy passes where the output's bits are not
 * those of +0 (so a NaN or, off a ReLU, -0 passes), else +0.
 */
static inline KERNEL_HD void relu_backward_body(int64_t i, const float *y,
	const float *dy, float *dx)
{
	dx[i] = float_bits(y[i]) != 0u ? dy[i] : 0.0f;
}

/*
 * maxpool_forward: see doc.go. A float comparison already holds -0 and +0
 * equal and keeps the first of a tie; any NaN in the window overrides it with
 * the window's last NaN (PyTorch's val > max || isnan(val)).
 */
static inline KERNEL_HD void maxpool_forward_body(int64_t i, const float *x,
	float *y, int32_t *argmax, int64_t side, int64_t outSide, int64_t kernel,
	int64_t stride)
{
	int64_t q = i / (outSide * outSide);
	int64_t oy = (i / outSide) % outSide, ox = i % outSide;
	const float *plane = x + q * side * side;
	int64_t first = oy * stride * side + ox * stride;
	int64_t best = first, nan_at = -1;
	float top = plane[first];
	for (int64_t ky = 0; ky < kernel; ky++) {
		for (int64_t kx = 0; kx < kernel; kx++) {
			int64_t at = first + ky * side + kx;
			float v = plane[at];
			if (v > top) {
				top = v;
				best = at;
			}
			if (v != v)
				nan_at = at;
		}
	}
	if (nan_at >= 0)
		best = nan_at;
	y[i] = plane[best];
	argmax[i] = (int32_t)best;
}

/*
 * maxpool_backward: see doc.go. i runs over dx; the outputs whose windows
 * hold pixel (py, px) are visited in increasing output index, the order in
 * which the CPU scatters dy.
 */
static inline KERNEL_HD void maxpool_backward_body(int64_t i, const float *dy,
	const int32_t *argmax, float *dx, int64_t side, int64_t outSide,
	int64_t kernel, int64_t stride)
{
	int64_t plane = side * side, hw = outSide * outSide;
	int64_t q = i / plane, p = i % plane;
	int64_t py = p / side, px = p % side;
	/* Window oy covers rows oy*stride .. oy*stride+kernel-1. */
	int64_t y0 = py - kernel + 1 > 0 ? (py - kernel + 1 + stride - 1) / stride : 0;
	int64_t x0 = px - kernel + 1 > 0 ? (px - kernel + 1 + stride - 1) / stride : 0;
	int64_t y1 = py / stride < outSide - 1 ? py / stride : outSide - 1;
	int64_t x1 = px / stride < outSide - 1 ? px / stride : outSide - 1;
	const float *g = dy + q * hw;
	const int32_t *at = argmax + q * hw;
	float sum = 0.0f;
	for (int64_t oy = y0; oy <= y1; oy++)
		for (int64_t ox = x0; ox <= x1; ox++)
			if (at[oy * outSide + ox] == p)
				sum += g[oy * outSide + ox];
	dx[i] = sum;
}

/* mask_multiply: see doc.go. */
static inline KERNEL_HD void mask_multiply_body(int64_t i, const float *x,
	const float *mask, float *y)
{
	y[i] = x[i] * mask[i];
}

/*
 * softmax_xent: row r, alexnet's logSoftmaxRow and softmaxCEGrad with the
 * loss gradient 1: a float max, a double sum of exp, float logp, and the
 * gradient only for rows with targets (a zero row is the padding of a short
 * batch).
 */
static inline KERNEL_HD void softmax_xent_body(int64_t r, const float *logits,
	const float *targets, float *dlogits, float *logp, int64_t classes)
{
	const float *z = logits + r * classes;
	const float *t = targets + r * classes;
	float *d = dlogits + r * classes;
	float *lp = logp + r * classes;
	float m = z[0];
	for (int64_t k = 1; k < classes; k++)
		if (z[k] > m)
			m = z[k];
	double s = 0.0;
	for (int64_t k = 0; k < classes; k++)
		s += exp((double)(z[k] - m));
	float lse = (float)log(s);
	float w = 0.0f;
	for (int64_t k = 0; k < classes; k++) {
		lp[k] = z[k] - m - lse;
		w += t[k];
	}
	for (int64_t k = 0; k < classes; k++)
		d[k] = w != 0.0f ? (float)exp((double)lp[k]) * w - t[k] : 0.0f;
}

/*
 * adam: alexnet.AdamElement. The coefficients arrive as doubles holding
 * float32 values, so the conversions back are exact; every operation is
 * rounded to float as in Go (sqrt in double, then rounded, as Go's).
 */
static inline KERNEL_HD void adam_body(int64_t i, float *p, const float *g,
	float *m, float *v, double beta1, double beta2, double oneMinusBeta1,
	double oneMinusBeta2, double stepSize, double bc2Sqrt, double eps)
{
	float gi = g[i];
	float mi = m[i] * (float)beta1 + gi * (float)oneMinusBeta1;
	float vi = v[i] * (float)beta2 + gi * gi * (float)oneMinusBeta2;
	float denom = (float)sqrt((double)vi) / (float)bc2Sqrt + (float)eps;
	p[i] = p[i] - (float)stepSize * (mi / denom);
	m[i] = mi;
	v[i] = vi;
}

/* nonfinite: an exponent of all ones is an infinity or a NaN. */
static inline KERNEL_HD void nonfinite_body(int64_t i, const float *x, int32_t *flag)
{
	if ((float_bits(x[i]) & 0x7f800000u) == 0x7f800000u)
		flag[0] = 1;
}

/* nchw_to_cnhw: i runs over dst, [channels][batch][hw]. */
static inline KERNEL_HD void nchw_to_cnhw_body(int64_t i, const float *src, float *dst,
	int64_t batch, int64_t channels, int64_t hw)
{
	int64_t c = i / (batch * hw), b = (i / hw) % batch, s = i % hw;
	dst[i] = src[(b * channels + c) * hw + s];
}

/* cnhw_to_nchw: i runs over dst, [batch][channels][hw]. */
static inline KERNEL_HD void cnhw_to_nchw_body(int64_t i, const float *src, float *dst,
	int64_t batch, int64_t channels, int64_t hw)
{
	int64_t b = i / (channels * hw), c = (i / hw) % channels, s = i % hw;
	dst[i] = src[(c * batch + b) * hw + s];
}

#endif
