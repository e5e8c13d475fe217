package alexnet

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkStep is one training step of the seed model (forward, backward,
// Adam); bench step in cmd/bench is the figure to quote against PyTorch.
func BenchmarkStep(b *testing.B) { benchmarkStep(b, 0) }

// benchmarkStep steps the seed model training Flat[from:] (0: all of it).
func benchmarkStep(b *testing.B, from int) {
	spec, _ := NewSpec("seed", 5)
	p := NewParams(spec)
	p.Init(0)
	const batch = 32
	net, err := NewNet(p, NetOptions{Batch: batch, Train: true, Dropout: 0.5, TrainFrom: from})
	if err != nil {
		b.Fatal(err)
	}
	defer net.Close()
	adam, _ := NewAdam(DefaultAdam(), len(p.Flat))
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, batch*3*224*224)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	labels := make([]int, batch)
	grad := make([]float32, len(p.Flat)-from)
	net.BindGrad(grad)
	b.ResetTimer()
	for range b.N {
		if _, err := net.Gradient(x, labels, batch, rng, grad); err != nil {
			b.Fatal(err)
		}
		adam.UpdateFrom(from, p.Flat, grad)
	}
}
