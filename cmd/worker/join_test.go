package main

import (
	"io"
	"strings"
	"testing"

	"github.com/alexring/alexring/internal/cli"
)

// A joined worker takes the job from the coordinator: each job flag given to
// it, on the command line or in the environment, is refused (exit 2) with a
// message that names it, says the coordinator owns it and how to set it
// there, before the worker joins anything (127.0.0.1:1 has no coordinator).
func TestJoinRefusesJobFlags(t *testing.T) {
	values := map[string]string{"epochs": "3", "batch": "64", "lr": "1", "variant": "full", "seed": "7", "dropout": "0",
		"augment": "false", "resume": "state.safetensors", "out": "o", "init": "x.pth", "freeze": "features", "save-format": "pth", "normalize": "imagenet"}
	how := map[string]string{"epochs": "coordinator --epochs, or epochs: in its --config file", "save-format": "coordinator --save-format, or save_format: in its --config file",
		"dropout": "dropout: in the coordinator's --config file", "augment": "augment: in the coordinator's --config file",
		"resume": "coordinator --resume continues the job in its --out"}
	if len(values) != len(cli.JobFlags) {
		t.Fatalf("values for %d flags, cli.JobFlags has %d", len(values), len(cli.JobFlags))
	}
	for _, name := range cli.JobFlags {
		code, _, stderr := runWorker("--join", "127.0.0.1:1", "--join-timeout", "1ms", "--"+name, values[name])
		want := "worker: --" + name + " is the job's setting, which the coordinator owns: set it on the coordinator ("
		if code != 2 || !strings.Contains(stderr, want) || !strings.Contains(stderr, how[name]) {
			t.Errorf("--join --%s: exit %d, want 2 with %q and %q:\n%s", name, code, want, how[name], stderr)
		}
	}
	t.Setenv("ALEXRING_EPOCHS", "3")
	code, _, stderr := runWorker("--join", "127.0.0.1:1", "--join-timeout", "1ms")
	if want := "worker: --epochs (from ALEXRING_EPOCHS) is the job's setting, which the coordinator owns"; code != 2 || !strings.Contains(stderr, want) {
		t.Errorf("--join with ALEXRING_EPOCHS: exit %d, want 2 with %q:\n%s", code, want, stderr)
	}
	// Standalone, the same flag and variable are the job's own.
	code, _, stderr = runWorker("--standalone", "--epochs", "0")
	if !strings.Contains(stderr, "--epochs 0") || code != 2 {
		t.Errorf("--standalone --epochs 0: exit %d, want 2 naming --epochs 0:\n%s", code, stderr)
	}
}

// The worker's own settings are not the job's: a joined worker takes them
// (it goes on to join, and fails there, exit 1, as 127.0.0.1:1 has no
// coordinator).
func TestJoinTakesOwnFlags(t *testing.T) {
	code, _, stderr := runWorker("--join", "127.0.0.1:1", "--join-timeout", "1ms", "--data", t.TempDir(), "--loader-goroutines", "1",
		"--eval-batch", "4", "--debug", "--cpu-kernels", "openblas", "--name", "w", "--job", "j")
	if code != 1 || strings.Contains(stderr, "is the job's setting") || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Errorf("exit %d, want 1 failing to join 127.0.0.1:1:\n%s", code, stderr)
	}
}

// The worker's own settings, from flags or the environment, reach the join's
// settings (over which the plan's job is set: worker.JoinConfig.own); a flag
// not given leaves the coordinator's (eval batch 0: the plan's).
func TestJoinCarriesOwnSettings(t *testing.T) {
	cmd, _, _, done, code := parse([]string{"--join", "127.0.0.1:1"}, io.Discard, io.Discard)
	if done {
		t.Fatalf("parse ended with exit %d", code)
	}
	if jc := cmd.Joined(); jc.EvalBatch != 0 || jc.LoaderGoroutines != 0 || jc.StepLog != 0 || jc.Data != "" {
		t.Errorf("join settings with none given: %+v", jc)
	}
	t.Setenv("ALEXRING_LOADER_GOROUTINES", "3")
	cmd, _, _, done, code = parse([]string{"--join", "127.0.0.1:1", "--data", "/mnt/d", "--eval-batch", "4", "--debug"}, io.Discard, io.Discard)
	if done {
		t.Fatalf("parse ended with exit %d", code)
	}
	jc := cmd.Joined()
	if jc.Data != "/mnt/d" || jc.EvalBatch != 4 || jc.LoaderGoroutines != 3 || jc.StepLog != 1 || jc.Join != "127.0.0.1:1" {
		t.Errorf("join settings: data %q eval batch %d goroutines %d step log %d join %q; want /mnt/d 4 3 1 127.0.0.1:1",
			jc.Data, jc.EvalBatch, jc.LoaderGoroutines, jc.StepLog, jc.Join)
	}
}
