package gpu

import (
	"fmt"

	"github.com/alexring/alexring/alexnet"
)

// Max pooling is 3/2 after every pooled convolution (alexnet.Spec.Convs).
const poolKernel, poolStride = 3, 2

// pass is the device memory of one batch size: every layer's activations
// and, for training, their gradients, the dropout masks and the loss's
// inputs and outputs. A 0 Ptr is a buffer the pass does not need.
type pass struct {
	batch int
	train bool
	mem   []Ptr // every buffer, for free

	staging, input      Ptr // the images as they arrive (NCHW), and CNHW
	convs               []convLayer
	features, dfeatures Ptr // [B][Flat]: the last feature map NCHW, as PyTorch flattens it
	linears             []linearLayer
	ones                Ptr // B*HW of the largest feature map: the bias gradients' GEMV
	targets, logp       Ptr // [B][K]
	flags               Ptr // int32: the convolutions' part of the gradient, then the classifier's, non-finite

	hostTargets []float32   // the loss weights, as the CPU builds them
	masks       [][]float32 // the dropout masks, in DrawMasks order
	pinned      []float32   // HostAlloc: logp [B][K], then the two flags
	zeros       []float32   // the padding of a short batch, made on the first one
}

// convLayer is one convolution of a pass: its parameters and gradients in the
// flat vectors, its input (the previous layer's output) and its outputs,
// with their gradients.
type convLayer struct {
	alexnet.Conv
	shape                   ConvShape
	w, b, dw, db            Ptr
	x, dx                   Ptr // dx is 0 for the first: nothing needs the images' gradient
	y, dy                   Ptr // after bias and ReLU
	pooled, dpooled, argmax Ptr // when PoolAfter
}

// out is what the next layer reads, and its gradient.
func (l convLayer) out() (Ptr, Ptr) {
	if l.PoolAfter {
		return l.pooled, l.dpooled
	}
	return l.y, l.dy
}

// linearLayer is one layer of the classifier, like convLayer. With dropout
// before it, dropped is x*mask, what the GEMM reads.
type linearLayer struct {
	alexnet.Linear
	w, b, dw, db  Ptr
	x, dx         Ptr
	mask, dropped Ptr
	y, dy         Ptr // after bias (and ReLU)
}

// newPass allocates a pass for batch and prepares the convolutions' shapes.
func (m *Model) newPass(batch int, train bool) (*pass, error) {
	p := &pass{batch: batch, train: train}
	if err := m.allocPass(p); err != nil {
		m.freePass(p)
		return nil, err
	}
	return p, nil
}

