package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/internal/metrics"
	"github.com/alexring/alexring/internal/timeline"
)

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestTelemetryDuringTraining(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := t.TempDir()
	cfg := tinyConfig(synthData(t, 16), out)
	cfg.Epochs = 2
	reg := metrics.NewRegistry()
	addr, err := metrics.Serve(ctx, "127.0.0.1:0", reg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	tracePath := filepath.Join(out, "timeline.json")
	trace, err := timeline.Create(tracePath, 0, "rank 0")
	if err != nil {
		t.Fatal(err)
	}
	var bars bytes.Buffer
	var during string
	ctl := Controller{Telemetry: Telemetry{Progress: &bars, Metrics: NewMetrics(reg), Timeline: trace},
		EpochDone: func(_ context.Context, r EpochResult) error {
			if r.Epoch == 1 {
				during = scrape(t, addr)
			}
			return nil
		}}
	tr, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), ctl, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if err := trace.Close(); err != nil {
		t.Fatal(err)
	}

	// 80 training images at batch 16: 5 steps an epoch.
	for _, want := range []string{
		`alexring_step_phase_seconds_count{phase="data_wait"} 5`,
		`alexring_step_phase_seconds_count{phase="forward"} 5`,
		`alexring_step_phase_seconds_count{phase="backward"} 5`,
		`alexring_step_phase_seconds_count{phase="allreduce"} 5`,
		`alexring_step_phase_seconds_count{phase="optimizer"} 5`,
		"alexring_steps_total 5", "alexring_epoch 1", "alexring_world_size 1",
		"alexring_images_per_second ", "alexring_train_loss ", "alexring_val_accuracy ", "alexring_peak_rss_bytes ",
	} {
		if !strings.Contains(during, want) {
			t.Errorf("/metrics after epoch 1 lacks %q", want)
		}
	}
	if after := scrape(t, addr); !strings.Contains(after, "alexring_steps_total 10") {
		t.Error("the step counter did not reach 10 after epoch 2")
	}

	b, err := os.ReadFile(tracePath)
	if err != nil {
		t.Fatal(err)
	}
	var events []struct {
		Name string `json:"name"`
		Ph   string `json:"ph"`
		Dur  int64  `json:"dur"`
	}
	if err := json.Unmarshal(b, &events); err != nil {
		t.Fatalf("timeline is not JSON: %v", err)
	}
	count := map[string]int{}
	for _, e := range events {
		if e.Ph == "X" {
			count[e.Name]++
		}
	}
	for name, want := range map[string]int{PhaseDataWait: 10, PhaseForward: 10, PhaseBackward: 10, PhaseAllReduce: 10,
		PhaseOptimizer: 10, "step 5": 2, "epoch 1": 1, "epoch 2": 1, "validation": 2} {
		if count[name] != want {
			t.Errorf("timeline has %d %q events, want %d", count[name], name, want)
		}
	}

	for _, want := range []string{"train epoch[1/2]", "5/5", "loss=", "img/s", "valid epoch[2/2]", "acc="} {
		if !strings.Contains(bars.String(), want) {
			t.Errorf("progress output lacks %q:\n%s", want, bars.String())
		}
	}
}
