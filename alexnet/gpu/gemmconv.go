package gpu

import "fmt"

// gemmConv is the model's own convolution: im2col of the whole batch into one
// patch buffer, shared by every layer (one stream: one layer at a time uses
// it), and one GEMM per product.
type gemmConv struct {
	dev     Device
	patches Ptr
	size    int // floats in patches
}

// NewGemmConv returns the im2col + GEMM convolution on dev.
func NewGemmConv(dev Device) Convolution { return &gemmConv{dev: dev} }

func (c *gemmConv) Name() string { return "gemm" }

// rows and cols are the patch matrix's shape, [In*K*K][Batch*OutSide^2].
func patchShape(s ConvShape) (rows, cols int) {
	return s.In * s.Kernel * s.Kernel, s.Batch * s.OutSide * s.OutSide
}

// Prepare checks the shape and grows the patch buffer to it.
func (c *gemmConv) Prepare(s ConvShape) error {
	if err := s.validate(); err != nil {
		return err
	}
	rows, cols := patchShape(s)
	if rows*cols <= c.size {
		return nil
	}
	if c.size > 0 {
		// Work issued on the old buffer must end before it is freed.
		if err := c.dev.Sync(); err != nil {
			return fmt.Errorf("gpu: gemm conv: %w", err)
		}
		c.dev.Free(c.patches)
		c.patches, c.size = 0, 0
	}
	p, err := c.dev.Alloc(rows * cols)
	if err != nil {
		return fmt.Errorf("gpu: gemm conv: allocate the patch buffer (%dx%d floats): %w", rows, cols, err)
	}
	c.patches, c.size = p, rows*cols
	return nil
}

// prepared reports a shape the patch buffer was not grown to.
func (c *gemmConv) prepared(s ConvShape) error {
	if rows, cols := patchShape(s); rows*cols > c.size {
		return fmt.Errorf("gpu: gemm conv %+v was not prepared (patch buffer of %d floats, needs %d)", s, c.size, rows*cols)
	}
	return nil
}

// im2col writes x's patches into the patch buffer.
func (c *gemmConv) im2col(s ConvShape, x Ptr) error {
	if err := c.prepared(s); err != nil {
		return err
	}
	rows, cols := patchShape(s)
	c.dev.Launch("im2col", int64(rows*cols), x, c.patches,
		int64(s.Batch), int64(s.In), int64(s.Side), int64(s.Kernel), int64(s.Stride), int64(s.Pad), int64(s.OutSide))
	return nil
}

// Forward: y [Out][B*HW] = W [Out][In*K*K] x patches.
func (c *gemmConv) Forward(s ConvShape, x, w, y Ptr) error {
	if err := c.im2col(s, x); err != nil {
		return err
	}
	rows, cols := patchShape(s)
	c.dev.Gemm(false, false, s.Out, cols, rows, 1, w, rows, c.patches, cols, 0, y, cols)
	return nil
}

// BackwardFilter: dw [Out][In*K*K] = dy x patches^T, the patches computed
// again (keeping every layer's would cost more memory than the GEMM it saves).
func (c *gemmConv) BackwardFilter(s ConvShape, x, dy, dw Ptr) error {
	if err := c.im2col(s, x); err != nil {
		return err
	}
	rows, cols := patchShape(s)
	c.dev.Gemm(false, true, s.Out, rows, cols, 1, dy, cols, c.patches, cols, 0, dw, rows)
	return nil
}

// BackwardData: the patches' gradient W^T x dy, then col2im adds it back.
func (c *gemmConv) BackwardData(s ConvShape, w, dy, dx Ptr) error {
	if err := c.prepared(s); err != nil {
		return err
	}
	rows, cols := patchShape(s)
	c.dev.Gemm(true, false, rows, cols, s.Out, 1, w, rows, dy, cols, 0, c.patches, cols)
	c.dev.Launch("col2im", int64(s.In*s.Batch*s.Side*s.Side), c.patches, dx,
		int64(s.Batch), int64(s.In), int64(s.Side), int64(s.Kernel), int64(s.Stride), int64(s.Pad), int64(s.OutSide))
	return nil
}

// Close frees the patch buffer; closing twice is safe.
func (c *gemmConv) Close() error {
	if c.size > 0 {
		c.dev.Free(c.patches)
		c.patches, c.size = 0, 0
	}
	return nil
}

// validate rejects a shape whose output side does not follow from its input
// (PyTorch's floor mode).
func (s ConvShape) validate() error {
	if s.Batch < 1 || s.In < 1 || s.Out < 1 || s.Kernel < 1 || s.Stride < 1 || s.Pad < 0 || s.Side < 1 ||
		s.OutSide < 1 || s.OutSide != (s.Side+2*s.Pad-s.Kernel)/s.Stride+1 {
		return fmt.Errorf("gpu: convolution shape %+v does not work out", s)
	}
	return nil
}
