package gpu

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"unsafe"

	"github.com/alexring/alexring/alexnet"
)

// Model is the alexnet.Backend on a Device.
type Model struct {
	dev  Device
	conv Convolution
	cfg  alexnet.BackendConfig
	spec alexnet.Spec

	size int // parameters
	from int // where the classifier starts in the flat vectors
	// trainFrom is where the trained parameters start (cfg.Freeze): the
	// host's gradient vectors hold those from there.
	trainFrom int
	// The flat vectors, in the host's layout; offsets[name] is a tensor's.
	params, grad, adamM, adamV Ptr
	offsets                    map[string]int

	train, eval *pass
	host        [][]float32 // HostVector's
	haveGrad    bool        // the device gradient holds one (for Update(nil))
	closed      bool
}

// New builds the model on dev from cfg's host state, with conv (nil: the
// model's own im2col + GEMM, NewGemmConv). The model takes dev and conv over:
// Close closes them, and so does New when it fails.
func New(dev Device, cfg alexnet.BackendConfig, conv Convolution) (*Model, error) {
	if conv == nil {
		conv = NewGemmConv(dev)
	}
	m := &Model{dev: dev, conv: conv, cfg: cfg}
	if err := m.build(); err != nil {
		return nil, errors.Join(err, m.Close())
	}
	return m, nil
}

func (m *Model) build() error {
	if err := m.cfg.Validate(); err != nil {
		return err
	}
	m.spec = m.cfg.Params.Spec
	m.size, m.from = m.spec.NumParams(), m.spec.ClassifierOffset()
	var err error
	if m.trainFrom, err = m.spec.TrainFrom(m.cfg.Freeze); err != nil {
		return err
	}
	if len(m.cfg.Params.Flat) != m.size {
		return fmt.Errorf("gpu: %d parameters for the %s model's %d", len(m.cfg.Params.Flat), m.spec.Variant, m.size)
	}
	m.offsets = make(map[string]int)
	for _, t := range m.spec.Layout() {
		m.offsets[t.Name] = t.Offset
	}
	vectors := []struct {
		p    *Ptr
		what string
	}{{&m.params, "parameters"}, {&m.grad, "gradient"}, {&m.adamM, "Adam's m"}, {&m.adamV, "Adam's v"}}
	if m.cfg.Adam == nil {
		vectors = vectors[:1] // inference only (predict)
	}
	for _, v := range vectors {
		var err error
		if *v.p, err = m.dev.Alloc(m.size); err != nil {
			return fmt.Errorf("gpu: allocate the %s (%d floats): %w", v.what, m.size, err)
		}
	}
	if err := m.Upload(); err != nil {
		return err
	}
	return m.SetBatch(m.cfg.Batch)
}

// tensor is a parameter's address and its gradient's.
func (m *Model) tensor(name string) (Ptr, Ptr) {
	off := m.offsets[name] // the spec names only tensors of its layout
	return m.params.Add(off), m.grad.Add(off)
}

// DeviceBytes is the most device memory the model's device has held, where
// the device counts it (alexnet/cuda's does), for beside PyTorch's
// torch.cuda.max_memory_allocated(); 0 elsewhere.
func (m *Model) DeviceBytes() int64 {
	if d, ok := m.dev.(interface{ Allocated() (now, peak int64) }); ok {
		_, peak := d.Allocated()
		return peak
	}
	return 0
}

// Describe names the device and the convolution (and its library's version,
// where it says).
func (m *Model) Describe() string {
	conv := m.conv.Name()
	if v, ok := m.conv.(interface{ Version() string }); ok {
		conv += " (" + v.Version() + ")"
	}
	return m.dev.Describe() + ", conv " + conv
}

