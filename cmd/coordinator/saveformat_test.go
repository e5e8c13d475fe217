package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// --save-format is the job's: given to the coordinator, it reaches the
// workers that join it, and rank 0 writes best.pth alone, which predict loads.
func TestJobSaveFormatReachesWorkers(t *testing.T) {
	data := dataset(t, 8, 2)
	out := t.TempDir()
	r := runBin(t, 3*time.Minute, "coordinator", "--workers", "2", "--local", "--config", "tiny", "--data", data, "--out", out,
		"--epochs", "1", "--save-format", "pth", "--bind", freePort(t), "--log-format", "json")
	if r.err != nil {
		t.Fatalf("job failed: %v\n%s", r.err, r.stderr)
	}
	best := filepath.Join(out, "best.pth")
	if _, err := os.Stat(best); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "best.safetensors")); err == nil {
		t.Error("best.safetensors written with --save-format pth")
	}
	if !strings.Contains(r.stdout, "model in "+best) {
		t.Errorf("the summary does not name %s:\n%s", best, r.stdout)
	}
	img := filepath.Join(data, "val", "ring", "ring_0000.png")
	p := runBin(t, time.Minute, "predict", "--model", best, "--class-indices", filepath.Join(out, "class_indices.json"), img)
	if p.err != nil || !strings.HasPrefix(p.stdout, "predicted: ") {
		t.Errorf("predict: %v\n%s%s", p.err, p.stdout, p.stderr)
	}
	bad := runBin(t, time.Minute, "coordinator", "--config", "tiny", "--data", data, "--out", t.TempDir(), "--save-format", "onnx")
	if ee, ok := bad.err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(bad.stderr, "--save-format") {
		t.Errorf("--save-format onnx: %v, want exit 2 naming the flag\n%s", bad.err, bad.stderr)
	}
}
