//go:build gpu

package cuda_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/alexnet/cuda"
	"github.com/alexring/alexring/alexnet/gpu"
)

// tolConv bounds cuDNN's convolutions against the model's im2col + GEMM,
// relative to the largest value of the GEMM's result: both FP32 without
// TF32, but cuDNN's algorithms (implicit GEMM, FFT, Winograd) sum in other
// orders and FFT and Winograd transform the operands, which costs a few
// more ulps than a dot product.
const tolConv = 1e-4

// TestCudnnConv compares cuDNN's three products with the GEMM convolution's
// on every convolution of the tiny and seed variants (batch 4, channel-major
// activations), and logs the algorithms cuDNN picked.
func TestCudnnConv(t *testing.T) {
	d := openDevice(t)
	dnn, err := cuda.NewCudnn(d)
	if err != nil {
		t.Skipf("cuDNN: %v", err)
	}
	defer dnn.Close()
	t.Logf("%s", dnn.Version())
	gemm := gpu.NewGemmConv(d)
	defer gemm.Close()
	rng := rand.New(rand.NewPCG(9, 10))
	for _, variant := range []string{"tiny", "seed"} {
		spec, err := alexnet.NewSpec(variant, 10)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range spec.Convs() {
			s := gpu.ConvShape{Batch: 4, In: c.In, Out: c.Out, Kernel: c.Kernel, Stride: c.Stride, Pad: c.Pad, Side: c.InSide, OutSide: c.OutSide}
			t.Run(fmt.Sprintf("%s/conv%d", variant, i+1), func(t *testing.T) {
				for _, conv := range []gpu.Convolution{gemm, dnn} {
					if err := conv.Prepare(s); err != nil {
						t.Fatalf("%s: %v", conv.Name(), err)
					}
				}
				xn, wn, yn := s.In*s.Batch*s.Side*s.Side, s.Out*s.In*s.Kernel*s.Kernel, s.Out*s.Batch*s.OutSide*s.OutSide
				x, w, dy := upload(t, d, randVec(rng, xn)), upload(t, d, randVec(rng, wn)), upload(t, d, randVec(rng, yn))
				out := map[string][3][]float32{}
				for _, conv := range []gpu.Convolution{gemm, dnn} {
					y, dx, dw := alloc(t, d, yn), alloc(t, d, xn), alloc(t, d, wn)
					if err := conv.Forward(s, x, w, y); err != nil {
						t.Fatal(err)
					}
					if err := conv.BackwardData(s, w, dy, dx); err != nil {
						t.Fatal(err)
					}
					if err := conv.BackwardFilter(s, x, dy, dw); err != nil {
						t.Fatal(err)
					}
					out[conv.Name()] = [3][]float32{download(t, d, y, yn), download(t, d, dx, xn), download(t, d, dw, wn)}
					d.Free(y)
					d.Free(dx)
					d.Free(dw)
				}
				for k, what := range []string{"forward", "backward data", "backward filter"} {
					within(t, what, out["cudnn"][k], out["gemm"][k], tolConv)
				}
				d.Free(x)
				d.Free(w)
				d.Free(dy)
			})
		}
	}
	t.Logf("cuDNN's choices:\n%s", dnn.Algorithms())
}

func alloc(t *testing.T, d gpu.Device, n int) gpu.Ptr {
	t.Helper()
	p, err := d.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
