package alexnet

import (
	"math"
	"testing"
)

func TestSeedShapesAndCount(t *testing.T) {
	spec, err := NewSpec("seed", 5)
	if err != nil {
		t.Fatal(err)
	}
	var sides []int
	for _, c := range spec.Convs() {
		sides = append(sides, c.OutSide, c.PooledSide)
	}
	want := []int{55, 27, 27, 13, 13, 13, 13, 13, 13, 6}
	for i := range want {
		if sides[i] != want[i] {
			t.Fatalf("feature sides %v, want %v", sides, want)
		}
	}
	if spec.Flat() != 128*6*6 {
		t.Errorf("flat %d, want %d", spec.Flat(), 128*6*6)
	}
	if n := spec.NumParams(); n != 14591685 {
		t.Errorf("seed variant has %d parameters, want 14,591,685", n)
	}
	l := spec.Layout()
	names := []string{"features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
		"features.6.weight", "features.6.bias", "features.8.weight", "features.8.bias",
		"features.10.weight", "features.10.bias", "classifier.1.weight", "classifier.1.bias",
		"classifier.4.weight", "classifier.4.bias", "classifier.6.weight", "classifier.6.bias"}
	if len(l) != len(names) {
		t.Fatalf("%d tensors, want %d", len(l), len(names))
	}
	for i, n := range names {
		if l[i].Name != n {
			t.Errorf("tensor %d is %s, want %s", i, l[i].Name, n)
		}
	}
	if got := l[0].Shape; len(got) != 4 || got[0] != 48 || got[1] != 3 || got[2] != 11 {
		t.Errorf("features.0.weight shape %v", got)
	}
	if got := l[10].Shape; got[0] != 2048 || got[1] != 4608 {
		t.Errorf("classifier.1.weight shape %v, want [2048 4608]", got)
	}
}

func TestVariants(t *testing.T) {
	tiny, err := NewSpec("tiny", 5)
	if err != nil {
		t.Fatal(err)
	}
	if tiny.FeatureSide() != 1 || tiny.Flat() != 16 {
		t.Errorf("tiny: side %d flat %d, want 1 and 16", tiny.FeatureSide(), tiny.Flat())
	}
	full, err := NewSpec("full", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if full.Flat() != 256*36 {
		t.Errorf("full flat %d", full.Flat())
	}
	if _, err := NewSpec("huge", 5); err == nil {
		t.Error("unknown variant accepted")
	}
	if _, err := NewSpec("seed", 0); err == nil {
		t.Error("zero classes accepted")
	}
	bad := tiny
	bad.Input = 8
	if err := bad.Validate(); err == nil {
		t.Error("an input too small for the features was accepted")
	}
}

func TestInitStatistics(t *testing.T) {
	spec, _ := NewSpec("seed", 5)
	p := NewParams(spec)
	p.Init(1)
	for _, tc := range []struct {
		name string
		std  float64
	}{
		{"features.0.weight", math.Sqrt(2.0 / (48 * 11 * 11))},
		{"features.6.weight", math.Sqrt(2.0 / (192 * 9))},
		{"classifier.1.weight", 0.01},
	} {
		v, err := p.View(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		var sum, sq float64
		for _, x := range v {
			sum += float64(x)
			sq += float64(x) * float64(x)
		}
		n := float64(len(v))
		mean, std := sum/n, math.Sqrt(sq/n-(sum/n)*(sum/n))
		if math.Abs(mean) > 4*tc.std/math.Sqrt(n) || math.Abs(std/tc.std-1) > 0.03 {
			t.Errorf("%s: mean %g std %g, want 0 and %g", tc.name, mean, std, tc.std)
		}
	}
	b, _ := p.View("classifier.1.bias")
	for _, x := range b {
		if x != 0 {
			t.Fatal("bias not zero")
		}
	}
	q := NewParams(spec)
	q.Init(1)
	for i := range p.Flat {
		if p.Flat[i] != q.Flat[i] {
			t.Fatal("same seed gave different parameters")
		}
	}
	q.Init(2)
	if p.Flat[0] == q.Flat[0] && p.Flat[1] == q.Flat[1] {
		t.Error("different seeds gave the same parameters")
	}
}
