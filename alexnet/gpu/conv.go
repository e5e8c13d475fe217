package gpu

// ConvShape is one convolution of the feature stack on the device. Activations
// live channel-major, [channels][batch][side][side] ("CNHW"), so that one GEMM
// covers the whole batch: W [Out, In*K*K] times the patches [In*K*K, Batch*HW]
// is already the next layer's input. Weights are PyTorch's OIHW.
type ConvShape struct {
	Batch, In, Out, Kernel, Stride, Pad, Side, OutSide int
}

// Convolution computes a convolution layer's three products without the bias
// (the model adds it, fused with ReLU): im2col + GEMM (the model's own) or
// cuDNN (package alexnet/cuda). Each call is issued on the device's stream.
type Convolution interface {
	// Name is what the logs call it ("gemm", "cudnn").
	Name() string
	// Prepare is called once per shape before it is used (cuDNN picks its
	// algorithms and workspace there).
	Prepare(s ConvShape) error
	// Forward: y = conv(x, w), overwriting y.
	Forward(s ConvShape, x, w, y Ptr) error
	// BackwardData: dx = the gradient of the input, overwriting dx.
	BackwardData(s ConvShape, w, dy, dx Ptr) error
	// BackwardFilter: dw = the gradient of the weights, overwriting dw.
	BackwardFilter(s ConvShape, x, dy, dw Ptr) error
	Close() error
}
