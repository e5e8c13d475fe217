// Package kernels is the GPU backend's own CUDA C: the sources (kernels.h
// holds each kernel's per-element body as a __host__ __device__ function,
// kernels.cu the __global__ wrappers), the PTX that `go generate` compiles from
// them for sm_80 and sm_90 (committed and embedded, so a cuda build needs no
// nvcc), and a host build of the same bodies (Launch) so that their
// arithmetic is tested on the CPU.
//
// Every kernel takes the number of work items n first, then its arguments,
// each 8 bytes (a device pointer, an int64_t or a double), and loops over its
// items grid-stride, so any grid covers them (Geometry). Activations are
// channel-major, [C][B][H][W] ("CNHW"); the images arrive NCHW and the
// classifier takes NCHW-flattened features, as PyTorch's.
//
//	im2col(n, x, col, batch, channels, side, kernel, stride, pad, outSide)
//	    n = channels*kernel*kernel*batch*outSide*outSide. col is
//	    [channels*K*K][batch*outSide*outSide]; row (c*K+ky)*K+kx, column
//	    b*outSide*outSide + oy*outSide + ox holds x[c][b][oy*stride-pad+ky][ox*stride-pad+kx], 0 outside.
//	col2im(n, col, x, batch, channels, side, kernel, stride, pad, outSide)
//	    n = channels*batch*side*side. x = the sum of the col entries that im2col
//	    took from it, added from 0 in (ky, kx) order (the CPU's order): overwrites x.
//	bias_act(n, y, bias, inner, channels, relu)
//	    y[i] = act(y[i] + bias[(i/inner)%channels]); act is ReLU when relu != 0
//	    (max(x, 0) with NaN kept and -0 made +0, as alexnet's reluBits), else identity.
//	relu_backward(n, y, dy, dx)
//	    dx[i] = dy[i] where y[i] (a ReLU output) is not +0, else 0 (PyTorch's
//	    threshold_backward on the output). dx may be dy.
//	maxpool_forward(n, x, y, argmax, side, outSide, kernel, stride)
//	    n = planes*outSide*outSide; plane q = i/(outSide*outSide). PyTorch's
//	    MaxPool2d, no padding: the first maximum of the window wins a tie, -0 and
//	    +0 are equal, a NaN wins (the last NaN of the window). argmax (int32) is
//	    the offset of the maximum within its plane.
//	maxpool_backward(n, dy, argmax, dx, side, outSide, kernel, stride)
//	    n = planes*side*side. dx[p] = the sum of dy over the outputs of p's plane
//	    whose argmax is p, added from 0 in increasing output index (the CPU's
//	    order, so the result is the CPU's bit for bit).
//	mask_multiply(n, x, mask, y)
//	    y[i] = x[i]*mask[i] (dropout, forward and backward).
//	softmax_xent(n, logits, targets, dlogits, logp, classes)
//	    n = rows. Per row, as alexnet's softmaxCE: m = max, s = the double sum of
//	    exp(double(z-m)), logp = z - m - float(log(s)); w = the sum of the row's
//	    targets; dlogits = (float(exp(double(logp)))*w - t) for w != 0, else 0.
//	    The host adds the loss from logp and the targets in the CPU's order.
//	adam(n, p, g, m, v, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, bc2Sqrt, eps)
//	    alexnet.AdamElement with the coefficients of alexnet.AdamStep passed as
//	    doubles: bit-identical to the CPU's Adam (no contraction: -fmad=false).
//	nonfinite(n, x, flag)
//	    flag[0] (int32) = 1 when any x[i] is NaN or infinite; untouched otherwise.
//	nchw_to_cnhw(n, src, dst, batch, channels, hw) and cnhw_to_nchw(...)
//	    n = batch*channels*hw: the layout change at the features' two ends.
package kernels
