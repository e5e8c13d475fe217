package configs_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
)

// A state's progress, read from its header alone, is what alexnet's whole
// reader of the state says.
func TestReadProgressOfAlexnetsState(t *testing.T) {
	dir := t.TempDir()
	spec, err := alexnet.NewSpec("tiny", 2)
	if err != nil {
		t.Fatal(err)
	}
	p := alexnet.NewParams(spec)
	adam, err := alexnet.NewAdam(alexnet.DefaultAdam(), len(p.Flat))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		epoch int
		best  float64
	}{{0, 0}, {3, 0.625}, {17, 1}, {2, 1.0 / 3}} {
		path := filepath.Join(dir, configs.StateFile)
		if err := alexnet.SaveTrainState(path, &alexnet.TrainState{Params: p, Adam: adam, Epoch: c.epoch, BestAcc: c.best, RNGState: []byte{1}}); err != nil {
			t.Fatal(err)
		}
		got, err := configs.ReadProgress(path)
		if err != nil {
			t.Fatal(err)
		}
		st, err := alexnet.LoadTrainState(path)
		if err != nil {
			t.Fatal(err)
		}
		if got.Epoch != st.Epoch || got.BestAcc != st.BestAcc || got.Epoch != c.epoch || got.BestAcc != c.best {
			t.Errorf("progress %+v; alexnet reads epoch %d best %v; written %d %v", got, st.Epoch, st.BestAcc, c.epoch, c.best)
		}
	}
	// A model file is not a state, and a state cut short is no state: both
	// refused, naming the file.
	model := filepath.Join(dir, configs.BestFile)
	if err := alexnet.SaveModel(model, p, alexnet.ModelMeta{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := configs.ReadProgress(model); err == nil || !strings.Contains(err.Error(), model+": not a training state") {
		t.Errorf("a model as the state: %v", err)
	}
	state := filepath.Join(dir, configs.StateFile)
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(dir, "cut.safetensors")
	if err := os.WriteFile(cut, data[:len(data)-4], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := configs.ReadProgress(cut); err == nil || !strings.Contains(err.Error(), cut) || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("a truncated state: %v", err)
	}
}

// A state whose header lacks a vector, holds vectors of two lengths or names
// an unknown variant is refused from the header, naming the file and what is
// wrong (alexnet's reader refuses it too, but only on each worker).
func TestReadProgressRefusesABrokenState(t *testing.T) {
	dir := t.TempDir()
	md := map[string]string{"format": "alexring-train-state-1", "variant": "tiny", "epoch": "1", "best_accuracy": "0.5"}
	vec := func(n int) alexnet.STTensor { return alexnet.F32Tensor(make([]float32, n), n) }
	for _, c := range []struct {
		name    string
		variant string
		tensors map[string]alexnet.STTensor
		want    string
	}{
		{"no adam.v", "tiny", map[string]alexnet.STTensor{"params": vec(4), "adam.m": vec(4)}, `no tensor "adam.v"`},
		{"two lengths", "tiny", map[string]alexnet.STTensor{"params": vec(4), "adam.m": vec(4), "adam.v": vec(3)}, `"adam.v" holds 3 values`},
		{"unknown variant", "vgg", map[string]alexnet.STTensor{"params": vec(4), "adam.m": vec(4), "adam.v": vec(4)}, `unknown variant "vgg"`},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".safetensors")
		md["variant"] = c.variant
		var names []string
		for n := range c.tensors {
			names = append(names, n)
		}
		if err := alexnet.WriteSafetensors(path, names, c.tensors, md); err != nil {
			t.Fatal(err)
		}
		if _, err := configs.ReadProgress(path); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", c.name, err, c.want)
		}
	}
}