// allocPass allocates p's buffers; on an error, those allocated are in p.mem.
func (m *Model) allocPass(p *pass) (err error) {
	batch, train := p.batch, p.train
	alloc := func(what string, n int) Ptr {
		if err != nil {
			return 0
		}
		ptr, aerr := m.dev.Alloc(n)
		if aerr != nil {
			err = fmt.Errorf("gpu: allocate %s (%d floats) at batch %d: %w", what, n, batch, aerr)
			return 0
		}
		p.mem = append(p.mem, ptr)
		return ptr
	}
	gradient := func(what string, n int) Ptr {
		if !train {
			return 0
		}
		return alloc("the gradient of "+what, n)
	}
	// With the features frozen no gradient flows below the classifier.
	featureGradient := func(what string, n int) Ptr {
		if m.trainFrom >= m.from {
			return 0
		}
		return gradient(what, n)
	}
	s := m.spec
	per := 3 * s.Input * s.Input
	p.staging = alloc("the images", batch*per)
	p.input = alloc("the images CNHW", batch*per)
	x, dx := p.input, Ptr(0)
	for _, c := range s.Convs() {
		l := convLayer{Conv: c, x: x, dx: dx, shape: ConvShape{Batch: batch, In: c.In, Out: c.Out,
			Kernel: c.Kernel, Stride: c.Stride, Pad: c.Pad, Side: c.InSide, OutSide: c.OutSide}}
		l.w, l.dw = m.tensor(c.WeightName)
		l.b, l.db = m.tensor(c.BiasName)
		n := c.Out * batch * c.OutSide * c.OutSide
		l.y, l.dy = alloc(c.WeightName+"'s output", n), featureGradient(c.WeightName+"'s output", n)
		if c.PoolAfter {
			n := c.Out * batch * c.PooledSide * c.PooledSide
			l.pooled, l.dpooled = alloc(c.WeightName+"'s pooling", n), featureGradient(c.WeightName+"'s pooling", n)
			l.argmax = alloc(c.WeightName+"'s pooling argmax", n)
		}
		if err != nil {
			return err
		}
		if err := m.conv.Prepare(l.shape); err != nil {
			return fmt.Errorf("gpu: prepare %s at batch %d: %w", c.WeightName, batch, err)
		}
		p.convs = append(p.convs, l)
		x, dx = l.out()
	}
	p.features, p.dfeatures = alloc("the features", batch*s.Flat()), featureGradient("the features", batch*s.Flat())
	x, dx = p.features, p.dfeatures
	var sizes []int
	if train && m.cfg.Dropout > 0 {
		sizes = s.MaskSizes(batch)
	}
	for _, li := range s.Linears() {
		l := linearLayer{Linear: li, x: x, dx: dx}
		l.w, l.dw = m.tensor(li.WeightName)
		l.b, l.db = m.tensor(li.BiasName)
		if li.DropoutBefore && len(sizes) > 0 {
			n := sizes[0]
			sizes = sizes[1:]
			l.mask, l.dropped = alloc("the dropout mask before "+li.WeightName, n), alloc("the dropped input of "+li.WeightName, n)
			p.masks = append(p.masks, make([]float32, n))
		}
		l.y, l.dy = alloc(li.WeightName+"'s output", batch*li.Out), gradient(li.WeightName+"'s output", batch*li.Out)
		p.linears = append(p.linears, l)
		x, dx = l.y, l.dy
	}
	if train {
		first := s.Convs()[0]
		ones := make([]float32, batch*first.OutSide*first.OutSide)
		for i := range ones {
			ones[i] = 1
		}
		p.ones = alloc("a vector of ones", len(ones))
		k := batch * s.Classes
		p.targets, p.logp, p.flags = alloc("the targets", k), alloc("the log-probabilities", k), alloc("the non-finite flags", 2)
		if err != nil {
			return err
		}
		m.dev.Upload(p.ones, ones)
		p.hostTargets = make([]float32, k)
		if p.pinned, err = m.dev.HostAlloc(k + 2); err != nil {
			return fmt.Errorf("gpu: allocate %d page-locked floats for the log-probabilities at batch %d: %w", k+2, batch, err)
		}
	}
	if err != nil {
		return err
	}
	return m.check(fmt.Sprintf("prepare batch %d", batch))
}

// freePass releases a pass's memory.
func (m *Model) freePass(p *pass) {
	for _, ptr := range p.mem {
		m.dev.Free(ptr)
	}
	if p.pinned != nil {
		m.dev.FreeHost(p.pinned)
	}
	p.mem, p.pinned = nil, nil
}

// checkImages rejects a batch that does not fit the pass, as the CPU's Net does.
func (p *pass) checkImages(s alexnet.Spec, images []float32, count int) error {
	per := 3 * s.Input * s.Input
	if count < 1 || count > p.batch || len(images) < count*per {
		return fmt.Errorf("%w: %d images in %d floats, the model takes 1 to %d of %d floats", alexnet.ErrBatch, count, len(images), p.batch, per)
	}
	return nil
}

// load uploads count images and zeroes the rest of the batch, as the CPU
// does: padding rows must be finite, or their zero targets would not keep
// them out of the gradient.
func (m *Model) load(p *pass, images []float32, count int) error {
	per := 3 * m.spec.Input * m.spec.Input
	m.dev.Upload(p.staging, images[:count*per])
	if count < p.batch {
		if p.zeros == nil {
			p.zeros = make([]float32, (p.batch-1)*per)
		}
		m.dev.Upload(p.staging.Add(count*per), p.zeros[:(p.batch-count)*per])
	}
	m.dev.Launch("nchw_to_cnhw", int64(p.batch*per), p.staging, p.input, int64(p.batch), int64(3), int64(m.spec.Input*m.spec.Input))
	return m.layerErr(fmt.Sprintf("load %d images", count))
}

