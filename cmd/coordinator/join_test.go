package main

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The real binaries: a joined worker refuses a job flag (exit 2, naming the
// coordinator as its owner), and applies its own flags to the coordinator's
// job (its eval batch, loader goroutines and step logs).
func TestJoinedWorkerFlags(t *testing.T) {
	w := runBin(t, time.Minute, "worker", "--join", "127.0.0.1:1", "--batch", "64", "--log-format", "json")
	if ee, ok := w.err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(w.stderr, "worker: --batch is the job's setting, which the coordinator owns: set it on the coordinator (coordinator --batch") {
		t.Errorf("worker --join --batch: %v, want exit 2 naming the coordinator:\n%s", w.err, w.stderr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	gossip := freePort(t)
	co := startProc(t, ctx, "coordinator", "--workers", "1", "--config", "tiny", "--data", dataset(t, 8, 2), "--epochs", "1",
		"--bind", gossip, "--out", t.TempDir(), "--log-format", "json")
	w = runBin(t, 2*time.Minute, "worker", "--join", gossip, "--loader-goroutines", "1", "--eval-batch", "2", "--debug",
		"--log-format", "json", "--progress", "never")
	if w.err != nil {
		_, coErr := co.output()
		t.Fatalf("worker: %v\n%s\ncoordinator:\n%s", w.err, w.stderr, coErr)
	}
	if !regexp.MustCompile(`"msg":"job plan received".*"eval_batch":2,"loader_goroutines":1`).MatchString(w.stderr) {
		t.Errorf("the worker's own --eval-batch 2 and --loader-goroutines 1 are not in its job:\n%s", w.stderr)
	}
	if !regexp.MustCompile(`"level":"debug".*"msg":"step"`).MatchString(w.stderr) {
		t.Errorf("--debug logged no step:\n%s", w.stderr)
	}
	select {
	case err := <-co.done:
		if stdout, stderr := co.output(); err != nil || !strings.Contains(stdout, "Epoch 1/1") {
			t.Errorf("coordinator: %v\n%s%s", err, stdout, stderr)
		}
	case <-ctx.Done():
		t.Fatal("the coordinator did not finish")
	}
}

// The environment that sets a --local coordinator's job (ALEXRING_EPOCHS) and
// its metrics address does not reach its workers, which would refuse the
// one and find the other taken: the job runs.
func TestLocalWorkersWithoutTheJobsEnvironment(t *testing.T) {
	t.Setenv("ALEXRING_EPOCHS", "1")
	t.Setenv("ALEXRING_METRICS_ADDR", freePort(t))
	r := runBin(t, 3*time.Minute, "coordinator", "--workers", "1", "--local", "--max-restarts", "0", "--config", "tiny",
		"--data", dataset(t, 8, 2), "--out", t.TempDir(), "--log-format", "json")
	if r.err != nil || !strings.Contains(r.stdout, "Epoch 1/1") || strings.Contains(r.stdout, "Workers lost") {
		t.Errorf("coordinator --local with ALEXRING_EPOCHS: %v\n%s%s", r.err, r.stdout, r.stderr)
	}
}
