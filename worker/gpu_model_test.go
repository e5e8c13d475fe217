//go:build cgo && !purego

package worker

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/alexnet/gpu"
	"github.com/alexring/alexring/alexnet/gpu/hostdev"
	"github.com/alexring/alexring/configs"
)

// hostGPU is the GPU backend on the host device: the trainer drives it
// through the same seam as on a GPU (state downloaded at each epoch's end and
// uploaded after a broadcast, the gradient in the backend's host vectors,
// the classifier's all-reduce started during the backward pass).
func hostGPU() alexnet.Compute {
	return alexnet.Compute{Device: "host-gpu", FreesCPU: true, New: func(c alexnet.BackendConfig) (alexnet.Backend, error) {
		d, err := hostdev.New()
		if err != nil {
			return nil, err
		}
		return gpu.New(d, c, nil)
	}}
}

// The trainer on the GPU model trains the CPU's model: the same losses but
// for the GEMMs' order of summation, the checkpoints and checksums of the
// parameters it downloads.
func TestTrainerOnTheGPUModel(t *testing.T) {
	data := synthData(t, 8)
	run := func(compute alexnet.Compute) (*Trainer, []EpochResult, string) {
		out := t.TempDir()
		cfg := tinyConfig(data, out)
		cfg.Epochs, cfg.Augment = 2, false
		var res []EpochResult
		ctl := Controller{EpochDone: func(_ context.Context, r EpochResult) error { res = append(res, r); return nil }}
		tr, err := NewTrainer(cfg, Solo{}, compute, ctl, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.Close)
		if err := tr.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		return tr, res, out
	}
	cpu, cpuRes, _ := run(alexnet.CPUCompute())
	dev, devRes, out := run(hostGPU())
	for i := range cpuRes {
		c, g := cpuRes[i], devRes[i]
		if d := math.Abs(c.TrainLoss - g.TrainLoss); d > 1e-4 {
			t.Errorf("epoch %d: train loss %.6f on the CPU, %.6f on the GPU model", i+1, c.TrainLoss, g.TrainLoss)
		}
		if g.Checksum != Checksum(dev.Params().Flat) && i == len(devRes)-1 {
			t.Errorf("epoch %d: checksum %x is not of the downloaded parameters", i+1, g.Checksum)
		}
	}
	worst := 0.0
	for i, v := range cpu.Params().Flat {
		worst = max(worst, math.Abs(float64(v-dev.Params().Flat[i])))
	}
	// Adam moves a parameter by up to lr a step whatever its gradient's size,
	// so a near-zero gradient's summation order can show; far less than
	// 10 steps of lr means the same training.
	if worst > 10*cpu.cfg.LR/4 {
		t.Errorf("parameters after 2 epochs differ by %g", worst)
	}
	st, err := alexnet.LoadTrainState(filepath.Join(out, configs.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Adam.Step != dev.adam.Step || st.Epoch != 2 || Checksum(st.Params.Flat) != devRes[1].Checksum {
		t.Errorf("state.safetensors: step %d epoch %d, want %d 2 and the last checksum", st.Adam.Step, st.Epoch, dev.adam.Step)
	}
	if _, _, err := alexnet.LoadModel(filepath.Join(out, configs.BestFile)); err != nil {
		t.Error(err)
	}
}

// A GPU's backward pass leaves the CPU free: its classifier's all-reduce
// starts during the backward pass whatever ring.overlap says.
func TestGPUOverlapsTheAllReduce(t *testing.T) {
	cfg := tinyConfig(synthData(t, 4), t.TempDir())
	cfg.Epochs, cfg.Ring.Overlap = 1, false
	got, params := allReduces(t, cfg, hostGPU())
	n, from := len(params.Flat), params.Spec.ClassifierOffset()
	step := []string{fmt.Sprintf("start %d", n-from), fmt.Sprintf("after %d", 2+from)}
	if want := strings.Join(append(step, step...), ", "); got != want {
		t.Errorf("all-reduces %s, want %s", got, want)
	}
}