// layerErr is the device's (sticky) error, if any, saying where it was met.
// A step checks it after each layer, so that an error names the layer (the
// device's own message names the call and its sizes).
func (m *Model) layerErr(what string) error {
	if err := m.dev.Err(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// check is layerErr for a method's whole work.
func (m *Model) check(what string) error {
	if err := m.layerErr(what); err != nil {
		return fmt.Errorf("gpu: %w", err)
	}
	return nil
}

var errClosed = errors.New("gpu: the model is closed")

// SetBatch reallocates the training buffers for a new batch (the old ones
// first: a device has room for one set).
func (m *Model) SetBatch(batch int) error {
	if m.closed {
		return errClosed
	}
	if m.train != nil && m.train.batch == batch {
		return nil
	}
	if batch < 0 || batch > 0 && m.cfg.Adam == nil {
		return fmt.Errorf("gpu: training batch size %d on a backend built for inference", batch)
	}
	if m.train != nil {
		m.freePass(m.train)
		m.train = nil
	}
	m.cfg.Batch = batch
	if batch == 0 {
		return nil
	}
	p, err := m.newPass(batch, true)
	if err != nil {
		return err
	}
	m.train = p
	return nil
}

// Gradient runs forward and backward on the device (see the package doc).
func (m *Model) Gradient(images []float32, labels []int, count int, rng *rand.Rand, grad []float32, hooks alexnet.Hooks) (alexnet.Step, error) {
	if m.closed {
		return alexnet.Step{}, errClosed
	}
	p := m.train
	if p == nil && m.cfg.Batch == 0 {
		return alexnet.Step{}, errors.New("gpu: Gradient on a backend without a training batch (inference only)")
	}
	if p == nil {
		return alexnet.Step{}, fmt.Errorf("gpu: no training buffers (SetBatch(%d) failed)", m.cfg.Batch)
	}
	if err := m.prepareStep(p, images, labels, count, rng, grad); err != nil {
		return alexnet.Step{}, err
	}
	if grad == nil {
		hooks.ClassifierReady = nil // nothing leaves the device early
	}
	lossAt, classifierAt, err := m.issueStep(p, images, count, grad)
	if err != nil {
		return m.fail(err)
	}
	// Everything is issued: the waits below leave no gap on the device.
	if err := m.dev.Wait(lossAt); err != nil {
		return m.fail(err)
	}
	if hooks.LossComputed != nil {
		hooks.LossComputed()
	}
	st := alexnet.Step{Loss: p.loss()}
	if err := m.dev.Wait(classifierAt); err != nil {
		return m.fail(err)
	}
	k := p.batch * m.spec.Classes
	// Read before the ring may overwrite the classifier's part of grad.
	classifierFinite := math.Float32bits(p.pinned[k+1]) == 0
	if hooks.ClassifierReady != nil {
		hooks.ClassifierReady()
	}
	if err := m.dev.Sync(); err != nil {
		return m.fail(err)
	}
	loss := float64(st.Loss)
	st.Finite = classifierFinite && math.Float32bits(p.pinned[k]) == 0 && !math.IsNaN(loss) && !math.IsInf(loss, 0)
	m.haveGrad = true
	return st, nil
}

// issueStep issues a whole step on the device: the inputs, the forward pass
// and the loss, marked; the classifier's backward pass, its non-finite flag
// and its part of the gradient to grad (unless nil), marked; the rest.
func (m *Model) issueStep(p *pass, images []float32, count int, grad []float32) (lossAt, classifierAt Event, err error) {
	d, k := m.dev, p.batch*m.spec.Classes
	if err := m.load(p, images, count); err != nil {
		return nil, nil, err
	}
	d.Upload(p.targets, p.hostTargets)
	masks := p.masks
	for _, l := range p.linears {
		if l.mask != 0 {
			d.Upload(l.mask, masks[0])
			masks = masks[1:]
		}
	}
	d.Upload(p.flags, []float32{0, 0}) // nonfinite only ever sets them
	if err := m.layerErr("upload the targets and masks"); err != nil {
		return nil, nil, err
	}
	if err := m.forward(p); err != nil {
		return nil, nil, err
	}
	logits := p.linears[len(p.linears)-1]
	d.Launch("softmax_xent", int64(p.batch), logits.y, p.targets, logits.dy, p.logp, int64(m.spec.Classes))
	d.DownloadAsync(p.pinned[:k], p.logp)
	if err := m.layerErr("softmax_xent"); err != nil {
		return nil, nil, err
	}
	if lossAt, err = d.Mark(); err != nil {
		return nil, nil, fmt.Errorf("mark the loss: %w", err)
	}

	if err := m.backwardClassifier(p); err != nil {
		return nil, nil, err
	}
	d.Launch("nonfinite", int64(m.size-m.from), m.grad.Add(m.from), p.flags.Add(1))
	d.DownloadAsync(p.pinned[k+1:k+2], p.flags.Add(1))
	if grad != nil {
		d.DownloadAsync(grad[m.from-m.trainFrom:], m.grad.Add(m.from))
	}
	if err := m.layerErr("copy the classifier's gradient"); err != nil {
		return nil, nil, err
	}
	if classifierAt, err = d.Mark(); err != nil {
		return nil, nil, fmt.Errorf("mark the classifier's gradient: %w", err)
	}

	if m.trainFrom >= m.from {
		// Frozen features: the backward pass ends at the classifier's input.
		p.pinned[k] = 0 // no convolution's gradient to be non-finite
		return lossAt, classifierAt, nil
	}
	if err := m.backwardFeatures(p); err != nil {
		return nil, nil, err
	}
	d.Launch("nonfinite", int64(m.from), m.grad, p.flags)
	d.DownloadAsync(p.pinned[k:k+1], p.flags)
	if grad != nil {
		d.DownloadAsync(grad[:m.from], m.grad)
	}
	return lossAt, classifierAt, m.layerErr("copy the convolutions' gradient")
}

// prepareStep checks a step's inputs and builds its host side: the targets
// and the dropout masks, drawn for the whole batch as the CPU draws them.
func (m *Model) prepareStep(p *pass, images []float32, labels []int, count int, rng *rand.Rand, grad []float32) error {
	if err := p.checkImages(m.spec, images, count); err != nil {
		return err
	}
	if len(labels) < count || (grad != nil && len(grad) != m.size-m.trainFrom) {
		return fmt.Errorf("%w: %d labels for %d images, gradient of %d for %d trained parameters", alexnet.ErrBatch, len(labels), count, len(grad), m.size-m.trainFrom)
	}
	if grad != nil && !m.fromHostVector(grad) {
		return errors.New("gpu: the gradient vector does not come from HostVector (the device copies into page-locked memory)")
	}
	k := m.spec.Classes
	clear(p.hostTargets)
	for i, y := range labels[:count] {
		if y < 0 || y >= k {
			return fmt.Errorf("%w: label %d of sample %d outside [0, %d)", alexnet.ErrBatch, y, i, k)
		}
		p.hostTargets[i*k+y] = 1 / float32(count)
	}
	if len(p.masks) > 0 {
		if rng == nil {
			return errors.New("gpu: dropout needs an RNG")
		}
		alexnet.DrawMasks(rng, m.cfg.Dropout, p.masks)
	}
	return nil
}

// loss adds the downloaded logp as the CPU's softmaxCE does, so that the same
// logits give the same bits.
func (p *pass) loss() float32 {
	var loss float64
	for i, w := range p.hostTargets {
		if w != 0 {
			loss -= float64(w) * float64(p.pinned[i])
		}
	}
	return float32(loss)
}

// fail ends a step that went wrong once the copies already issued are done,
// so that nothing writes the caller's vector after Gradient returns.
func (m *Model) fail(err error) (alexnet.Step, error) {
	m.dev.Sync()
	return alexnet.Step{}, fmt.Errorf("gpu: forward/backward at batch %d: %w", m.train.batch, err)
}

// fromHostVector reports whether v lies in a vector of HostVector.
func (m *Model) fromHostVector(v []float32) bool {
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(v)))
	hi := lo + 4*uintptr(len(v))
	for _, h := range m.host {
		start := uintptr(unsafe.Pointer(unsafe.SliceData(h)))
		if lo >= start && hi <= start+4*uintptr(len(h)) {
			return true
		}
	}
	return false
}

