// kernels.cu: the __global__ wrappers of the bodies in kernels.h, one per
// kernel of doc.go, named as there (extern "C": the PTX entry names are the
// plain names). Each takes the item count n and 8-byte arguments (pointers,
// int64_t, double; the host launches every parameter as 8 bytes) and loops
// grid-stride, so any grid covers the n items (Geometry).
//
// gen.sh compiles this file to the committed PTX.
#include "kernels.h"

// FOR_EACH_ITEM loops i over this thread's items of n, grid-stride. The
// products are int64_t so that no index wraps at 2^31.
#define FOR_EACH_ITEM(i, n) \
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
	     i += (int64_t)blockDim.x * gridDim.x)

extern "C" __global__ void im2col(int64_t n, const float *x, float *col, int64_t batch,
	int64_t channels, int64_t side, int64_t kernel, int64_t stride, int64_t pad, int64_t outSide)
{
	FOR_EACH_ITEM(i, n)
	im2col_body(i, x, col, batch, channels, side, kernel, stride, pad, outSide);
}

extern "C" __global__ void col2im(int64_t n, const float *col, float *x, int64_t batch,
	int64_t channels, int64_t side, int64_t kernel, int64_t stride, int64_t pad, int64_t outSide)
{
	FOR_EACH_ITEM(i, n)
	col2im_body(i, col, x, batch, channels, side, kernel, stride, pad, outSide);
}

extern "C" __global__ void bias_act(int64_t n, float *y, const float *bias, int64_t inner,
	int64_t channels, int64_t relu)
{
	FOR_EACH_ITEM(i, n)
	bias_act_body(i, y, bias, inner, channels, relu);
}

extern "C" __global__ void relu_backward(int64_t n, const float *y, const float *dy, float *dx)
{
	FOR_EACH_ITEM(i, n)
	relu_backward_body(i, y, dy, dx);
}

extern "C" __global__ void maxpool_forward(int64_t n, const float *x, float *y, int32_t *argmax,
	int64_t side, int64_t outSide, int64_t kernel, int64_t stride)
{
	FOR_EACH_ITEM(i, n)
	maxpool_forward_body(i, x, y, argmax, side, outSide, kernel, stride);
}

extern "C" __global__ void maxpool_backward(int64_t n, const float *dy, const int32_t *argmax,
	float *dx, int64_t side, int64_t outSide, int64_t kernel, int64_t stride)
{
	FOR_EACH_ITEM(i, n)
	maxpool_backward_body(i, dy, argmax, dx, side, outSide, kernel, stride);
}

extern "C" __global__ void mask_multiply(int64_t n, const float *x, const float *mask, float *y)
{
	FOR_EACH_ITEM(i, n)
	mask_multiply_body(i, x, mask, y);
}

extern "C" __global__ void softmax_xent(int64_t n, const float *logits, const float *targets,
	float *dlogits, float *logp, int64_t classes)
{
	FOR_EACH_ITEM(r, n)
	softmax_xent_body(r, logits, targets, dlogits, logp, classes);
}

extern "C" __global__ void adam(int64_t n, float *p, const float *g, float *m, float *v,
	double beta1, double beta2, double oneMinusBeta1, double oneMinusBeta2,
	double stepSize, double bc2Sqrt, double eps)
{
	FOR_EACH_ITEM(i, n)
	adam_body(i, p, g, m, v, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, bc2Sqrt, eps);
}

extern "C" __global__ void nonfinite(int64_t n, const float *x, int32_t *flag)
{
	FOR_EACH_ITEM(i, n)
	nonfinite_body(i, x, flag);
}

extern "C" __global__ void nchw_to_cnhw(int64_t n, const float *src, float *dst, int64_t batch,
	int64_t channels, int64_t hw)
{
	FOR_EACH_ITEM(i, n)
	nchw_to_cnhw_body(i, src, dst, batch, channels, hw);
}

extern "C" __global__ void cnhw_to_nchw(int64_t n, const float *src, float *dst, int64_t batch,
	int64_t channels, int64_t hw)
{
	FOR_EACH_ITEM(i, n)
	cnhw_to_nchw_body(i, src, dst, batch, channels, hw);
}
