package configs

import (
	"errors"
	"fmt"
	"io/fs"
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
	stateFormatKey = "format"
	stateFormat    = "alexring-train-state-1"
	stateEpochKey  = "epoch"
	stateBestKey   = "best_accuracy"
)

// ReadProgress reads a training state's progress from its header alone, not
// its parameters and Adam's moments; errors name the file. A state whose
// tensors are corrupt passes: the workers that load it refuse it.
func ReadProgress(path string) (Progress, error) {
	h, err := safetensors.ReadHeader(path)
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		// In the words of alexnet.LoadTrainState, which read the state
		// before and whose messages the commands' tests name.
		return Progress{}, fmt.Errorf("alexnet: %w", err)
	}
	if err != nil {
		return Progress{}, err
	}
	p, err := progressOf(h.Metadata)
	if err != nil {
		return Progress{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ParseProgress is ReadProgress of a file's bytes.
func ParseProgress(data []byte) (Progress, error) {
	h, err := safetensors.Parse(data)
	if err != nil {
		return Progress{}, err
	}
	return progressOf(h.Metadata)
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
