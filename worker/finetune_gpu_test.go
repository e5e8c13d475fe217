//go:build cgo && !purego

package worker

import (
	"fmt"
	"testing"
)

// On the GPU model too, frozen features leave only the flags and the
// classifier's gradient to all-reduce, after the (shortened) backward pass.
func TestGPUFreezeAllReducesTheClassifierOnly(t *testing.T) {
	cfg := tinyConfig(synthData(t, 4), t.TempDir())
	cfg.Epochs, cfg.Freeze = 1, "features"
	got, params := allReduces(t, cfg, hostGPU())
	n, from := len(params.Flat), params.Spec.ClassifierOffset()
	step := fmt.Sprintf("after %d", 2+n-from)
	if want := step + ", " + step; got != want {
		t.Errorf("all-reduces %s, want %s", got, want)
	}
}
