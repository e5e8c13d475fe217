package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// A batch larger than the data, and --resume without a usable state, are bad
// input: exit 2 before any worker starts, naming the flag and the file (they
// exited 1, or, for the batch, went on with a batch far larger than the data).
func TestBadResumeAndBatchExit2(t *testing.T) {
	data := dataset(t, 2, 1) // 10 training images
	empty := t.TempDir()
	broken := t.TempDir()
	os.WriteFile(filepath.Join(broken, "state.safetensors"), []byte("\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"), 0o644)
	os.WriteFile(filepath.Join(broken, "job_id"), []byte("job-1\n"), 0o644)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"batch beyond the data", []string{"--batch", "100000000"}, "coordinator: --batch 100000000: a global batch larger than the 10 training images in " + filepath.Join(data, "train")},
		{"resume without a state", []string{"--resume", "--out", empty}, "coordinator: --resume: open " + filepath.Join(empty, "state.safetensors") + ": no such file"},
		{"resume of a broken state", []string{"--resume", "--out", broken}, filepath.Join(broken, "state.safetensors")},
		{"auto-resume of a broken state", []string{"--auto-resume", "--out", broken}, "bad safetensors file"},
	}
	for _, c := range cases {
		args := append([]string{"--workers", "2", "--local", "--config", "tiny", "--data", data, "--bind", freePort(t), "--wait-timeout", "2s", "--log-format", "json"}, c.args...)
		r := runBin(t, time.Minute, "coordinator", args...)
		if code := exitCode(r.err); code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, want 2 naming %q:\n%s", c.name, code, c.want, r.stderr)
		}
		if strings.Contains(r.stderr, "[worker-0") {
			t.Errorf("%s: local workers were started:\n%s", c.name, r.stderr)
		}
	}
}

// A worker joined to a job whose --data it cannot read exits 2 too, saying so.
func TestJoinedWorkerWithoutDataExits2(t *testing.T) {
	data := dataset(t, 2, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bind := freePort(t)
	startProc(t, ctx, "coordinator", "--workers", "1", "--config", "tiny", "--data", data, "--out", t.TempDir(), "--bind", bind, "--log-format", "json")
	missing := filepath.Join(t.TempDir(), "nope")
	w := startProc(t, ctx, "worker", "--join", bind, "--name", "w0", "--data", missing, "--log-format", "json")
	err := <-w.done
	_, stderr := w.output()
	if code := exitCode(err); code != 2 || !strings.Contains(stderr, "\nworker: --data: sharding: scan "+missing) {
		t.Errorf("joined worker without its data: exit %d, want 2:\n%s", code, stderr)
	}
}

// A kill during the coordinator's write of training.png or metrics.csv left
// its temporary file for ever; the next start removes it, and nothing else.
func TestCoordinatorRemovesStaleTemporaries(t *testing.T) {
	data := dataset(t, 2, 1)
	out := t.TempDir()
	old := time.Now().Add(-time.Hour)
	stale := []string{".training.png.tmp-3141", ".metrics.csv.tmp-2718", ".job_id.tmp-1"}
	kept := []string{".holiday.png.tmp-1", "training.png.tmp-1"}
	for _, name := range append(append([]string{}, stale...), kept...) {
		p := filepath.Join(out, name)
		os.WriteFile(p, []byte("half"), 0o644)
		os.Chtimes(p, old, old)
	}
	r := runBin(t, 3*time.Minute, "coordinator", "--workers", "1", "--local", "--config", "tiny", "--epochs", "1", "--data", data, "--out", out,
		"--bind", freePort(t), "--log-format", "json")
	if r.err != nil {
		t.Fatalf("job: %v\n%s", r.err, r.stderr)
	}
	for _, name := range stale {
		if _, err := os.Stat(filepath.Join(out, name)); !os.IsNotExist(err) {
			t.Errorf("%s is still there", name)
		}
	}
	for _, name := range kept {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Errorf("%s was removed", name)
		}
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") && !strings.HasPrefix(e.Name(), ".holiday") && e.Name() != "training.png.tmp-1" {
			t.Errorf("left in --out: %s", e.Name())
		}
	}
}