// Update steps Adam on the device: over grad, uploaded first, or with nil
// over the gradient the last Gradient left there. The host parameters and
// moments are stale until Download.
func (m *Model) Update(grad []float32) error {
	if m.closed {
		return errClosed
	}
	if m.cfg.Adam == nil {
		return errors.New("gpu: Update on a backend built for inference")
	}
	n, at := m.size-m.trainFrom, m.trainFrom // frozen parameters are not stepped
	if grad != nil {
		if len(grad) != n {
			return fmt.Errorf("%w: Update given a gradient of %d for %d trained parameters", alexnet.ErrBatch, len(grad), n)
		}
		m.dev.Upload(m.grad.Add(at), grad)
		m.haveGrad = true
	} else if !m.haveGrad {
		return errors.New("gpu: Update(nil) before any Gradient")
	}
	s := m.cfg.Adam.Advance()
	// float32 coefficients as doubles: exact, so the kernel computes the CPU's bits.
	m.dev.Launch("adam", int64(n), m.params.Add(at), m.grad.Add(at), m.adamM.Add(at), m.adamV.Add(at),
		float64(s.Beta1), float64(s.Beta2), float64(s.OneMinusBeta1), float64(s.OneMinusBeta2),
		float64(s.StepSize), float64(s.BiasCorrection2Sqrt), float64(s.Eps))
	return m.check(fmt.Sprintf("Adam step %d over %d parameters", m.cfg.Adam.Step, n))
}

