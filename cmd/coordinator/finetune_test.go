package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alexring/alexring/alexnet"
)

// coordinator --init --freeze features: the job's setting reaches both
// workers; rank 0 reads the file (a 10-class model, the job has 5 classes)
// and logs the last layer as re-initialised, rank 1 takes rank 0's start, and
// the features are the file's bits at the end.
func TestFineTuneJob(t *testing.T) {
	spec, err := alexnet.NewSpec("tiny", 10)
	if err != nil {
		t.Fatal(err)
	}
	src := alexnet.NewParams(spec)
	src.Init(42)
	init := filepath.Join(t.TempDir(), "pretrained.safetensors")
	if err := alexnet.SaveModel(init, src, alexnet.ModelMeta{}); err != nil {
		t.Fatal(err)
	}
	data, out := dataset(t, 8, 2), t.TempDir()
	r := runBin(t, 3*time.Minute, "coordinator", "--workers", "2", "--local", "--config", "tiny", "--data", data, "--out", out,
		"--epochs", "1", "--init", init, "--freeze", "features", "--normalize", "imagenet", "--bind", freePort(t), "--log-format", "json")
	if r.err != nil {
		t.Fatalf("job failed: %v\n%s", r.err, r.stderr)
	}
	loaded := workerLines(r.stderr, "worker-00", "initialised from --init")
	if len(loaded) != 1 || !strings.Contains(fmt.Sprint(loaded[0]["reinitialised"]), "classifier.6.weight: [10 64] in the file, [5 64] here") {
		t.Errorf("rank 0's init log: %v", loaded)
	}
	if got := workerLines(r.stderr, "worker-01", "the initial parameters come from rank 0's --init file"); len(got) != 1 {
		t.Errorf("rank 1 logged %d lines about rank 0's --init, want 1", len(got))
	}
	st, err := alexnet.LoadTrainState(filepath.Join(out, "state.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	// --normalize reached rank 0 through the plan: its best model says so.
	if _, meta, err := alexnet.LoadModel(filepath.Join(out, "best.safetensors")); err != nil || meta.Normalize != "imagenet" {
		t.Errorf("best.safetensors: normalize %q (%v), want imagenet", meta.Normalize, err)
	}
	from := st.Params.Spec.ClassifierOffset()
	if !slices.Equal(st.Params.Flat[:from], src.Flat[:from]) {
		t.Error("the frozen features are not the file's after the job")
	}
	if r := runBin(t, time.Minute, "coordinator", "--workers", "1", "--freeze", "convs", "--bind", freePort(t)); exitCode(r.err) != 2 || !strings.Contains(r.stderr, "want none or features") {
		t.Errorf("--freeze convs: exit %d\n%s", exitCode(r.err), r.stderr)
	}
	if r := runBin(t, time.Minute, "coordinator", "--workers", "1", "--normalize", "torch", "--bind", freePort(t)); exitCode(r.err) != 2 || !strings.Contains(r.stderr, `--normalize: "torch", want seed or imagenet`) {
		t.Errorf("--normalize torch: exit %d\n%s", exitCode(r.err), r.stderr)
	}
	missing := filepath.Join(t.TempDir(), "missing.pth")
	if r := runBin(t, time.Minute, "coordinator", "--workers", "1", "--local", "--init", missing, "--bind", freePort(t)); exitCode(r.err) != 2 || !strings.Contains(r.stderr, "--init: stat "+missing) {
		t.Errorf("--local --init of a missing file: exit %d\n%s", exitCode(r.err), r.stderr)
	}
}
