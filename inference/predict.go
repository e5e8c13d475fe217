// Package inference classifies images with a trained model on this machine, as
// the seed's predict.py does: Resize((224, 224)), ToTensor, Normalize(0.5,
// 0.5), softmax over the logits. A model trained with ImageNet's
// normalisation says so in its metadata, and its images get that Normalize
// instead. cmd/predict parses its flags into a Config and calls Run.
package inference

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/devices"
	"github.com/alexring/alexring/sharding"
)

// Config is what to predict, with what, and how to say it.
type Config struct {
	Model  string   // safetensors, or PyTorch's .pth/.pt state_dict
	Images []string // the images to classify
	// ClassIndices names the classes ({"0": name, ...}); when it is the
	// default (not Explicit) and missing, the model's own names are used.
	ClassIndices         string
	ClassIndicesExplicit bool
	// Normalize is the images' normalisation: "seed" or "imagenet"; empty:
	// the model's metadata (seed for a .pth, which has none).
	Normalize string
	JSON      bool   // one JSON object per image instead of predict.py's lines
	Plot      string // write a PNG of each image beside its probabilities (empty: none)
	GPU       int    // -1: the CPU
	Conv      string // the GPU's convolution
	// Stdout gets the predictions, Stderr what went wrong with an image and
	// where the plot went.
	Stdout, Stderr io.Writer
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

// model is what Run predicts with: the backend over the model's parameters,
// its input side, class names and the images' normalisation.
type model struct {
	net     alexnet.Backend
	side    int
	classes []string
	norm    sharding.Normalization
	close   func()
}

// Run predicts every image of cfg, printing each as it goes; an image that
// cannot be read, or whose logits are not finite, is reported on Stderr and
// counted in failed, and the others are still predicted. Its errors wrapping
// configs.ErrBadInput are bad flags, model or class index (exit 2); the
// plot's are not.
func Run(ctx context.Context, cfg Config) (failed int, err error) {
	m, err := open(cfg)
	if err != nil {
		return 0, configs.BadInput(err)
	}
	defer m.close()
	input := make([]float32, 3*m.side*m.side)
	var plotted []plotRow
	for _, path := range cfg.Images {
		if err := ctx.Err(); err != nil {
			return failed, err
		}
		p, err := m.predict(cfg, path, input)
		if ie := (imageError{}); errors.As(err, &ie) {
			fmt.Fprintln(cfg.Stderr, "predict:", err)
			failed++
			continue
		}
		if err != nil {
			return failed, configs.BadInput(err)
		}
		cfg.print(p, m.classes)
		if cfg.Plot != "" {
			plotted = append(plotted, plotRow{path: path, pred: p, classes: m.classes})
		}
	}
	if cfg.Plot != "" && len(plotted) > 0 {
		if err := writePlot(cfg.Plot, plotted); err != nil {
			return failed, err
		}
		// On stderr: stdout stays predict.py's lines (or the JSON stream).
		fmt.Fprintf(cfg.Stderr, "predict: plot of %d %s written to %s\n", len(plotted), plural(len(plotted), "image", "images"), cfg.Plot)
	}
	return failed, nil
}

// open checks cfg's device and normalisation and opens its model and class
// names.
func open(cfg Config) (*model, error) {
	compute, err := devices.Select(cfg.GPU, cfg.Conv)
	if err != nil {
		return nil, err
	}
	var norm sharding.Normalization
	if cfg.Normalize != "" {
		if norm, err = sharding.ParseNormalization(cfg.Normalize); err != nil {
			return nil, fmt.Errorf("--normalize: %v", err)
		}
	}
	// The parameters are the model file's pages (no copy, no decode) when
	// it is one that training wrote; closed after the backend.
	params, meta, closeModel, err := alexnet.OpenModel(cfg.Model)
	if err != nil {
		return nil, err
	}
	if cfg.Normalize == "" {
		if norm, err = sharding.ParseNormalization(meta.Normalize); err != nil {
			closeModel()
			return nil, fmt.Errorf("%s: the normalize metadata is %v (give --normalize)", cfg.Model, err)
		}
	}
	classes, err := classNames(cfg.ClassIndices, cfg.ClassIndicesExplicit, meta.Classes, params.Spec.Classes)
	if err != nil {
		closeModel()
		return nil, err
	}
	net, err := compute.New(alexnet.BackendConfig{Params: params, EvalBatch: 1})
	if err != nil {
		closeModel()
		return nil, fmt.Errorf("%s: %v", compute.Device, err)
	}
	return &model{net: net, side: params.Spec.Input, classes: classes, norm: norm,
		close: func() { net.Close(); closeModel() }}, nil
}

// imageError is why an image gets no prediction (unreadable, or non-finite
// logits): the others still get theirs.
type imageError struct{ error }

// predict classifies the image at path, decoded into input.
func (m *model) predict(cfg Config, path string, input []float32) (Prediction, error) {
	if err := sharding.LoadImage(path, m.side, m.norm, input); err != nil {
		return Prediction{}, imageError{err}
	}
	logits, err := m.net.Logits(input, 1)
	if err != nil {
		return Prediction{}, err
	}
	// A NaN or infinite logit (a damaged or diverged model) has no
	// softmax: say so for this image rather than print NaN as a result.
	if i := nonFinite(logits); i >= 0 {
		return Prediction{}, imageError{fmt.Errorf("%s: the model %s gives a non-finite logit for class %s (%v); no prediction", path, cfg.Model, m.classes[i], logits[i])}
	}
	return softmax(path, logits, m.classes), nil
}

// print writes p as predict.py does (or one JSON object).
func (cfg Config) print(p Prediction, classes []string) {
	if cfg.JSON {
		js, _ := json.Marshal(p)
		fmt.Fprintln(cfg.Stdout, string(js))
		return
	}
	if len(cfg.Images) > 1 {
		fmt.Fprintf(cfg.Stdout, "image: %s\n", p.Image)
	}
	fmt.Fprintf(cfg.Stdout, "predicted: %s prob: %s\n", p.Class, pyFloat3(p.Prob))
	for i, c := range classes {
		fmt.Fprintf(cfg.Stdout, "class: %-10s prob: %s\n", c, pyFloat3(p.probs[i]))
	}
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

// softmax is the prediction of logits over classes for the image at path.
func softmax(path string, logits []float32, classes []string) Prediction {
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
