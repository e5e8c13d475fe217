package worker

import (
	"math"
	"slices"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/sharding"
)

// configs checks a job without the model: its lists of the model's and the
// data's names, and its words for a name they refuse, must be alexnet's and
// sharding's.
func TestContractNamesAgree(t *testing.T) {
	if !slices.Equal(configs.Variants, alexnet.Variants()) || configs.DefaultVariant != alexnet.DefaultVariant {
		t.Errorf("configs' variants %v (default %q), alexnet's %v (default %q)", configs.Variants, configs.DefaultVariant, alexnet.Variants(), alexnet.DefaultVariant)
	}
	for _, v := range append(slices.Clone(configs.Variants), "", "Seed", "nope") {
		_, want := alexnet.NewSpec(v, 1)
		if got := configs.CheckVariant(v); (got == nil) != (want == nil) || got != nil && got.Error() != want.Error() {
			t.Errorf("variant %q: configs says %v, alexnet %v", v, got, want)
		}
	}
	for _, f := range append(slices.Clone(configs.Freezes), "", " features ", "classifier", "None") {
		_, want := alexnet.ParseFreeze(f)
		if got := configs.CheckFreeze(f); (got == nil) != (want == nil) || got != nil && got.Error() != want.Error() {
			t.Errorf("freeze %q: configs says %v, alexnet %v", f, got, want)
		}
	}
	for _, n := range append(slices.Clone(configs.Normalizations), "", " imagenet", "ImageNet", "zca") {
		parsed, want := sharding.ParseNormalization(n)
		if got := configs.CheckNormalize(n); (got == nil) != (want == nil) || got != nil && got.Error() != want.Error() {
			t.Errorf("normalize %q: configs says %v, sharding %v", n, got, want)
		}
		if want == nil && normalization(configs.Job{Normalize: n}) != parsed {
			t.Errorf("normalize %q: the worker trains with %v, want %v", n, normalization(configs.Job{Normalize: n}), parsed)
		}
	}
	for _, name := range configs.Normalizations {
		if n, _ := sharding.ParseNormalization(name); n.String() != name {
			t.Errorf("normalization %q reads back as %q", name, n)
		}
	}
	// The learning rates the job accepts are those Adam takes.
	for _, lr := range []float64{2e-4, 1, 1e300, 0, -1, math.Inf(1), math.Inf(-1), math.NaN()} {
		job := configs.DefaultJob()
		job.Data, job.LR = "d", lr
		want := adamConfig(job).Validate()
		if got := job.Validate(); (got == nil) != (want == nil) {
			t.Errorf("--lr %g: configs says %v, alexnet %v", lr, got, want)
		}
	}
	if got, want := adamConfig(configs.DefaultJob()), alexnet.DefaultAdam(); got != want {
		t.Errorf("the default job's Adam %+v, alexnet's default %+v", got, want)
	}
}
