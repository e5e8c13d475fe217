package configs

import (
	"fmt"
	"strconv"

	"github.com/alexring/alexring/internal/safetensors"
)

// Progress is what a training state (StateFile) says of the job that wrote
// it: the epochs it has trained and the best validation accuracy so far.
type Progress struct {
	Epoch   int
	BestAcc float64
}

// The metadata of a training state that Progress reads, as
// alexnet.SaveTrainState writes them (the tests check the two agree).
const (
	stateFormatKey  = "format"
	stateFormat     = "alexring-train-state-1"
	stateEpochKey   = "epoch"
	stateBestKey    = "best_accuracy"
	stateVariantKey = "variant"
)

// ReadProgress reads a training state's progress from its header alone, not
// its parameters and Adam's moments; errors name the file. What the header
// tells is checked (the three vectors there, of one length, a known
// variant), so that a broken state is refused here rather than by every
// worker; values inside the tensors are the workers' to check.
func ReadProgress(path string) (Progress, error) {
	h, err := safetensors.ReadHeader(path)
	if err != nil {
		return Progress{}, err
	}
	p, err := progressOf(h.Metadata)
	if err == nil {
		err = checkVectors(h)
	}
	if err == nil {
		err = CheckVariant(h.Metadata[stateVariantKey])
	}
	if err != nil {
		return Progress{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// checkVectors checks that the state holds its parameters and Adam's two
// moments as flat F32 tensors of one length (alexnet.SaveTrainState's
// layout).
func checkVectors(h *safetensors.Header) error {
	n := -1
	for _, name := range []string{"params", "adam.m", "adam.v"} {
		t, ok := h.Tensors[name]
		switch {
		case !ok:
			return fmt.Errorf("no tensor %q", name)
		case t.DType != "F32" || len(t.Shape) != 1:
			return fmt.Errorf("tensor %q is %s %v, want a flat F32 vector", name, t.DType, t.Shape)
		case n >= 0 && t.Shape[0] != n:
			return fmt.Errorf("tensor %q holds %d values, %q %d", name, t.Shape[0], "params", n)
		}
		n = t.Shape[0]
	}
	return nil
}

// progressOf checks the metadata as alexnet's reader of the state does.
func progressOf(md map[string]string) (Progress, error) {
	if md[stateFormatKey] != stateFormat {
		return Progress{}, fmt.Errorf("not a training state (format %q, want %q)", md[stateFormatKey], stateFormat)
	}
	epoch, err := strconv.ParseInt(md[stateEpochKey], 10, 64)
	if err != nil || epoch < 0 || epoch != int64(int(epoch)) {
		return Progress{}, fmt.Errorf("metadata %q = %q is not a valid value", stateEpochKey, md[stateEpochKey])
	}
	best, err := strconv.ParseFloat(md[stateBestKey], 64)
	if err != nil || !(best >= 0 && best <= 1) {
		return Progress{}, fmt.Errorf("metadata %q = %q is not a valid value", stateBestKey, md[stateBestKey])
	}
	return Progress{Epoch: int(epoch), BestAcc: best}, nil
}