// Logits evaluates count images at the evaluation batch (no dropout); its
// buffers are allocated on the first call.
func (m *Model) Logits(images []float32, count int) ([]float32, error) {
	if m.closed {
		return nil, errClosed
	}
	if m.eval == nil {
		if m.cfg.EvalBatch < 1 {
			return nil, errors.New("gpu: this backend was built without an evaluation batch")
		}
		p, err := m.newPass(m.cfg.EvalBatch, false)
		if err != nil {
			return nil, err
		}
		m.eval = p
	}
	p := m.eval
	if err := p.checkImages(m.spec, images, count); err != nil {
		return nil, err
	}
	if err := m.load(p, images, count); err != nil {
		return nil, fmt.Errorf("gpu: evaluation at batch %d: %w", p.batch, err)
	}
	if err := m.forward(p); err != nil {
		return nil, fmt.Errorf("gpu: evaluation at batch %d: %w", p.batch, err)
	}
	out := make([]float32, count*m.spec.Classes)
	m.dev.Download(out, p.linears[len(p.linears)-1].y)
	if err := m.check(fmt.Sprintf("evaluation of %d images at batch %d", count, p.batch)); err != nil {
		return nil, err
	}
	return out, nil
}

// Upload copies the host parameters and moments to the device.
func (m *Model) Upload() error {
	if m.closed {
		return errClosed
	}
	m.dev.Upload(m.params, m.cfg.Params.Flat)
	if m.cfg.Adam != nil {
		m.dev.Upload(m.adamM, m.cfg.Adam.M)
		m.dev.Upload(m.adamV, m.cfg.Adam.V)
	}
	return m.check(fmt.Sprintf("upload %d parameters and Adam's moments", m.size))
}

// Download copies the device's parameters and moments to the host.
func (m *Model) Download() error {
	if m.closed {
		return errClosed
	}
	m.dev.Download(m.cfg.Params.Flat, m.params)
	if m.cfg.Adam != nil {
		m.dev.Download(m.cfg.Adam.M, m.adamM)
		m.dev.Download(m.cfg.Adam.V, m.adamV)
	}
	return m.check(fmt.Sprintf("download %d parameters and Adam's moments", m.size))
}

// HostVector allocates n zeroed page-locked floats, freed by Close.
func (m *Model) HostVector(n int) ([]float32, error) {
	if m.closed {
		return nil, errClosed
	}
	if n < 1 {
		return nil, fmt.Errorf("gpu: host vector of %d floats", n)
	}
	v, err := m.dev.HostAlloc(n)
	if err != nil {
		return nil, fmt.Errorf("gpu: allocate %d page-locked floats: %w", n, err)
	}
	m.host = append(m.host, v)
	return v, nil
}

// Close frees the model's memory and closes the convolution and the device;
// closing twice is safe.
func (m *Model) Close() error {
	if m.closed {
		return nil
	}
	m.closed = true
	// Nothing may still use what is freed; an error here was already
	// reported by the call that met it.
	m.dev.Sync()
	for _, p := range []*pass{m.train, m.eval} {
		if p != nil {
			m.freePass(p)
		}
	}
	m.train, m.eval = nil, nil
	for _, p := range []Ptr{m.params, m.grad, m.adamM, m.adamV} {
		if p != 0 {
			m.dev.Free(p)
		}
	}
	for _, v := range m.host {
		m.dev.FreeHost(v)
	}
	m.host = nil
	return errors.Join(m.conv.Close(), m.dev.Close())
}