// forward issues the pass from the loaded images to the logits (the last
// linear layer's y).
func (m *Model) forward(p *pass) error {
	d, b := m.dev, int64(p.batch)
	for _, l := range p.convs {
		if err := m.conv.Forward(l.shape, l.x, l.w, l.y); err != nil {
			return fmt.Errorf("%s convolution %s forward: %w", m.conv.Name(), l.WeightName, err)
		}
		hw := int64(l.OutSide * l.OutSide)
		d.Launch("bias_act", int64(l.Out)*b*hw, l.y, l.b, b*hw, int64(l.Out), int64(1))
		if l.PoolAfter {
			d.Launch("maxpool_forward", int64(l.Out)*b*int64(l.PooledSide*l.PooledSide), l.y, l.pooled, l.argmax,
				int64(l.OutSide), int64(l.PooledSide), int64(poolKernel), int64(poolStride))
		}
		if err := m.layerErr(l.WeightName + " forward"); err != nil {
			return err
		}
	}
	last := p.convs[len(p.convs)-1]
	x, _ := last.out()
	hw := int64(last.PooledSide * last.PooledSide)
	d.Launch("cnhw_to_nchw", int64(last.Out)*b*hw, x, p.features, b, int64(last.Out), hw)
	for _, l := range p.linears {
		x := l.x
		if l.mask != 0 {
			d.Launch("mask_multiply", b*int64(l.In), l.x, l.mask, l.dropped)
			x = l.dropped
		}
		// y [B][Out] = x [B][In] W^T, W [Out][In] as PyTorch stores it.
		d.Gemm(false, true, p.batch, l.Out, l.In, 1, x, l.In, l.w, l.In, 0, l.y, l.Out)
		relu := int64(0)
		if l.ReLUAfter {
			relu = 1
		}
		d.Launch("bias_act", b*int64(l.Out), l.y, l.b, int64(1), int64(l.Out), relu)
		if err := m.layerErr(l.WeightName + " forward"); err != nil {
			return err
		}
	}
	return nil
}

// backwardClassifier issues the classifier's backward pass from dlogits (the
// last layer's dy) to its parameters' gradients, and every layer's input
// gradient but the first's (backwardFeatures starts with it).
func (m *Model) backwardClassifier(p *pass) error {
	d, b := m.dev, int64(p.batch)
	for i := len(p.linears) - 1; i >= 0; i-- {
		l := p.linears[i]
		if l.ReLUAfter {
			d.Launch("relu_backward", b*int64(l.Out), l.y, l.dy, l.dy)
		}
		x := l.x
		if l.mask != 0 {
			x = l.dropped
		}
		// dW [Out][In] = dy^T x; db = dy^T ones.
		d.Gemm(true, false, l.Out, l.In, p.batch, 1, l.dy, l.Out, x, l.In, 0, l.dw, l.In)
		d.Gemv(true, p.batch, l.Out, 1, l.dy, l.Out, p.ones, 0, l.db)
		if i > 0 {
			m.linearData(p, l)
		}
		if err := m.layerErr(l.WeightName + " backward"); err != nil {
			return err
		}
	}
	return nil
}

// linearData issues dx [B][In] = dy W, through the mask when there is one.
func (m *Model) linearData(p *pass, l linearLayer) {
	m.dev.Gemm(false, false, p.batch, l.In, l.Out, 1, l.dy, l.Out, l.w, l.In, 0, l.dx, l.In)
	if l.mask != 0 {
		m.dev.Launch("mask_multiply", int64(p.batch*l.In), l.dx, l.mask, l.dx)
	}
}

// backwardFeatures issues the rest of the backward pass: the features'
// gradient, then the convolutions' from the last to the first.
func (m *Model) backwardFeatures(p *pass) error {
	d, b := m.dev, int64(p.batch)
	m.linearData(p, p.linears[0])
	if err := m.layerErr(p.linears[0].WeightName + " backward (data)"); err != nil {
		return err
	}
	last := p.convs[len(p.convs)-1]
	_, dx := last.out()
	hw := int64(last.PooledSide * last.PooledSide)
	d.Launch("nchw_to_cnhw", int64(last.Out)*b*hw, p.dfeatures, dx, b, int64(last.Out), hw)
	for i := len(p.convs) - 1; i >= 0; i-- {
		l := p.convs[i]
		hw := l.OutSide * l.OutSide
		n := int64(l.Out) * b * int64(hw)
		if l.PoolAfter {
			d.Launch("maxpool_backward", n, l.dpooled, l.argmax, l.dy,
				int64(l.OutSide), int64(l.PooledSide), int64(poolKernel), int64(poolStride))
		}
		d.Launch("relu_backward", n, l.y, l.dy, l.dy)
		if err := m.conv.BackwardFilter(l.shape, l.x, l.dy, l.dw); err != nil {
			return fmt.Errorf("%s convolution %s backward-filter: %w", m.conv.Name(), l.WeightName, err)
		}
		// db = dy [Out][B*HW] ones.
		d.Gemv(false, l.Out, p.batch*hw, 1, l.dy, p.batch*hw, p.ones, 0, l.db)
		if l.dx != 0 {
			if err := m.conv.BackwardData(l.shape, l.w, l.dy, l.dx); err != nil {
				return fmt.Errorf("%s convolution %s backward-data: %w", m.conv.Name(), l.WeightName, err)
			}
		}
		if err := m.layerErr(l.WeightName + " backward"); err != nil {
			return err
		}
	}
	return nil
}
