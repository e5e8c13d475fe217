// Package gpu is the AlexNet model on a Device: the same model as the CPU's
// alexnet.Net (same layout, same masks, same loss), computed by our kernels
// (package kernels) and row-major GEMMs, issued in order on one stream. Model
// implements alexnet.Backend; package alexnet/cuda gives it a CUDA device
// and, optionally, cuDNN's convolutions, and package hostdev a device on the
// CPU, on which the tests check it against alexnet.Net.
//
// # Memory
//
// The parameters, the gradient and Adam's moments are four flat vectors in
// the CPU's layout (state_dict order, alexnet.Spec.Layout): each layer's
// weight and bias are offsets into them, and the backward pass writes each
// gradient straight at its offset, so the gradient goes to the ring, and the
// averaged one comes back, in one copy each. The activations of a batch and
// their gradients have a buffer per layer, allocated once per batch size (the
// training batch, and the evaluation batch on the first Logits).
//
// # One step on the device
//
//	upload the images (NCHW) -> nchw_to_cnhw
//	per conv: im2col + GEMM (whole batch), bias_act (bias + ReLU), maxpool_forward
//	cnhw_to_nchw -> per linear: mask_multiply (dropout), GEMM, bias_act
//	softmax_xent -> logp to the host (the loss is summed there, as the CPU sums it)
//	classifier backward, last layer first: relu_backward, weight GEMM, bias
//	  GEMV, data GEMM and mask (but for the first layer)
//	  -> nonfinite, copy grad[ClassifierOffset():] to the host, mark
//	the first layer's data GEMM and mask -> nchw_to_cnhw
//	conv backward, last first: maxpool_backward, relu_backward, im2col +
//	  weight GEMM, bias GEMV, data GEMM + col2im (not for the first conv)
//	  -> nonfinite, copy grad[:ClassifierOffset()] to the host
//	adam over the flat vectors (Update)
//
// Activations are channel-major, [C][B][H][W], through the convolutions, so
// that one GEMM covers the whole batch; the classifier takes them NCHW, as
// PyTorch flattens them. The host waits for the classifier's mark and hands
// its part of the gradient to the ring while the device computes the
// convolutions' backward.
//
// With the features frozen (alexnet.FreezeFeatures) the step ends at the
// classifier's mark: no convolution's backward, no gradient buffers for
// their activations, and Adam runs over the classifier's range only.
package gpu
