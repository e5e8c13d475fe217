//go:build cgo && !purego

package worker

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// On the GPU model too, frozen features leave only the flags and the
// classifier's gradient to all-reduce, after the (shortened) backward pass.
func TestGPUFreezeAllReducesTheClassifierOnly(t *testing.T) {
	var calls []string
	cfg := tinyConfig(synthData(t, 4), t.TempDir())
	cfg.Epochs, cfg.Freeze = 1, "features"
	tr, err := NewTrainer(cfg, recordingWorld{calls: &calls}, hostGPU(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	n, from := len(tr.Params().Flat), tr.Params().Spec.ClassifierOffset()
	step := fmt.Sprintf("after %d", 2+n-from)
	if got, want := strings.Join(calls, ", "), step+", "+step; got != want {
		t.Errorf("all-reduces %s, want %s", got, want)
	}
}
