package main

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/inference"
	"github.com/alexring/alexring/sharding"
)

// predict normalises as the model's metadata says, --normalize overrides
// it, and a .pth (no metadata) is the seed's; stdout is unchanged.
func TestPredictNormalize(t *testing.T) {
	dir, seedModel, images := setup(t)
	p, _, err := alexnet.LoadModel(seedModel)
	if err != nil {
		t.Fatal(err)
	}
	imagenet := filepath.Join(dir, "imagenet.safetensors")
	if err := alexnet.SaveModel(imagenet, p, alexnet.ModelMeta{Classes: sharding.SynthClasses, Normalize: "imagenet"}); err != nil {
		t.Fatal(err)
	}
	pth := filepath.Join(dir, "best.pth")
	if err := alexnet.SavePthModel(pth, p); err != nil {
		t.Fatal(err)
	}
	idx := filepath.Join(dir, "ci.json")
	sharding.WriteClassIndices(idx, sharding.SynthClasses)
	probs := func(args ...string) map[string]float64 {
		t.Helper()
		code, out, errOut := runPredict(append(append([]string{"--class-indices", idx, "--json"}, args...), images[0])...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		var got inference.Prediction
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return got.Probs
	}
	seed, net := probs("--model", seedModel), probs("--model", imagenet)
	if reflect.DeepEqual(seed, net) {
		t.Fatal("the same probabilities with both normalisations")
	}
	for name, c := range map[string]struct {
		args []string
		want map[string]float64
	}{
		"imagenet model --normalize seed": {[]string{"--model", imagenet, "--normalize", "seed"}, seed},
		"seed model --normalize imagenet": {[]string{"--model", seedModel, "--normalize", "imagenet"}, net},
		"pth":                             {[]string{"--model", pth}, seed},
		"pth --normalize imagenet":        {[]string{"--model", pth, "--normalize", "imagenet"}, net},
	} {
		if got := probs(c.args...); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, want %v", name, got, c.want)
		}
	}
	code, out, _ := runPredict("--model", imagenet, "--class-indices", idx, images[0])
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 6 || !strings.HasPrefix(lines[0], "predicted: ") {
		t.Errorf("exit %d, stdout:\n%s", code, out)
	}

	bad := filepath.Join(dir, "bad.safetensors")
	alexnet.SaveModel(bad, p, alexnet.ModelMeta{Normalize: "zca"})
	if code, _, errOut := runPredict("--model", bad, "--class-indices", idx, images[0]); code != 2 || !strings.Contains(errOut, bad+`: the normalize metadata is "zca", want seed or imagenet`) {
		t.Errorf("metadata normalize zca: exit %d: %s", code, errOut)
	}
	if code, _, errOut := runPredict("--model", bad, "--class-indices", idx, "--normalize", "seed", images[0]); code != 0 {
		t.Errorf("--normalize seed over a bad metadata value: exit %d: %s", code, errOut)
	}
	if code, _, errOut := runPredict("--model", seedModel, "--normalize", "torch", images[0]); code != 2 || !strings.Contains(errOut, `predict: --normalize: "torch", want seed or imagenet`) {
		t.Errorf("--normalize torch: exit %d: %s", code, errOut)
	}
}
