// Command predict classifies images with a trained model on this machine, as
// the seed's predict.py does: Resize((224, 224)), ToTensor, Normalize(0.5, 0.5),
// softmax over the logits. A model trained with ImageNet's normalisation says
// so in its metadata, and its images get that Normalize instead.
//
//	predict [--model best.safetensors] [--class-indices class_indices.json] [--json] [--plot out.png] [--gpu K] IMAGE...
//
// Exit codes: 0 all images predicted; 1 some image could not be read or gave
// non-finite logits (the others are still predicted); 2 bad flags, model or
// class index.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/internal/cli"
	"github.com/alexring/alexring/internal/devices"
	"github.com/alexring/alexring/sharding"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Prediction is one image's result; its JSON is what --json prints.
type Prediction struct {
	Image string             `json:"image"`
	Class string             `json:"class"`
	Index int                `json:"index"`
	Prob  float64            `json:"prob"`
	Probs map[string]float64 `json:"probs"`

	probs []float64 // by class index
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("predict", flag.ContinueOnError)
	fs.SetOutput(stderr)
	model := fs.String("model", "best.safetensors", "model file: safetensors, or PyTorch's .pth/.pt state_dict (torch.save), as written by training or by PyTorch")
	indices := fs.String("class-indices", "class_indices.json", "class names ({\"0\": name, ...}); if the default is missing, the model's own names")
	asJSON := fs.Bool("json", false, "print one JSON object per image")
	plot := fs.String("plot", "", "write a PNG of each image beside a bar chart of its class probabilities")
	gpu := fs.Int("gpu", -1, "GPU to predict on (a build with -tags gpu); -1 is the CPU")
	conv := fs.String("conv", "auto", "the GPU's convolution: auto, cudnn or gemm")
	normalize := fs.String("normalize", "", "the images' mean and std after ToTensor: seed (0.5, 0.5) or imagenet (default: the model's metadata; seed for a .pth, which has none)")
	if done, code := cli.Parse(fs, args); done {
		return code
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "predict: no images given (usage: predict [flags] IMAGE...)")
		fs.Usage()
		return 2
	}
	compute, err := devices.Select(*gpu, *conv)
	if err != nil {
		fmt.Fprintln(stderr, "predict:", err)
		return 2
	}
	indicesSet, normSet := false, false
	fs.Visit(func(f *flag.Flag) {
		indicesSet = indicesSet || f.Name == "class-indices"
		normSet = normSet || f.Name == "normalize"
	})
	var norm sharding.Normalization
	if normSet {
		if norm, err = sharding.ParseNormalization(*normalize); err != nil {
			fmt.Fprintf(stderr, "predict: --normalize: %v\n", err)
			return 2
		}
	}

	// The parameters are the model file's pages (no copy, no decode) when
	// it is one that training wrote; closed after the backend, below.
	params, meta, closeModel, err := alexnet.OpenModel(*model)
	if err != nil {
		fmt.Fprintln(stderr, "predict:", err)
		return 2
	}
	defer closeModel()
	if !normSet {
		if norm, err = sharding.ParseNormalization(meta.Normalize); err != nil {
			fmt.Fprintf(stderr, "predict: %s: the normalize metadata is %v (give --normalize)\n", *model, err)
			return 2
		}
	}
	classes, err := classNames(*indices, indicesSet, meta.Classes, params.Spec.Classes)
	if err != nil {
		fmt.Fprintln(stderr, "predict:", err)
		return 2
	}
	net, err := compute.New(alexnet.BackendConfig{Params: params, EvalBatch: 1})
	if err != nil {
		fmt.Fprintf(stderr, "predict: %s: %v\n", compute.Device, err)
		return 2
	}
	defer net.Close()

	side := params.Spec.Input
	input := make([]float32, 3*side*side)
	code := 0
	var plotted []plotRow
	for _, path := range fs.Args() {
		if err := sharding.LoadImage(path, side, norm, input); err != nil {
			fmt.Fprintln(stderr, "predict:", err)
			code = 1
			continue
		}
		logits, err := net.Logits(input, 1)
		if err != nil {
			fmt.Fprintln(stderr, "predict:", err)
			return 2
		}
		// A NaN or infinite logit (a damaged or diverged model) has no
		// softmax: say so for this image rather than print NaN as a result.
		if i := nonFinite(logits); i >= 0 {
			fmt.Fprintf(stderr, "predict: %s: the model %s gives a non-finite logit for class %s (%v); no prediction\n", path, *model, classes[i], logits[i])
			code = 1
			continue
		}
		p := predict(path, logits, classes)
		if *asJSON {
			js, _ := json.Marshal(p)
			fmt.Fprintln(stdout, string(js))
		} else {
			if fs.NArg() > 1 {
				fmt.Fprintf(stdout, "image: %s\n", path)
			}
			fmt.Fprintf(stdout, "predicted: %s prob: %s\n", p.Class, pyFloat3(p.Prob))
			for i, c := range classes {
				fmt.Fprintf(stdout, "class: %-10s prob: %s\n", c, pyFloat3(p.probs[i]))
			}
		}
		if *plot != "" {
			plotted = append(plotted, plotRow{path: path, pred: p, classes: classes})
		}
	}
	if *plot != "" && len(plotted) > 0 {
		if err := writePlot(*plot, plotted); err != nil {
			fmt.Fprintln(stderr, "predict:", err)
			return 1
		}
		// On stderr: stdout stays predict.py's lines (or the JSON stream).
		fmt.Fprintf(stderr, "predict: plot of %d %s written to %s\n", len(plotted), plural(len(plotted), "image", "images"), *plot)
	}
	return code
}

// classNames takes the names from the class index file, or when the default
// file is absent, from the model's metadata.
func classNames(path string, explicit bool, fromModel []string, count int) ([]string, error) {
	classes, err := sharding.ReadClassIndices(path)
	if err != nil {
		if explicit || !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if len(fromModel) == 0 {
			return nil, fmt.Errorf("no %s and the model names no classes: give --class-indices", path)
		}
		classes = fromModel
	}
	if len(classes) != count {
		return nil, fmt.Errorf("%s names %d classes but the model has %d outputs", path, len(classes), count)
	}
	return classes, nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// nonFinite is the index of the first NaN or infinite value, or -1.
func nonFinite(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}

func predict(path string, logits []float32, classes []string) Prediction {
	m := math.Inf(-1)
	for _, z := range logits {
		m = math.Max(m, float64(z))
	}
	probs := make([]float64, len(logits))
	var sum float64
	for i, z := range logits {
		probs[i] = math.Exp(float64(z) - m)
		sum += probs[i]
	}
	best := 0
	p := Prediction{Image: path, Probs: map[string]float64{}, probs: probs}
	for i := range probs {
		probs[i] /= sum
		p.Probs[classes[i]] = probs[i]
		if probs[i] > probs[best] {
			best = i
		}
	}
	p.Index, p.Class, p.Prob = best, classes[best], probs[best]
	return p
}

// pyFloat3 formats like Python's "{:.3}": three significant digits, and a
// ".0" on whole numbers.
func pyFloat3(v float64) string {
	s := strconv.FormatFloat(v, 'g', 3, 64)
	if !strings.ContainsAny(s, ".eEn") {
		s += ".0"
	}
	return s
}
